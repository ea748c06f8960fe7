//! The kernel's CONFIG_HZ, which BTF does not carry.

use std::{
    fmt,
    io::Read,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

/// HZ values a kernel can be configured with (kernel/Kconfig.hz).
pub const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

const PROC_CONFIG_GZ: &str = "/proc/config.gz";
const TIMER_LIST: &str = "/proc/timer_list";
const CALIBRATION_GAP: Duration = Duration::from_millis(200);

/// Where [`kernel_hz_with_source`] found the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HzSource {
    /// `CONFIG_HZ` in `/boot/config-$(uname -r)`.
    BootConfig(PathBuf),
    /// `CONFIG_HZ` in `/proc/config.gz` (CONFIG_IKCONFIG_PROC).
    ProcConfigGz,
    /// Jiffies vs. nanoseconds over two reads of `/proc/timer_list`.
    TimerList,
}

impl fmt::Display for HzSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BootConfig(p) => write!(f, "CONFIG_HZ in {}", p.display()),
            Self::ProcConfigGz => write!(f, "CONFIG_HZ in {PROC_CONFIG_GZ}"),
            Self::TimerList => write!(f, "calibrated from {TIMER_LIST}"),
        }
    }
}

/// Kernel HZ, or `None` if no source works (see [`kernel_hz_with_source`]).
pub fn kernel_hz() -> Option<u32> {
    kernel_hz_with_source().map(|(hz, _)| hz)
}

/// Kernel HZ and where it came from: the boot config, else /proc/config.gz, else a
/// ~200 ms calibration against /proc/timer_list (root only).
pub fn kernel_hz_with_source() -> Option<(u32, HzSource)> {
    from_boot_config()
        .or_else(|| from_proc_config_gz().map(|hz| (hz, HzSource::ProcConfigGz)))
        .or_else(|| from_timer_list().map(|hz| (hz, HzSource::TimerList)))
}

/// `CONFIG_HZ=N` from kernel config text.
pub fn parse_config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

fn from_boot_config() -> Option<(u32, HzSource)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let path = Path::new("/boot").join(format!("config-{}", release.trim()));
    let hz = parse_config_hz(&std::fs::read_to_string(&path).ok()?)?;
    Some((hz, HzSource::BootConfig(path)))
}

pub(crate) fn from_proc_config_gz() -> Option<u32> {
    let file = std::fs::File::open(PROC_CONFIG_GZ).ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .ok()?;
    parse_config_hz(&text)
}

pub(crate) fn from_timer_list() -> Option<u32> {
    let first = parse_timer_list(&std::fs::read_to_string(TIMER_LIST).ok()?)?;
    thread::sleep(CALIBRATION_GAP);
    let second = parse_timer_list(&std::fs::read_to_string(TIMER_LIST).ok()?)?;
    hz_from_samples(first, second)
}

/// `(jiffies, now_ns)` from /proc/timer_list: the `now at N nsecs` line and the first
/// per-CPU `jiffies: N` line.
pub fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .parse()
            .ok()
    })?;
    let jiffies = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies:")?.trim().parse().ok())?;
    Some((jiffies, now))
}

/// Rounds the measured jiffies rate to the nearest configurable HZ; `None` if the
/// samples are unusable or more than 20 % away from every choice.
pub fn hz_from_samples((j0, t0): (u64, u64), (j1, t1): (u64, u64)) -> Option<u32> {
    let (dj, dt) = (j1.checked_sub(j0)?, t1.checked_sub(t0)?);
    if dt == 0 || dj == 0 {
        return None;
    }
    let rate = dj as f64 * 1e9 / dt as f64;
    let best = HZ_CHOICES.into_iter().min_by(|a, b| {
        (rate - *a as f64)
            .abs()
            .total_cmp(&(rate - *b as f64).abs())
    })?;
    ((rate - best as f64).abs() <= best as f64 * 0.2).then_some(best)
}

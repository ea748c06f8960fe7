//! The Debian kernels the VM tests boot: found with apt-cache, fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into a cache directory, never
//! installed (installing would touch /boot and run update-initramfs).
//!
//! Layout: `<cache>/<release>/{boot,lib/modules/<release>}` where `<release>` is the
//! kernel's `uname -r`, plus a `.complete` stamp written last so that an interrupted
//! unpack is never taken for a usable kernel.
use std::{
    env, fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::{
    apt::{Apt, Repo},
    cargo, cmd,
};

/// The Debian flavour we boot. `cloud-amd64` has everything the tests need (netfilter,
/// nf_tables, NAT, veth and nf_conntrack_netlink as modules; virtio and the 8250 serial
/// console built in; kprobes and module BTF) and is less than half the size of `amd64`.
const FLAVOUR: &str = "cloud-amd64";
const STAMP: &str = ".complete";
/// The bullseye suite (its final point release), signed with keys that Debian's archive
/// keyring (on every Debian machine) carries. Not bullseye-security: its index lists newer
/// kernels whose files the mirror no longer serves (404).
const BULLSEYE_SOURCES: &str = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                                http://deb.debian.org/debian bullseye main\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Series {
    /// Debian 11's kernel (bullseye): BTF in vmlinux but none in modules.
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12's own kernel (bookworm).
    #[value(name = "6.1")]
    V6_1,
    /// The newer kernel Debian 12 ships through bookworm-security / -backports.
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    /// Every kernel `setup` fetches and `vm-test --kernel` accepts.
    pub const ALL: [Series; 3] = [Series::V5_10, Series::V6_1, Series::V6_12];
    /// The kernels `vm-test` boots when none is named (CI's VM stage). 5.10 is asked
    /// for explicitly: a third kernel on two cores would lengthen the stage by half.
    pub const DEFAULT: [Series; 2] = [Series::V6_1, Series::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// The hook tier ctscope must reach on this kernel (both have kprobes): the VM tests
    /// fail, rather than skip, a trial of this tier that cannot run.
    pub fn required_tier(self) -> u8 {
        match self {
            Series::V5_10 | Series::V6_1 | Series::V6_12 => 1,
        }
    }

    /// What `uname -r` of this series starts with, before the ABI/patch number.
    fn release_prefix(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10.0-", // 5.10.0-32-cloud-amd64
            Series::V6_1 => "6.1.0-",   // 6.1.0-56-cloud-amd64
            Series::V6_12 => "6.12.",   // 6.12.117+deb12-cloud-amd64
        }
    }

    /// The apt-cache regex matching this series' unsigned image packages.
    fn package_regex(self) -> String {
        let middle = match self {
            Series::V5_10 => r"5\.10\.0-[0-9]+",
            Series::V6_1 => r"6\.1\.0-[0-9]+",
            Series::V6_12 => r"6\.12\.[0-9]+\+deb12",
        };
        format!("^linux-image-{middle}-{FLAVOUR}-unsigned$")
    }

    /// Where apt finds this series: bookworm's kernels come from the machine's own
    /// sources (a Debian 12 machine), bullseye's from lists of our own in the cache.
    fn repo(self) -> Result<Repo> {
        Ok(match self {
            Series::V5_10 => Repo::Private {
                dir: cache_dir()?.join("apt-bullseye"),
                sources: BULLSEYE_SOURCES,
            },
            Series::V6_1 | Series::V6_12 => Repo::System,
        })
    }

    /// The number that orders releases of this series (ABI number or patch level).
    fn ordinal(self, release: &str) -> Option<u32> {
        let rest = release.strip_prefix(self.release_prefix())?;
        if !release.ends_with(&format!("-{FLAVOUR}")) {
            return None;
        }
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unpacked kernel in the cache.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` inside the VM.
    pub release: String,
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn config(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("config-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }
}

/// `$CTSCOPE_VM_CACHE`, or `vm-kernels` in cargo's target directory.
pub fn cache_dir() -> Result<PathBuf> {
    match env::var_os("CTSCOPE_VM_CACHE") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Ok(cargo::target_dir()?.join("vm-kernels")),
    }
}

/// The newest complete kernel of `series` in the cache, if any.
pub fn cached(series: Series) -> Result<Option<Kernel>> {
    let cache = cache_dir()?;
    let Ok(entries) = fs::read_dir(&cache) else {
        return Ok(None);
    };
    let mut best: Option<(u32, Kernel)> = None;
    for entry in entries {
        let entry = entry?;
        let release = entry.file_name().to_string_lossy().into_owned();
        let Some(ordinal) = series.ordinal(&release) else {
            continue;
        };
        if !entry.path().join(STAMP).is_file() || best.as_ref().is_some_and(|(o, _)| *o >= ordinal)
        {
            continue;
        }
        best = Some((
            ordinal,
            Kernel {
                release,
                dir: entry.path(),
            },
        ));
    }
    Ok(best.map(|(_, k)| k))
}

/// The cached kernel of `series`, or an error that says how to get it.
pub fn require(series: Series) -> Result<Kernel> {
    cached(series)?.with_context(|| {
        format!(
            "no {series} VM kernel in the cache: run `cargo xtask setup` (or set CTSCOPE_VM_CACHE)"
        )
    })
}

/// Finds the newest package of `series`, downloads and unpacks it into the cache.
pub fn install(series: Series, apt: &mut Apt) -> Result<Kernel> {
    let repo = series.repo()?;
    let package = newest_package(series, &repo, apt)?;
    let release = release_of(&package)?;
    let cache = cache_dir()?;
    let dir = cache.join(&release);
    let partial = cache.join(format!(".{release}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let deb = download(&package, &partial, &repo, apt)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    fs::remove_file(&deb)?; // 30 MB we no longer need
    let kernel = Kernel {
        release: release.clone(),
        dir: partial.clone(),
    };
    depmod(&kernel)?;
    fs::write(partial.join(STAMP), format!("{package}\n"))?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&partial, &dir)?;
    eprintln!(
        "setup: {series} VM kernel {release} unpacked into {}",
        dir.display()
    );
    Ok(Kernel { dir, ..kernel })
}

/// The newest `series` package apt knows of; refreshes the machine's lists once if it knows
/// none (a fresh machine or container has no lists at all).
fn newest_package(series: Series, repo: &Repo, apt: &mut Apt) -> Result<String> {
    // Our own lists are only read here: refresh them first, so they always name the
    // current release and follow any change of BULLSEYE_SOURCES.
    if matches!(repo, Repo::Private { .. }) {
        apt.update_repo(repo)?;
    }
    if let Some(pkg) = search_newest(series, repo)? {
        return Ok(pkg);
    }
    apt.update_repo(repo)?;
    search_newest(series, repo)?.with_context(|| {
        format!(
            "apt knows no package matching {} (Debian 12 ships 6.12 in bookworm-security and \
             bookworm-backports: is one of them in the apt sources? 5.10 comes from bullseye, \
             through the lists in {})",
            series.package_regex(),
            cache_dir()
                .unwrap_or_default()
                .join("apt-bullseye")
                .display()
        )
    })
}

fn search_newest(series: Series, repo: &Repo) -> Result<Option<String>> {
    let out = cmd::output(repo.command("apt-cache").args([
        "search",
        "--names-only",
        &series.package_regex(),
    ]))?;
    let newest = out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|pkg| Some((series.ordinal(&release_of(pkg).ok()?)?, pkg)))
        .max();
    Ok(newest.map(|(_, pkg)| pkg.to_owned()))
}

fn release_of(package: &str) -> Result<String> {
    package
        .strip_prefix("linux-image-")
        .and_then(|s| s.strip_suffix("-unsigned"))
        .map(str::to_owned)
        .with_context(|| format!("unexpected kernel package name {package}"))
}

/// `apt-get download` into `dir`; retried once after `apt-get update`, because stale lists
/// point at files the mirror has since dropped.
fn download(package: &str, dir: &Path, repo: &Repo, apt: &mut Apt) -> Result<PathBuf> {
    let mut get = repo.command("apt-get");
    get.args(["download", "-q", package]).current_dir(dir);
    if cmd::is_root() {
        // apt would drop to user _apt, who cannot write into our cache dir, and say so.
        get.args(["-o", "APT::Sandbox::User=root"]);
    }
    if cmd::run(&mut get).is_err() {
        apt.update_repo(repo)?;
        cmd::run(&mut get)?;
    }
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    deb.with_context(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            dir.display()
        )
    })
}

/// Debian's image packages ship no modules.dep (their postinst runs depmod): generate it,
/// since the initramfs builder follows it to collect module dependencies.
fn depmod(kernel: &Kernel) -> Result<()> {
    if !kernel.modules_dir().is_dir() {
        bail!(
            "{} has no modules directory {}",
            kernel.release,
            kernel.modules_dir().display()
        );
    }
    cmd::run(
        Command::new(depmod_program())
            .arg("-b")
            .arg(&kernel.dir)
            .arg(&kernel.release),
    )
}

pub fn depmod_program() -> PathBuf {
    cmd::find_program("depmod").unwrap_or_else(|| "depmod".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_order_releases_within_a_series() {
        assert_eq!(Series::V6_1.ordinal("6.1.0-56-cloud-amd64"), Some(56));
        assert_eq!(
            Series::V6_12.ordinal("6.12.117+deb12-cloud-amd64"),
            Some(117)
        );
        assert_eq!(Series::V6_1.ordinal("6.12.117+deb12-cloud-amd64"), None);
        assert_eq!(Series::V6_12.ordinal("6.1.0-56-cloud-amd64"), None);
        assert_eq!(Series::V6_1.ordinal("6.1.0-56-amd64"), None);
        assert_eq!(Series::V5_10.ordinal("5.10.0-32-cloud-amd64"), Some(32));
        assert_eq!(Series::V6_1.ordinal("5.10.0-32-cloud-amd64"), None);
    }

    #[test]
    fn release_is_the_package_name_without_prefix_and_suffix() {
        let release = release_of("linux-image-6.12.117+deb12-cloud-amd64-unsigned").unwrap();
        assert_eq!(release, "6.12.117+deb12-cloud-amd64");
    }
}

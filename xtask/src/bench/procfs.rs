//! Costs read from /proc and getrusage: resident memory, CPU time, BPF run time.

use std::{collections::HashMap, fs};

/// Resident memory of process `pid` outside BPF maps, summed from /proc/PID/smaps: what
/// the process allocated. Mappings of BPF maps (`anon_inode:bpf-map`: the ring buffer's
/// pages, once touched, whatever the table holds) are the kernel's memory and left out.
pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
    smaps_rss(pid).map(|(outside, _)| outside)
}

/// Resident memory of process `pid` in mappings of BPF maps.
pub(super) fn bpf_mapped_bytes(pid: u32) -> Option<u64> {
    smaps_rss(pid).map(|(_, bpf)| bpf)
}

/// Resident bytes outside and inside BPF map mappings.
fn smaps_rss(pid: u32) -> Option<(u64, u64)> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut outside, mut inside) = (0, 0);
    let mut bpf = false;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let bytes = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?
                * 1024;
            match bpf {
                true => inside += bytes,
                false => outside += bytes,
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|t| t.contains('-') && !t.ends_with(':'))
        {
            // A mapping's header line: address range, perms, offset, dev, inode [name].
            bpf = line.contains("bpf");
        }
    }
    Some((outside, inside))
}

/// utime + stime of process `pid`, from /proc/PID/stat.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields 14 and 15 follow its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// One BPF program's accounted run time (kernel.bpf_stats_enabled).
#[derive(Clone, Debug)]
pub(super) struct BpfProg {
    /// The program's name as loaded (its function in ct-ebpf, at most 15 bytes): the
    /// hook it serves, e.g. `t2_dev_queue` on `net_dev_queue`.
    pub(super) name: String,
    pub(super) run_ns: u64,
    pub(super) runs: u64,
}

/// The BPF programs process `pid` holds open, from the `prog_id`, `run_time_ns` and
/// `run_cnt` lines of its fdinfo, named from the kernel's list of loaded programs.
/// Empty when none ran (bpf_stats_enabled off: see --bpf-stats).
pub(super) fn bpf_programs(pid: u32) -> Vec<BpfProg> {
    let mut found: Vec<(u32, u64, u64)> = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_tag:") {
            continue;
        }
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let id = field("prog_id:") as u32;
        // One program held through two descriptors counts once.
        if !found.iter().any(|f| f.0 == id) {
            found.push((id, field("run_time_ns:"), field("run_cnt:")));
        }
    }
    if found.iter().all(|f| f.2 == 0) {
        return Vec::new();
    }
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    found
        .into_iter()
        .map(|(id, run_ns, runs)| BpfProg {
            name: names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("prog {id}")),
            run_ns,
            runs,
        })
        .collect()
}

/// CPU seconds (user + system) the calling thread used.
pub(super) fn thread_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data, filled in by getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

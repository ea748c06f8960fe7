//! Costs read from /proc and getrusage: resident memory, CPU time, BPF run time.

use std::fs;

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

/// Total run time (s) and run count of the BPF programs process `pid` holds open, from
/// the `run_time_ns` / `run_cnt` lines of its fdinfo (present while bpf_stats_enabled).
pub(super) fn bpf_run_time(pid: u32) -> Option<(f64, u64)> {
    let mut ns = 0u64;
    let mut runs = 0u64;
    let mut progs = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_tag:") {
            continue;
        }
        progs += 1;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (prog_ns, prog_runs) = (field("run_time_ns:"), field("run_cnt:"));
        if prog_runs > 0 {
            // Which program is which: its type (26 tracing = tp_btf, 17 raw_tracepoint)
            // and how often it ran tell them apart.
            eprintln!(
                "bench: BPF program type {} ran {prog_runs} times, {:.0} ns per run, {:.3} s",
                field("prog_type:"),
                prog_ns as f64 / prog_runs as f64,
                prog_ns as f64 / 1e9
            );
        }
        ns += prog_ns;
        runs += prog_runs;
    }
    // No runs counted: bpf_stats_enabled is off (see --bpf-stats).
    (progs > 0 && runs > 0).then(|| (ns as f64 / 1e9, runs))
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

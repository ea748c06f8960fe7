//! The kernel's own view: `conntrack -S` counters summed over CPUs, entry counts,
//! ctnetlink deletes, and global sysctls restored on drop.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use crate::netns::{Netns, sysctl_path};

/// `conntrack -S` of one namespace, summed over CPUs: `found`, `insert_failed`, `drop`,
/// `early_drop`, `clash_resolve`, ... (whatever this kernel prints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtStats(pub BTreeMap<String, u64>);

impl CtStats {
    /// Reads the counters of `ns`.
    pub fn read(ns: &Netns) -> Self {
        Self::parse(&ns.exec(&["conntrack", "-S"]))
    }

    /// Parses `cpu=0 found=0 invalid=0 ... drop=0 early_drop=0 ...` lines and sums them.
    pub fn parse(text: &str) -> Self {
        let mut sums = BTreeMap::new();
        for line in text.lines().filter(|l| l.trim_start().starts_with("cpu=")) {
            for (key, value) in line.split_whitespace().filter_map(|f| f.split_once('=')) {
                if key == "cpu" {
                    continue;
                }
                let value: u64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad counter {key}={value} in {line:?}"));
                *sums.entry(key.to_owned()).or_insert(0) += value;
            }
        }
        assert!(
            !sums.is_empty(),
            "no per-CPU counters in `conntrack -S` output:\n{text}"
        );
        CtStats(sums)
    }

    /// A counter; panics if this kernel does not report it.
    pub fn get(&self, key: &str) -> u64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("`conntrack -S` has no {key:?} counter: {self}"))
    }

    /// `self - before`, per counter (counters only grow).
    pub fn since(&self, before: &CtStats) -> CtStats {
        CtStats(
            self.0
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(before.0.get(k).copied().unwrap_or(0)),
                    )
                })
                .collect(),
        )
    }
}

impl fmt::Display for CtStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&fields.join(" "))
    }
}

/// Entries in `ns`'s table (`nf_conntrack_count`, per namespace). Unlike `conntrack -L`
/// or /proc/net/nf_conntrack this does not reap expired entries, so polling it does not
/// change how entries die.
pub fn ct_count(ns: &Netns) -> u64 {
    let text = ns.read_sysctl("net.netfilter.nf_conntrack_count");
    text.parse()
        .unwrap_or_else(|_| panic!("bad nf_conntrack_count {text:?}"))
}

/// `conntrack -D` with the given filter inside `ns`; returns how many entries conntrack
/// says it deleted ("N flow entries have been deleted").
pub fn ct_delete(ns: &Netns, filter: &[&str]) -> u64 {
    let mut argv = vec!["conntrack", "-D"];
    argv.extend_from_slice(filter);
    let out = ns.exec_output(&argv);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{argv:?} failed ({}): {}",
        out.status,
        stderr.trim()
    );
    deleted_count(&stderr).unwrap_or_else(|| panic!("no deleted count in {stderr:?}"))
}

/// Parses conntrack-tools' "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been
/// deleted."
pub fn deleted_count(stderr: &str) -> Option<u64> {
    let (head, _) = stderr.split_once(" flow entries have been deleted")?;
    head.rsplit(' ').next()?.parse().ok()
}

/// `conntrack -F` inside `ns`.
pub fn ct_flush(ns: &Netns) {
    ns.exec(&["conntrack", "-F"]);
}

/// A global sysctl set for the duration of a test and restored on drop (also when the
/// test panics). Global netfilter keys such as `nf_conntrack_max` and
/// `nf_conntrack_buckets` are writable only from the initial namespace, where the test
/// process runs.
#[derive(Debug)]
pub struct SysctlGuard {
    path: PathBuf,
    old: String,
}

impl SysctlGuard {
    pub fn set(key: &str, value: impl ToString) -> Self {
        let path = sysctl_path(key);
        let old = read_global(key);
        let value = value.to_string();
        std::fs::write(&path, &value)
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
        SysctlGuard { path, old }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!(
                "warning: could not restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// Reads a sysctl in the test process's (initial) namespace.
pub fn read_global(key: &str) -> String {
    let path = sysctl_path(key);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Short conntrack timeouts (seconds) for a namespace, so entries die within a test.
pub fn short_timeouts(ns: &Netns, secs: u32) {
    for key in [
        "udp_timeout",
        "udp_timeout_stream",
        "tcp_timeout_time_wait",
        "tcp_timeout_close",
        "tcp_timeout_close_wait",
        "tcp_timeout_fin_wait",
        "tcp_timeout_last_ack",
        "icmpv6_timeout",
    ] {
        ns.sysctl(
            &format!("net.netfilter.nf_conntrack_{key}"),
            &secs.to_string(),
        );
    }
}

/// Whether this kernel charges BPF maps to RLIMIT_MEMLOCK (before 5.11; from 5.11 on the
/// memory cgroup pays): a one-entry array map is created with the soft limit at 0, as the
/// running kernel answers, not its version string. The trials run one at a time, so no
/// process is spawned while the limit is lowered.
pub fn bpf_maps_charge_memlock() -> bool {
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY (all calls below): getrlimit/setrlimit read or write only the struct passed;
    // bpf(BPF_MAP_CREATE) reads `attr`, a zeroed union as large as we pass, and returns a
    // new fd that we close.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut saved) } != 0 {
        return false;
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: saved.rlim_max,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &zero) } != 0 {
        return false;
    }
    // union bpf_attr for BPF_MAP_CREATE: map_type ARRAY (2), key 4, value 4, 1 entry.
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[2, 4, 4, 1]);
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, // BPF_MAP_CREATE
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let refused = fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
    }
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &saved) };
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums_conntrack_s() {
        let text = "cpu=0   \tfound=1 invalid=0 insert=0 insert_failed=1 drop=1 early_drop=0 \n\
                    cpu=1   \tfound=0 invalid=2 insert=0 insert_failed=0 drop=3 early_drop=4 \n";
        let s = CtStats::parse(text);
        assert_eq!(s.get("found"), 1);
        assert_eq!(s.get("drop"), 4);
        assert_eq!(s.get("early_drop"), 4);
        assert_eq!(s.get("invalid"), 2);
        let before = CtStats::parse(&text.replace("drop=3", "drop=0"));
        assert_eq!(s.since(&before).get("drop"), 3);
        assert_eq!(s.since(&before).get("found"), 0);
    }

    #[test]
    fn parses_deleted_count() {
        let msg = "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n";
        assert_eq!(deleted_count(msg), Some(3));
        assert_eq!(deleted_count("something else"), None);
    }
}

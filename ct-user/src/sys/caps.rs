//! Capabilities: which ones ctscope holds (CapEff in /proc/self/status) and messages that
//! name the missing ones. README's *Privileges* table says which command needs which;
//! each command checks before it reaches the kernel, so an agent-answered `list` needs
//! none.

use std::sync::OnceLock;

use anyhow::bail;

/// The capabilities ctscope uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// ctnetlink: dumps, counters, changes, event groups.
    NetAdmin,
    /// /proc/PID/ns/net of processes holding capabilities ctscope lacks.
    SysPtrace,
    /// setns into another network namespace; also stands in for CAP_BPF and CAP_PERFMON.
    SysAdmin,
    /// Attaching kprobes and tracepoints (perf events).
    Perfmon,
    /// Loading programs and maps.
    Bpf,
    /// Kernel addresses in /proc/kallsyms (5.10's code ranges).
    Syslog,
}

impl Cap {
    fn bit(self) -> u32 {
        match self {
            Cap::NetAdmin => 12,
            Cap::SysPtrace => 19,
            Cap::SysAdmin => 21,
            Cap::Perfmon => 38,
            Cap::Bpf => 39,
            Cap::Syslog => 34,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysPtrace => "CAP_SYS_PTRACE",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
            Cap::Syslog => "CAP_SYSLOG",
        }
    }
}

/// A capability set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(u64);

impl Caps {
    /// ctscope's effective set, read once. An unreadable /proc counts as holding all: the
    /// kernel's own errors still name what failed.
    pub fn current() -> Caps {
        static CURRENT: OnceLock<Caps> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| Caps::from_status(&s))
                .unwrap_or(Caps(u64::MAX))
        })
    }

    /// The `CapEff:` line of a /proc/PID/status text.
    pub fn from_status(status: &str) -> Option<Caps> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(Caps)
    }

    /// Whether the set grants `cap`, as the kernel decides: CAP_SYS_ADMIN also passes
    /// its checks for CAP_BPF (bpf_capable) and CAP_PERFMON (perfmon_capable).
    pub fn has(self, cap: Cap) -> bool {
        let held = |c: Cap| self.0 & (1 << c.bit()) != 0;
        held(cap) || (matches!(cap, Cap::Bpf | Cap::Perfmon) && held(Cap::SysAdmin))
    }

    /// Those of `caps` the set does not grant.
    pub fn missing(self, caps: &[Cap]) -> Vec<Cap> {
        caps.iter().copied().filter(|&c| !self.has(c)).collect()
    }
}

/// `CAP_A`, `CAP_A and CAP_B`, `CAP_A, CAP_B and CAP_C`.
pub fn names(caps: &[Cap]) -> String {
    let names: Vec<&str> = caps.iter().map(|c| c.name()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// An error (exit 1) when ctscope lacks any of `caps`, which `what` cannot do without.
pub fn require(caps: &[Cap], what: &str) -> anyhow::Result<()> {
    let missing = Caps::current().missing(caps);
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "{what} needs {}, which ctscope does not have: run it as root or grant {} (README: \
         Privileges)",
        names(&missing),
        if missing.len() == 1 { "it" } else { "them" }
    )
}

/// A warning when ctscope lacks `cap`: `without CAP_X, <consequence>`. True if it warned.
pub fn warn_without(cap: Cap, consequence: &str) -> bool {
    let missing = !Caps::current().has(cap);
    if missing {
        eprintln!("ctscope: warning: without {}, {consequence}", cap.name());
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let caps = Caps::from_status(status).unwrap();
        assert!(caps.has(Cap::NetAdmin) && caps.has(Cap::Bpf) && caps.has(Cap::Perfmon));
        assert!(!caps.has(Cap::SysAdmin) && !caps.has(Cap::SysPtrace));
        assert_eq!(
            caps.missing(&[Cap::SysAdmin, Cap::NetAdmin]),
            [Cap::SysAdmin]
        );
        assert_eq!(Caps::from_status("Name:\tx\n"), None);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let caps = Caps(1 << Cap::SysAdmin.bit());
        assert!(caps.has(Cap::Bpf) && caps.has(Cap::Perfmon));
        assert!(!caps.has(Cap::NetAdmin));
    }

    #[test]
    fn names_read_as_a_list() {
        assert_eq!(names(&[Cap::Bpf]), "CAP_BPF");
        assert_eq!(names(&[Cap::Bpf, Cap::Perfmon]), "CAP_BPF and CAP_PERFMON");
        assert_eq!(
            names(&[Cap::Bpf, Cap::Perfmon, Cap::NetAdmin]),
            "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
        );
    }
}

//! Named network namespaces (deleted on drop, even when a test panics), veth links
//! between them, and running code inside one.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::cmd;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add`, removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ctst-<pid>-<n>` with loopback up and IPv6 off, so router solicitations and
    /// MLD reports do not add ICMPv6 entries that tests would have to filter out.
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ctst-{}-{n}", std::process::id());
        cmd::run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // Kernels booted without IPv6 have no such keys, and then nothing to silence.
        if sysctl_path("net.ipv6.conf.all.disable_ipv6").exists() {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace inode, as ctscope reports it in `netns` and takes in `--netns`.
    pub fn inode(&self) -> u64 {
        let path = self.path();
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .ino()
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        cmd::run(&argv)
    }

    /// Runs `ip netns exec NAME ARGV` and returns stdout; panics if it fails.
    pub fn exec(&self, argv: &[&str]) -> String {
        cmd::run(&self.exec_argv(argv))
    }

    /// Like [`Netns::exec`] with `stdin`.
    pub fn exec_with_input(&self, argv: &[&str], stdin: &str) -> String {
        cmd::run_with_input(&self.exec_argv(argv), Some(stdin))
    }

    /// Runs `ip netns exec NAME ARGV` and returns the raw output, whatever the status.
    pub fn exec_output(&self, argv: &[&str]) -> std::process::Output {
        let full = self.exec_argv(argv);
        cmd::output(&full, None).unwrap_or_else(|e| panic!("cannot run {full:?}: {e}"))
    }

    /// `ip netns exec NAME PROGRAM`, for the caller to give arguments and run or spawn.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn exec_argv<'a>(&'a self, argv: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        full
    }

    /// Runs `f` on a thread that has joined this namespace and returns its result.
    /// Sockets created inside `f` stay in this namespace wherever they are used later.
    /// A panic in `f` is re-raised here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        // ct-netlink's way in, the one ctscope uses: setns on a thread of its own.
        ct_netlink::run_in(&path, f).unwrap_or_else(|e| panic!("entering {}: {e}", path.display()))
    }

    /// Sets a per-namespace sysctl (`net.netfilter.nf_conntrack_udp_timeout`, ...).
    /// /proc/sys/net resolves to the namespace of the thread that opens it.
    /// No restore is needed: the value dies with the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = sysctl_path(key);
        let value = value.to_owned();
        self.run(move || {
            std::fs::write(&path, &value)
                .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()))
        });
    }

    /// Reads a per-namespace sysctl.
    pub fn read_sysctl(&self, key: &str) -> String {
        let path = sysctl_path(key);
        self.run(move || {
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
                .trim()
                .to_owned()
        })
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failing delete must not turn a test failure into a double panic.
        if let Err(e) = cmd::output(&["ip", "netns", "del", &self.name], None) {
            eprintln!("warning: ip netns del {}: {e}", self.name);
        }
    }
}

/// Deletes `ctst-<pid>-<n>` namespaces left by test processes that no longer exist
/// (killed before their guards ran). Returns how many were removed.
pub fn remove_stale() -> usize {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let stale: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| {
            let pid = name.strip_prefix("ctst-").and_then(|r| r.split('-').next());
            pid.is_some_and(|pid| !PathBuf::from("/proc").join(pid).exists())
        })
        .collect();
    for name in &stale {
        let _ = cmd::output(&["ip", "netns", "del", name], None);
    }
    stale.len()
}

/// `net.netfilter.x` → `/proc/sys/net/netfilter/x`.
pub fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// An address family a scenario's traffic uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The name ctscope gives it in an event's `family` (and `-f`).
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// Two namespaces, client `c` and server `s`, joined by veth `vc` (in c) and `vs` (in s)
/// on 10.200.`subnet`.0/24: c is .1, s is .2. A dual-stack pair ([`Pair::dual`]) also has
/// fd00:200:`subnet`::/64, c ::1 and s ::2. Names are fixed because each link lives only
/// inside its own fresh namespace.
#[derive(Debug)]
pub struct Pair {
    pub c: Netns,
    pub s: Netns,
    pub c_addr: Ipv4Addr,
    pub s_addr: Ipv4Addr,
    /// The family [`Pair::c_ip`] and [`Pair::s_ip`] answer for.
    pub family: Family,
    six: Option<[Ipv6Addr; 2]>,
}

/// The client-side veth name, as used in nft `oifname` rules.
pub const C_IF: &str = "vc";
/// The server-side veth name.
pub const S_IF: &str = "vs";

impl Pair {
    /// An IPv4-only pair.
    pub fn new(subnet: u8) -> Self {
        let (c, s) = (Netns::new(), Netns::new());
        let c_addr = Ipv4Addr::new(10, 200, subnet, 1);
        let s_addr = Ipv4Addr::new(10, 200, subnet, 2);
        c.ip(&[
            "link",
            "add",
            C_IF,
            "type",
            "veth",
            "peer",
            "name",
            S_IF,
            "netns",
            s.name(),
        ]);
        for (ns, ifname, addr) in [(&c, C_IF, c_addr), (&s, S_IF, s_addr)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        Pair {
            c,
            s,
            c_addr,
            s_addr,
            family: Family::V4,
            six: None,
        }
    }

    /// A pair of `family` on `subnet`: IPv4 only for [`Family::V4`], dual-stack (see
    /// [`Pair::dual`]) for [`Family::V6`].
    pub fn of(family: Family, subnet: u8) -> Self {
        match family {
            Family::V4 => Self::new(subnet),
            Family::V6 => Self::dual(subnet, Family::V6),
        }
    }

    /// A dual-stack pair: the IPv4 one plus IPv6 on the veth only (fd00:200:`subnet`::1
    /// and ::2, no duplicate address detection, so usable at once; no router
    /// solicitations). Neighbour discovery and MLD stay out of conntrack (the kernel
    /// leaves them untracked). `family` is the one [`Pair::c_ip`] and [`Pair::s_ip`] give.
    pub fn dual(subnet: u8, family: Family) -> Self {
        let mut pair = Self::new(subnet);
        let six = [1, 2].map(|host| {
            format!("fd00:200:{subnet}::{host}")
                .parse::<Ipv6Addr>()
                .expect("an IPv6 address")
        });
        for (ns, ifname, addr) in [(&pair.c, C_IF, six[0]), (&pair.s, S_IF, six[1])] {
            for (key, value) in [
                ("accept_dad", "0"),
                ("router_solicitations", "0"),
                ("accept_ra", "0"),
                ("disable_ipv6", "0"),
            ] {
                ns.sysctl(&format!("net.ipv6.conf.{ifname}.{key}"), value);
            }
            ns.ip(&["addr", "add", &format!("{addr}/64"), "dev", ifname, "nodad"]);
        }
        pair.six = Some(six);
        pair.family = family;
        pair
    }

    /// The client's address in [`Pair::family`].
    pub fn c_ip(&self) -> IpAddr {
        self.addr(self.family, 0)
    }

    /// The server's address in [`Pair::family`].
    pub fn s_ip(&self) -> IpAddr {
        self.addr(self.family, 1)
    }

    /// Host `i` (0 client, 1 server) in `family`; panics for IPv6 on an IPv4-only pair.
    pub fn addr(&self, family: Family, i: usize) -> IpAddr {
        match family {
            Family::V4 => [self.c_addr, self.s_addr][i].into(),
            Family::V6 => self.six.expect("an IPv6 address on an IPv4-only pair")[i].into(),
        }
    }
}

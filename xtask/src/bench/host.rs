//! The bench's namespaces, ruleset and sysctls (all undone on exit), the kernel's
//! counters, and Ctrl-C.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use ctscope_tests::{
    kernel::{self, SysctlGuard},
    netns::Netns,
};

use crate::cmd;

use super::{CLIENT_ADDR, FLOW_NET, NF_CONNTRACK_MAX, SERVER_ADDR, SETTLE};

/// Entries in `ns`'s table.
pub(super) fn entries(ns: &Netns) -> u64 {
    kernel::ct_count(ns)
}

/// `conntrack -S` in `ns`, each counter summed over CPUs.
pub(super) fn counters(ns: &Netns) -> BTreeMap<String, u64> {
    kernel::CtStats::read(ns).0
}

/// Empties the client's table, waits until the count says so, then [`SETTLE`]s.
pub(super) fn flush(ns: &Netns) -> Result<()> {
    kernel::ct_flush(ns);
    let start = Instant::now();
    loop {
        let n = entries(ns);
        if n == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("{n} entries left in {} after conntrack -F", ns.name());
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(SETTLE);
    Ok(())
}

/// Addresses of a client and server pair: the veth's ends (`/prefix`) and the flows'
/// destination network.
pub(super) struct Wiring<'a> {
    pub(super) client: &'a str,
    pub(super) server: &'a str,
    pub(super) prefix: u8,
    pub(super) flows: &'a str,
}

/// The flood bench's pair, wired.
pub(super) fn configure(client: &Netns, server: &Netns) -> Result<()> {
    let wiring = Wiring {
        client: CLIENT_ADDR,
        server: SERVER_ADDR,
        prefix: 24,
        flows: FLOW_NET,
    };
    configure_with(client, server, &wiring)
}

/// The veth between client and server, routes, and the ruleset. Both namespaces have
/// loopback up and IPv6 off (no router solicitations or MLD reports in the table).
pub(super) fn configure_with(client: &Netns, server: &Netns, w: &Wiring) -> Result<()> {
    let ip =
        |ns: &Netns, args: &[&str]| cmd::run(Command::new("ip").args(["-n", ns.name()]).args(args));
    ip(
        client,
        &[
            "link",
            "add",
            "bench0",
            "type",
            "veth",
            "peer",
            "name",
            "bench1",
            "netns",
            server.name(),
        ],
    )?;
    ip(
        client,
        &[
            "addr",
            "add",
            &format!("{}/{}", w.client, w.prefix),
            "dev",
            "bench0",
        ],
    )?;
    ip(
        server,
        &[
            "addr",
            "add",
            &format!("{}/{}", w.server, w.prefix),
            "dev",
            "bench1",
        ],
    )?;
    ip(client, &["link", "set", "bench0", "up"])?;
    ip(server, &["link", "set", "bench1", "up"])?;
    ip(client, &["route", "add", w.flows, "via", w.server])?;
    // A `ct` expression makes the kernel register conntrack's hooks in this namespace.
    cmd::run(client.command("nft").arg(
        "add table inet ctbench; \
         add chain inet ctbench out { type filter hook output priority filter; policy accept; }; \
         add rule inet ctbench out ct state new counter",
    ))?;
    // The server routes the flows into a blackhole: no ICMP errors come back (it forwards,
    // so the route is used rather than "host unreachable"), and the drop is not a
    // netfilter one (a deployment does not drop every flow in a ruleset).
    cmd::run(
        server
            .command("sysctl")
            .args(["-qw", "net.ipv4.conf.all.forwarding=1"]),
    )?;
    ip(server, &["route", "add", "blackhole", w.flows])?;
    Ok(())
}

/// Raises the global nf_conntrack_max when `flows` would not fit; restores it on drop.
pub(super) fn raise_conntrack_max(flows: u64) -> Result<Option<SysctlGuard>> {
    let current: u64 = kernel::read_global(NF_CONNTRACK_MAX)
        .parse()
        .with_context(|| format!("reading {NF_CONNTRACK_MAX}"))?;
    let needed = flows + flows / 10 + 4_096;
    if current >= needed {
        return Ok(None);
    }
    Ok(Some(set_sysctl(NF_CONNTRACK_MAX, &needed.to_string())))
}

/// Sets a global sysctl until the guard drops, and says so.
pub(super) fn set_sysctl(key: &str, value: &str) -> SysctlGuard {
    eprintln!("bench: {key} = {value} (restored at exit)");
    SysctlGuard::set(key, value)
}

pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM end the benchmark between steps, so that the guards clean up.
pub(super) fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub(super) fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

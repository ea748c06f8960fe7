//! The agent (`ctscope watch`): its table equals `conntrack -L` after events alone, after
//! a restart and after a resync; its attribution leaves no insert_failed, drop or
//! early_drop unexplained; an overflowed ring buffer ends in a reseed and an equal table.
//! Each runs at the best tier (`[]`) and forced to tier 2 (`["--tier", "2"]`); at tier 3,
//! the table follows its own namespace's ctnetlink events between dumps.

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use ctscope_tests::{
    agent::Agent,
    kernel::{self, CtStats, SysctlGuard},
    mirror::compare,
    netns::{self, Family, Netns},
    nft, traffic, wait,
};
use serde_json::Value;

use crate::common::{Ctx, TCP_PORT, UDP_PORT, Watch, event_wait, note};

/// Polls [`compare`] until it holds; panics with the last difference.
pub fn assert_same(agent: &Agent, ns: &Netns, what: &str) -> usize {
    let mut last = String::new();
    let same = wait::poll(event_wait(), Duration::from_millis(200), || {
        compare(agent, ns).map_err(|e| last = e).ok()
    });
    let n = same.unwrap_or_else(|| panic!("{what}: the agent's table differs: {last}"));
    note(format!(
        "{what}: agent lists the same {n} entries as conntrack -L"
    ));
    n
}

/// The traffic made `want` entries in `ns`; on a shortfall, shows the kernel's table so
/// the missing flow can be told.
pub fn assert_count(got: usize, want: usize, ns: &Netns) {
    if got != want {
        panic!(
            "conntrack -L lists {got} entries, the traffic made {want}:\n{}",
            ns.exec(&["conntrack", "-L"])
        );
    }
}

/// The tier flags, then the rest.
pub fn args<'a>(tier: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    tier.iter().chain(rest).copied().collect()
}

/// A UDP sink and a TCP server that closes at once, in `s`: their addresses, and the
/// servers to keep alive.
fn servers(
    p: &netns::Pair,
) -> (
    SocketAddrV4,
    SocketAddrV4,
    (traffic::UdpSink, traffic::TcpCloser),
) {
    let udp = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let tcp = SocketAddrV4::new(p.s_addr, TCP_PORT);
    let servers = (
        traffic::UdpSink::bind(&p.s, udp),
        traffic::TcpCloser::start(&p.s, tcp),
    );
    (udp, tcp, servers)
}

/// Events alone (no dumps after the seed), then a restart, then a resync.
pub fn mirror(tier: &'static [&'static str]) {
    // Long timeouts: the counts below must not shrink while a slow VM runs the phases.
    let ctx = Ctx::new(Watch::KernelOnly, 44, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
        p.c.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "600");
    });
    let p = &ctx.pair;
    let (udp, tcp, _servers) = servers(p);

    let agent = Agent::start(&args(tier, &["--resync", "0"]));
    let dumps = agent.total("dumps");
    traffic::udp_flows(&p.c, p.c_addr, &traffic::ports(25000, 20), udp);
    assert_count(assert_same(&agent, &p.c, "events only"), 20, &p.c);
    assert_eq!(
        agent.total("dumps"),
        dumps,
        "a dump ran: the events were to build these rows"
    );
    agent.stop();

    // TCP entries change state after birth: a restarted agent seeds them from a dump.
    traffic::tcp_connections(&p.c, tcp, 5);
    let agent = Agent::start(&args(tier, &["--resync", "1"]));
    assert_count(assert_same(&agent, &p.c, "after a restart"), 25, &p.c);

    let stream = agent.spawn(&[
        "events",
        "--json",
        "--kind",
        "new",
        "--count",
        "10",
        "--netns",
        p.c.name(),
    ]);
    agent.wait_subscribers(1);
    traffic::udp_flows(&p.c, p.c_addr, &traffic::ports(25100, 10), udp);
    check_stream(stream, 25100..25110);
    traffic::tcp_connections(&p.c, tcp, 3);
    agent.wait_resync();
    assert_count(assert_same(&agent, &p.c, "after a resync"), 38, &p.c);
    check_get(&agent, p, 25100);
    check_top(&agent, &p.c);
    agent.stop();
}

/// A dual-stack namespace: IPv4 and IPv6 UDP flows build the agent's rows from events
/// alone (`--resync 0`, no dump after the seed), and they equal `conntrack -L`, both
/// families (issue 16).
pub fn dual_stack(tier: &'static [&'static str]) {
    const FLOWS: usize = 10;
    let ctx = Ctx::of(Watch::KernelOnly, Family::V6, 108, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
    });
    let p = &ctx.pair;
    let agent = Agent::start(&args(tier, &["--resync", "0"]));
    let dumps = agent.total("dumps");
    for (family, first) in [(Family::V4, 25000), (Family::V6, 25100)] {
        let udp = SocketAddr::new(p.addr(family, 1), UDP_PORT);
        let _sink = traffic::UdpSink::bind(&p.s, udp);
        let ports = traffic::ports(first, FLOWS);
        let sent = traffic::udp_flows(&p.c, p.addr(family, 0), &ports, udp);
        traffic::assert_sent(&ports, &sent);
    }
    let listed = assert_same(&agent, &p.c, "dual-stack, events only");
    assert_count(listed, 2 * FLOWS, &p.c);
    let v6 = p.c.exec(&["conntrack", "-L", "-f", "ipv6"]);
    assert_eq!(v6.lines().count(), FLOWS, "IPv6 entries:\n{v6}");
    assert_eq!(
        agent.total("dumps"),
        dumps,
        "a dump ran: the events were to build these rows"
    );
    agent.stop();
}

/// A flow deleted with `conntrack -D` and its next datagram sent at once, round after
/// round: the kernel holds a new entry with the same tuple each time. The old entry's
/// `destroy` may come after the new entry's `new` (tier 2 holds a destroy while the
/// counters settle); it must not take the new entry's row. `--resync 0`: no dump may
/// repair a wrong row.
pub fn recreate(tier: &'static [&'static str]) {
    const ROUNDS: usize = 12;
    const SPORT: u16 = 28000;
    let ctx = Ctx::new(Watch::KernelOnly, 60, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
    });
    let p = &ctx.pair;
    let udp = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, udp);
    let agent = Agent::start(&args(tier, &["--resync", "0"]));
    let src = SocketAddrV4::new(p.c_addr, SPORT);
    let socket =
        p.c.run(move || UdpSocket::bind(src).unwrap_or_else(|e| panic!("bind UDP {src}: {e}")));
    socket.send_to(b"ctscope", udp).expect("the first datagram");
    assert_count(assert_same(&agent, &p.c, "the flow"), 1, &p.c);
    let sport = SPORT.to_string();
    for round in 0..ROUNDS {
        p.c.exec(&["conntrack", "-D", "-p", "udp", "--sport", &sport]);
        socket
            .send_to(b"ctscope", udp)
            .expect("the datagram after the delete");
        let what = format!("recreated, round {round}");
        assert_count(assert_same(&agent, &p.c, &what), 1, &p.c);
    }
    agent.stop();
}

/// `ctscope top --by proto` from the agent's live table: 30 UDP and 8 TCP entries.
fn check_top(agent: &Agent, ns: &Netns) {
    let out = agent.ctscope(&["top", "--by", "proto", "--json", "--netns", ns.name()]);
    let top: Value = serde_json::from_slice(&out.stdout).expect("top --json is one object");
    let count = |key: &str| {
        top["top"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == key))
            .and_then(|r| r["count"].as_u64())
    };
    assert_eq!((count("udp"), count("tcp")), (Some(30), Some(8)), "{top}");
    assert_eq!(top["entries"], 38, "{top}");
}

/// `ctscope events` through the agent: the `new` events of these source ports.
fn check_stream(stream: std::process::Child, ports: std::ops::Range<u16>) {
    let out = stream.wait_with_output().expect("ctscope events");
    assert!(
        out.status.success(),
        "ctscope events through the agent: {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON event"))
        .inspect(|e| assert_eq!(e["kind"], "new", "{e}"))
        .filter_map(|e| e["orig"]["sport"].as_u64())
        .collect();
    seen.sort_unstable();
    let want: Vec<u64> = ports.map(u64::from).collect();
    assert_eq!(seen, want, "events through the agent:\n{text}");
}

/// `ctscope get` through the agent: the entry, with what only the agent knows.
fn check_get(agent: &Agent, p: &netns::Pair, sport: u16) {
    let (src, dst) = (p.c_addr.to_string(), p.s_addr.to_string());
    let (sport, dport) = (sport.to_string(), UDP_PORT.to_string());
    let out = agent.ctscope(&[
        "get",
        "--json",
        "--netns",
        p.c.name(),
        "-p",
        "udp",
        "-s",
        &src,
        "-d",
        &dst,
        "--sport",
        &sport,
        "--dport",
        &dport,
    ]);
    let e: Value = serde_json::from_slice(&out.stdout).expect("get --json is one object");
    assert_eq!(e["orig"]["sport"].as_u64(), sport.parse().ok(), "{e}");
    assert_eq!(e["birth_known"], true, "born while the agent watched: {e}");
    assert_eq!(e["fields_from"], "dump", "refreshed by the resync: {e}");
    assert!(e["first_seen"].as_f64() < e["fields_at"].as_f64(), "{e}");
}

fn stats(agent: &Agent, ns: &Netns) -> Value {
    let out = agent.ctscope(&["stats", "--json", "--netns", ns.name()]);
    serde_json::from_slice(&out.stdout).expect("stats --json is one JSON object")
}

fn all_zero(unexplained: &Value) -> bool {
    unexplained
        .as_object()
        .is_some_and(|m| m.values().all(|v| v.as_i64() == Some(0)))
}

/// A SNAT port clash, early drops and table-full drops: the agent's attribution equals
/// the kernel's deltas, with nothing unexplained.
pub fn attribution(tier: &'static [&'static str]) {
    const BUCKETS: u64 = 512;
    const MAX: u64 = 200;
    let ctx = Ctx::new(Watch::KernelOnly, 45, |p| {
        nft::apply(&p.c, &nft::snat_single_port(netns::C_IF, p.c_addr, 40000))
    });
    let p = &ctx.pair;
    let dns = SocketAddrV4::new(p.s_addr, 53);
    let _dns = traffic::UdpSink::bind(&p.s, dns);
    let udp = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, udp);
    let agent = Agent::start(&args(tier, &["--resync", "1"]));

    let before = CtStats::read(&p.c);
    let clash = traffic::snat_clash(&p.c, p.c_addr, [26000, 26001], dns);
    assert!(
        traffic::is_eperm(&clash.second),
        "the clash's loser was not dropped: {clash:?}"
    );
    {
        let _buckets = SysctlGuard::set("net.netfilter.nf_conntrack_buckets", BUCKETS);
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        traffic::udp_flows(&p.c, p.c_addr, &traffic::ports(27000, 1000), udp);
    }
    let delta = CtStats::read(&p.c).since(&before);
    note(format!("attribution: kernel delta {delta}"));
    // Whether the table also overflows (drops beyond the clash's) depends on the kernel.
    assert!(
        delta.get("early_drop") > 0 && delta.get("drop") >= 1,
        "{delta}"
    );

    let mut last = Value::Null;
    let settled = wait::poll(event_wait(), Duration::from_millis(250), || {
        last = stats(&agent, &p.c);
        let a = &last["agent"];
        let caught_up = a["kernel"]["drop"].as_u64() == Some(delta.get("drop"));
        (caught_up && all_zero(&a["unexplained"])).then_some(())
    });
    assert!(
        settled.is_some(),
        "unexplained remainder: {:#}",
        last["agent"]
    );
    let a = &last["agent"];
    note(format!("attribution: agent {a}"));
    for counter in ["insert_failed", "drop", "early_drop"] {
        assert_eq!(
            a["kernel"][counter].as_u64(),
            Some(delta.get(counter)),
            "{counter}: {a}"
        );
    }
    let at = &a["attributed"];
    assert_eq!(at["insert_failed"]["nat_port_clash"], 1, "{at}");
    assert_eq!(
        at["table_full"].as_u64(),
        Some(delta.get("drop") - 1),
        "{at}"
    );
    assert_eq!(
        at["early_drop"].as_u64(),
        Some(delta.get("early_drop")),
        "{at}"
    );

    // diagnose takes the agent's causes as evidence, and says what they point to.
    let out = agent.ctscope(&["diagnose", "--json", "--netns", p.c.name()]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("diagnose --json");
    let causes = report["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["id"] == "insert_failed_causes"))
        .unwrap_or_else(|| panic!("no insert_failed_causes finding: {report:#}"));
    assert_eq!(
        causes["evidence"]["insert_failed"]["nat_port_clash"], 1,
        "{causes}"
    );
    assert!(
        causes["recommendation"]
            .as_str()
            .is_some_and(|r| r.contains("random-fully")),
        "{causes}"
    );
    agent.stop();
}

/// A 4 KiB ring buffer and 5000 new flows: losses are counted, the table is reseeded,
/// and it ends equal to the kernel's.
pub fn overflow(tier: &'static [&'static str]) {
    const FLOWS: u16 = 5000;
    let ctx = Ctx::new(Watch::KernelOnly, 46, |_| {});
    let p = &ctx.pair;
    let _sink = traffic::UdpSink::bind(&p.s, SocketAddrV4::new(p.s_addr, UDP_PORT));
    let agent = Agent::start(&args(tier, &["--resync", "0", "--ring-size", "4096"]));
    let (failed, _) = traffic::udp_spray(
        &p.c,
        SocketAddrV4::new(p.c_addr, 28000),
        p.s_addr,
        30000..30000 + FLOWS,
    );
    assert_eq!(failed, 0, "sends failed");
    let lost = wait::poll(event_wait(), Duration::from_millis(100), || {
        let s = agent.status();
        let t = &s["totals"];
        (t["lost"].as_u64() > Some(0) && t["reseeds"].as_u64() > Some(0)).then_some(s)
    });
    let status = lost.unwrap_or_else(|| panic!("no loss counted: {}", agent.status()));
    note(format!("overflow: {}", status["totals"]));
    assert_eq!(
        assert_same(&agent, &p.c, "after overflow"),
        usize::from(FLOWS)
    );
    agent.stop();
}

/// Flows that end while the agent watches: `ctscope timeouts` shows how long they lived,
/// per protocol and final state.
pub fn lifetimes(tier: &'static [&'static str]) {
    const TIMEOUT: u32 = 5;
    let ctx = Ctx::new(Watch::KernelOnly, 47, |p| {
        kernel::short_timeouts(&p.c, TIMEOUT)
    });
    let p = &ctx.pair;
    let (udp, tcp, _servers) = servers(p);
    let agent = Agent::start(&args(tier, &["--resync", "1"]));
    traffic::udp_flows(&p.c, p.c_addr, &traffic::ports(29000, 10), udp);
    traffic::tcp_connections(&p.c, tcp, 3);
    let gc = wait::gc_secs();
    let empty = wait::poll(gc, Duration::from_millis(500), || {
        (kernel::ct_count(&p.c) == 0).then_some(())
    });
    assert!(empty.is_some(), "entries left in c after {gc:?}");

    let mut last = Value::Null;
    let counted = wait::poll(event_wait(), Duration::from_millis(250), || {
        let out = agent.ctscope(&["timeouts", "--json", "--netns", p.c.name()]);
        last = serde_json::from_slice(&out.stdout).expect("timeouts --json is one object");
        let by = &last["lifetimes"]["by_proto"];
        let tcp: u64 = by["tcp"].as_object().map_or(0, |states| {
            states.values().filter_map(|h| h["count"].as_u64()).sum()
        });
        (by["udp"]["UNREPLIED"]["count"] == 10 && tcp == 3).then_some(())
    });
    assert!(counted.is_some(), "lifetimes: {:#}", last["lifetimes"]);
    let udp_lived = &last["lifetimes"]["by_proto"]["udp"]["UNREPLIED"];
    note(format!("lifetimes: udp UNREPLIED {udp_lived}"));
    let min = udp_lived["min"].as_f64().unwrap_or(0.0);
    let max = udp_lived["max"].as_f64().unwrap_or(f64::MAX);
    assert!(
        min >= f64::from(TIMEOUT) - 1.0 && max <= gc.as_secs_f64() + f64::from(TIMEOUT),
        "UDP flows with a {TIMEOUT} s timeout lived {min}..{max} s"
    );
    agent.stop();
}

/// The agent at tier 3 (no BPF), run in the client namespace, its own: with no dump after
/// the seed, its table follows that namespace's ctnetlink events, births and deaths.
pub fn tier3_live() {
    let ctx = Ctx::new(Watch::KernelOnly, 65, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
    });
    let p = &ctx.pair;
    let (udp, _tcp, _servers) = servers(p);
    let agent = Agent::start_in(p.c.name(), &["--tier", "3", "--resync", "3600"]);
    let dumps = agent.total("dumps");
    traffic::udp_flows(&p.c, p.c_addr, &traffic::ports(26000, 20), udp);
    assert_count(assert_same(&agent, &p.c, "tier-3 events only"), 20, &p.c);
    p.c.exec(&["conntrack", "-D", "-p", "udp", "--orig-port-src", "26000"]);
    assert_count(assert_same(&agent, &p.c, "after conntrack -D"), 19, &p.c);
    assert_eq!(
        agent.total("dumps"),
        dumps,
        "a dump ran: the events were to build these rows"
    );
    agent.stop();
}

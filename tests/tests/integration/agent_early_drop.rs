//! `agent_recreate`'s sequence with early_drop instead of `conntrack -D`: under a full
//! table the watched UDP flow's entry is evicted by another flow's allocation, and the
//! watched flow's next datagram, sent at once, recreates it. The agent (`--resync 0`)
//! must list what `conntrack -L` lists after every round.
//!
//! Making the kernel evict *that* entry: every other entry in `c` is ASSURED (inserted
//! over ctnetlink), so the watched flow W is the only one early_drop may take.
//! early_drop scans only the 8 hash buckets from the new entry's, and the hash table
//! cannot shrink below 512 buckets, so a trigger flow T is searched for whose scan
//! reaches W's bucket: candidates are sent until one's allocation evicts W instead of
//! failing (table full). An nft rule drops T's packets after conntrack has allocated
//! their entry, so T never enters the table and W's next datagram finds room.
//!
//! The search's table-full failures let the gc worker early-drop unassured entries on
//! its next pass; a round in which W was already gone when T was sent is repeated.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Child,
};

use ctscope_tests::{
    agent::Agent,
    events::Tuple,
    kernel::{self, CtStats, SysctlGuard},
    netns::{Netns, sysctl_path},
    nft, traffic,
};
use serde_json::Value;

use crate::{
    agent::{args, assert_count, assert_same},
    common::{Ctx, UDP_PORT, Watch, note},
};

const ROUNDS: usize = 12;
/// Repeated rounds allowed (W taken by the gc worker before T was sent).
const SPARE_ROUNDS: usize = 6;
const FILLERS: u16 = 8;
const BUCKETS: u64 = 512;
/// The watched flow's source port.
const SPORT: u16 = 28500;
/// Ports of the fillers (source) and trigger candidates (source).
const FILLER_PORTS: u16 = 28600;
const TRIGGER_PORTS: u16 = 40000;
const CANDIDATES: u16 = 4000;
/// T's destination: nft drops it in `c` after conntrack allocated its entry.
const DROPPED_PORT: u16 = 5399;

pub fn recreate_early_drop(tier: &'static [&'static str]) {
    let ctx = Ctx::new(Watch::KernelOnly, 66, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
        nft::apply(&p.c, &drop_after_conntrack(DROPPED_PORT));
    });
    let p = &ctx.pair;
    let dst = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    // Global: restored when the trial ends or fails (guards drop in reverse).
    let _buckets = SysctlGuard::set("net.netfilter.nf_conntrack_buckets", BUCKETS);
    insert_fillers(&p.c, p.c_addr, p.s_addr);
    let agent = Agent::start(&args(tier, &["--resync", "0"]));
    let src = SocketAddrV4::new(p.c_addr, SPORT);
    let w =
        p.c.run(move || UdpSocket::bind(src).unwrap_or_else(|e| panic!("bind {src}: {e}")));
    w.send_to(b"ctscope", dst)
        .expect("the watched flow's first datagram");
    let full = u64::from(FILLERS) + 1;
    assert_count(kernel::ct_count(&p.c) as usize, full as usize, &p.c);
    let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", full);

    let watched = Tuple::new(p.c_addr, SPORT, p.s_addr, UDP_PORT);
    let stream = agent.spawn(&[
        "events",
        "--json",
        "--kind",
        "early_drop",
        "--count",
        &(ROUNDS + 1).to_string(),
        "--netns",
        p.c.name(),
    ]);
    agent.wait_subscribers(1);

    let trigger = search(&p.c, p.c_addr, p.s_addr, full, &w, dst);
    assert_count(
        assert_same(&agent, &p.c, "found the trigger"),
        full as usize,
        &p.c,
    );

    let mut done = 0;
    for attempt in 0..ROUNDS + SPARE_ROUNDS {
        if done == ROUNDS {
            break;
        }
        let before = CtStats::read(&p.c);
        let t = trigger.send_to(b"ctscope", SocketAddrV4::new(p.s_addr, DROPPED_PORT));
        let resent = w.send_to(b"ctscope", dst);
        let delta = CtStats::read(&p.c).since(&before);
        assert!(
            traffic::is_eperm(&t.map(drop)),
            "the trigger must be dropped by the rule"
        );
        resent.expect("the watched flow's datagram right after its eviction");
        assert_eq!(
            delta.get("drop"),
            0,
            "attempt {attempt}: no table-full drop: {delta}"
        );
        let what = format!("recreated after early_drop, round {done} (attempt {attempt})");
        assert_count(assert_same(&agent, &p.c, &what), full as usize, &p.c);
        match delta.get("early_drop") {
            1 => done += 1,
            0 => note(format!(
                "attempt {attempt}: W was gone before the trigger: {delta}"
            )),
            n => panic!("attempt {attempt}: {n} early drops, only W could be evicted: {delta}"),
        }
    }
    assert_eq!(
        done, ROUNDS,
        "rounds in which the trigger early-dropped the watched flow"
    );
    check_stream(stream, &watched);
    agent.stop();
}

/// Every `early_drop` event the agent streamed names the watched flow: one for the
/// search, one per round.
fn check_stream(stream: Child, watched: &Tuple) {
    let out = stream.wait_with_output().expect("ctscope events");
    assert!(
        out.status.success(),
        "ctscope events through the agent: {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let drops: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(drops.len(), ROUNDS + 1, "early_drop events:\n{text}");
    for (i, e) in drops.iter().enumerate() {
        assert_eq!(e["kind"], "early_drop", "event {i}: {e}");
        assert_eq!(
            &Tuple::of(e, "orig"),
            watched,
            "event {i} evicted another entry than the watched flow: {e}"
        );
    }
}

/// ASSURED UDP entries (early_drop never takes them), inserted over ctnetlink.
fn insert_fillers(c: &Netns, src: Ipv4Addr, dst: Ipv4Addr) {
    let (src, dst) = (src.to_string(), dst.to_string());
    for port in FILLER_PORTS..FILLER_PORTS + FILLERS {
        let sport = port.to_string();
        c.exec(&[
            "conntrack",
            "-I",
            "-p",
            "udp",
            "-s",
            &src,
            "-d",
            &dst,
            "--sport",
            &sport,
            "--dport",
            "9",
            "-t",
            "600",
            "-u",
            "SEEN_REPLY,ASSURED",
        ]);
    }
}

/// Finds the trigger and recreates W after the eviction it caused. A search is repeated
/// when W was not early-dropped but taken by the gc worker meanwhile (the kernel's
/// early_drop counter did not move).
fn search(
    c: &Netns,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    full: u64,
    w: &UdpSocket,
    sink: SocketAddrV4,
) -> UdpSocket {
    for _ in 0..3 {
        let before = CtStats::read(c);
        let (trigger, tried) = find_trigger(c, src, dst, full);
        w.send_to(b"ctscope", sink)
            .expect("the datagram after the early drop");
        let delta = CtStats::read(c).since(&before);
        note(format!(
            "recreate early_drop: trigger port {} after {tried} candidates; kernel delta {delta}",
            trigger.local_addr().map_or(0, |a| a.port())
        ));
        if delta.get("early_drop") == 1 {
            return trigger;
        }
    }
    panic!("three searches found no flow whose allocation early-drops the watched one")
}

/// Sends one datagram from each candidate source port to [`DROPPED_PORT`] until one
/// allocation evicts W (the table then holds one entry less: W gone, the candidate's
/// entry freed with its dropped packet) instead of failing for a full table. Returns
/// that candidate's socket and how many were tried.
fn find_trigger(c: &Netns, src: Ipv4Addr, dst: Ipv4Addr, full: u64) -> (UdpSocket, u16) {
    let count = sysctl_path("net.netfilter.nf_conntrack_count");
    c.run(move || {
        let dst = SocketAddrV4::new(dst, DROPPED_PORT);
        for (i, port) in (TRIGGER_PORTS..TRIGGER_PORTS + CANDIDATES).enumerate() {
            let socket = UdpSocket::bind(SocketAddrV4::new(src, port))
                .unwrap_or_else(|e| panic!("bind {src}:{port}: {e}"));
            let sent = socket.send_to(b"ctscope", dst).map(drop);
            assert!(traffic::is_eperm(&sent), "candidate {port}: {sent:?}");
            let now: u64 = std::fs::read_to_string(&count)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .expect("nf_conntrack_count");
            if now + 1 == full {
                return (socket, i as u16 + 1);
            }
            assert_eq!(now, full, "candidate {port}: the table changed otherwise");
        }
        panic!("none of {CANDIDATES} trigger candidates early-dropped the watched flow")
    })
}

/// Drops UDP to `port` in the output filter hook, after conntrack allocated the entry.
fn drop_after_conntrack(port: u16) -> String {
    format!(
        "table ip ctst_edrop {{
    chain out {{
        type filter hook output priority 10;
        udp dport {port} drop
    }}
}}
"
    )
}

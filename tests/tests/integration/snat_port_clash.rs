//! DESIGN.md's insert_failed reproducer: two UDP flows SNATed to the one source port
//! 40000. The second clashes in the reply direction at confirm and is dropped: the kernel
//! counts insert_failed=1 and drop=1, the sender gets EPERM, and ctscope reports one
//! `insert_failed` with cause `nat_port_clash` naming the first flow as the winner.
//! The IPv6 twin ([`run6`]) does the same with ip6 NAT.

use std::net::SocketAddr;

use ctscope_tests::{
    events::{self, Tuple},
    kernel::CtStats,
    netns::{self, Family},
    nft, traffic,
};

use crate::common::{Ctx, Watch, event_wait, note};

const DNS_PORT: u16 = 53;
const SNAT_PORT: u16 = 40000;
const PORTS: [u16; 2] = [33001, 33002];

pub fn run(watch: Watch) {
    clash(watch, Family::V4, 2);
}

/// The IPv6 twin, ip6 NAT on fd00:200:103::/64.
pub fn run6(watch: Watch) {
    clash(watch, Family::V6, 103);
}

fn clash(watch: Watch, family: Family, subnet: u8) {
    let mut ctx = Ctx::of(watch, family, subnet, |p| {
        nft::apply(
            &p.c,
            &nft::snat_single_port(netns::C_IF, p.c_ip(), SNAT_PORT),
        )
    });
    let p = &ctx.pair;
    let dst = SocketAddr::new(p.s_ip(), DNS_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);

    let before = CtStats::read(&p.c);
    let clash = traffic::snat_clash(&p.c, p.c_ip(), PORTS, dst);
    let delta = CtStats::read(&p.c).since(&before);

    clash.first.as_ref().expect("the first flow must pass");
    assert!(
        traffic::is_eperm(&clash.second),
        "the second flow must be dropped with EPERM, got {:?}; rules:\n{}",
        clash.second,
        nft::list(&p.c)
    );
    note(format!("snat_port_clash: kernel delta {delta}"));
    assert_eq!(delta.get("insert_failed"), 1, "kernel counters: {delta}");
    assert_eq!(delta.get("drop"), 1, "kernel counters: {delta}");

    let (c_addr, s_addr, inode) = (p.c_ip(), p.s_ip(), ctx.inode);
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "insert_failed", inode, None) >= 1
    });
    let Some(evs) = ctx.finish() else { return };

    let failed = events::select(&evs, "insert_failed", inode, None);
    assert_eq!(
        failed.len() as u64,
        delta.get("insert_failed"),
        "`insert_failed` events vs the kernel's insert_failed delta:\n{}",
        events::sample(&failed)
    );
    let e = failed[0];
    assert_eq!(e["cause"], "nat_port_clash", "cause: {e}");
    assert!(events::is_proto(e, "udp"), "proto: {e}");
    assert_eq!(
        Tuple::of(e, "orig"),
        Tuple::new(c_addr, PORTS[1], s_addr, DNS_PORT),
        "loser: {e}"
    );
    assert_eq!(
        Tuple::from_json(&e["reply"]),
        Some(Tuple::new(s_addr, DNS_PORT, c_addr, SNAT_PORT)),
        "the loser's reply tuple is the NATed one that clashed with the winner's: {e}"
    );
    assert_eq!(
        (&e["nat"][0]["kind"], &e["nat"][0]["port"]),
        (&"snat".into(), &SNAT_PORT.into()),
        "the SNAT mapping the loser was given: {e}"
    );
    let winner = &e["winner"];
    assert_eq!(
        Tuple::of(winner, "orig"),
        Tuple::new(c_addr, PORTS[0], s_addr, DNS_PORT),
        "winner: {e}"
    );
    assert_eq!(
        Tuple::of(winner, "reply"),
        Tuple::new(s_addr, DNS_PORT, c_addr, SNAT_PORT),
        "winner: {e}"
    );

    // Only the winner entered the table, NATed.
    let news = events::select(&evs, "new", inode, Some("udp"));
    assert_eq!(news.len(), 1, "`new` events:\n{}", events::sample(&news));
    assert_eq!(
        Tuple::of(news[0], "orig"),
        Tuple::of(winner, "orig"),
        "new: {}",
        news[0]
    );
    assert_eq!(
        Tuple::of(news[0], "reply"),
        Tuple::of(winner, "reply"),
        "new: {}",
        news[0]
    );
    let status = news[0]["status"].as_array().cloned().unwrap_or_default();
    assert!(
        status.iter().any(|s| s == "SRC_NAT"),
        "the winner is SRC_NAT: {}",
        news[0]
    );
}

//! A small, nearly full table makes allocation evict unreplied entries: with 512 hash
//! buckets and nf_conntrack_max 200, 1000 unreplied UDP flows from `c` trigger early_drop.
//! Every eviction the kernel counts (`early_drop` delta) is one `early_drop` event.
//!
//! early_drop scans only 8 buckets next to the new entry's, so the bucket count must be
//! small for evictions to find victims; `nf_conntrack_buckets` (global, init-netns only)
//! resizes the hash at runtime and is restored afterwards.

use std::{collections::BTreeSet, net::SocketAddrV4};

use ctscope_tests::{
    events,
    kernel::{self, CtStats, SysctlGuard},
    traffic,
};

use crate::common::{Ctx, UDP_PORT, Watch, event_wait, note};

const BUCKETS: u64 = 512;
const MAX: u64 = 200;
const FLOWS: usize = 1000;

pub fn run(watch: Watch) {
    let mut ctx = Ctx::new(watch, 5, |_| {});
    let p = &ctx.pair;
    let dst = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let ports = traffic::ports(23000, FLOWS);

    let before = CtStats::read(&p.c);
    let results = {
        // Global settings: restored as soon as the flows are sent (guards drop in reverse).
        let _buckets = SysctlGuard::set("net.netfilter.nf_conntrack_buckets", BUCKETS);
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        traffic::udp_flows(&p.c, p.c_addr, &ports, dst)
    };
    let delta = CtStats::read(&p.c).since(&before);

    let failed = traffic::dropped_ports(&ports, &results).len() as u64;
    note(format!(
        "early_drop: {failed} of {FLOWS} sends got EPERM; kernel delta {delta}"
    ));
    let evicted = delta.get("early_drop");
    assert!(
        evicted > 0,
        "no early_drop with {BUCKETS} buckets, max {MAX}: {delta}"
    );
    assert_eq!(
        failed,
        delta.get("drop"),
        "EPERM sends vs the kernel's drop delta: {delta}"
    );
    assert_eq!(
        kernel::ct_count(&p.c),
        FLOWS as u64 - failed - evicted,
        "entries left in c: {delta}"
    );

    let inode = ctx.inode;
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "early_drop", inode, None) as u64 >= evicted
    });
    let Some(evs) = ctx.finish() else { return };
    let drops = events::select(&evs, "early_drop", inode, None);
    assert_eq!(
        drops.len() as u64,
        evicted,
        "`early_drop` events vs the kernel's early_drop delta ({delta}):\n{}",
        events::sample(&drops)
    );
    let sent: BTreeSet<u64> = ports.iter().map(|&p| u64::from(p)).collect();
    for e in &drops {
        assert_eq!(e["reason"], "early_drop", "reason: {e}");
        let sport = e["orig"]["sport"].as_u64();
        assert!(
            sport.is_some_and(|s| sent.contains(&s)),
            "evicted entry is not one of ours: {e}"
        );
    }
    // Each eviction is reported once, as `early_drop`, not again as a `destroy`.
    let destroys = events::select(&evs, "destroy", inode, None);
    assert!(
        destroys.is_empty(),
        "unexpected destroys:\n{}",
        events::sample(&destroys)
    );
}

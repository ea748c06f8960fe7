//! A small, nearly full table makes allocation evict unreplied entries: with 512 hash
//! buckets and nf_conntrack_max 200, 1000 unreplied UDP flows from `c` trigger early_drop.
//! Every eviction the kernel counts (`early_drop` delta) is one `early_drop` event.
//!
//! early_drop scans only 8 buckets next to the new entry's, so the bucket count must be
//! small for evictions to find victims; `nf_conntrack_buckets` (global, init-netns only)
//! resizes the hash at runtime and is restored afterwards. The IPv6 twin ([`run6`]) sends
//! IPv6 flows.

use std::{collections::BTreeSet, net::SocketAddr};

use ctscope_tests::{
    events::{self, Tuple},
    kernel::{self, CtStats, SysctlGuard},
    netns::{Family, Netns},
    traffic,
};

use crate::common::{Ctx, UDP_PORT, Watch, event_wait, note};

const BUCKETS: u64 = 512;
const MAX: u64 = 200;
const FLOWS: usize = 1000;

pub fn run(watch: Watch) {
    evict(watch, Family::V4, 5);
}

/// The IPv6 twin, on fd00:200:105::/64.
pub fn run6(watch: Watch) {
    evict(watch, Family::V6, 105);
}

fn evict(watch: Watch, family: Family, subnet: u8) {
    // Long timeouts: an entry absent at the end was evicted, not expired.
    let mut ctx = Ctx::of(watch, family, subnet, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600")
    });
    let p = &ctx.pair;
    let dst = SocketAddr::new(p.s_ip(), UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let ports = traffic::ports(23000, FLOWS);

    let before = CtStats::read(&p.c);
    let results = {
        // Global settings: restored as soon as the flows are sent (guards drop in reverse).
        let _buckets = SysctlGuard::set("net.netfilter.nf_conntrack_buckets", BUCKETS);
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        traffic::udp_flows(&p.c, p.c_ip(), &ports, dst)
    };
    let delta = CtStats::read(&p.c).since(&before);

    let dropped = traffic::dropped_ports(&ports, &results);
    let failed = dropped.len() as u64;
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

    // The evicted flows: sent, not dropped, and no longer in the table.
    let left = table_sports(&p.c, family);
    let mut evictable: BTreeSet<Tuple> = ports
        .iter()
        .filter(|port| !dropped.contains(port) && !left.contains(port))
        .map(|&port| Tuple::new(p.c_ip(), port, p.s_ip(), UDP_PORT))
        .collect();
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
    // Capping makes the count match whatever was counted; each event must also name a
    // flow that entered the table and left it, and none twice.
    events::assert_each(&drops, "early_drop event", |e| {
        if e["reason"] != "early_drop" {
            return Err("reason is not early_drop".into());
        }
        let orig = Tuple::from_json(&e["orig"]).ok_or("no orig tuple")?;
        if evictable.remove(&orig) {
            return Ok(());
        }
        Err(if dropped.contains(&orig.sport) {
            format!("{orig}: its send failed, it never had an entry to evict")
        } else if left.contains(&orig.sport) {
            format!("{orig}: still in the kernel's table")
        } else {
            format!("{orig}: not one of the scenario's flows, or evicted twice")
        })
    });
    // Each eviction is reported once, as `early_drop`, not again as a `destroy`.
    let destroys = events::select(&evs, "destroy", inode, None);
    assert!(
        destroys.is_empty(),
        "unexpected destroys:\n{}",
        events::sample(&destroys)
    );
}

/// Source ports of the UDP entries of `family` in `ns`'s table (their original direction).
fn table_sports(ns: &Netns, family: Family) -> BTreeSet<u16> {
    ns.exec(&["conntrack", "-L", "-f", family.name(), "-p", "udp"])
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("sport=")))
        .map(|p| p.parse().unwrap_or_else(|_| panic!("bad sport={p}")))
        .collect()
}

//! With the global nf_conntrack_max lowered to 8, 20 new UDP flows from `c` overflow the
//! table: every flow the kernel drops (`drop` delta, EPERM at the sender) is one
//! `table_full` event. The IPv6 twin ([`run6`]) sends IPv6 flows.

use std::{collections::BTreeSet, net::SocketAddr};

use ctscope_tests::{
    events::{self, Tuple},
    kernel::{self, CtStats, SysctlGuard},
    netns::Family,
    traffic,
};

use crate::common::{Ctx, UDP_PORT, Watch, event_wait, note};

const MAX: u64 = 8;
const FLOWS: usize = 20;

pub fn run(watch: Watch) {
    fill(watch, Family::V4, 3);
}

/// The IPv6 twin, on fd00:200:104::/64.
pub fn run6(watch: Watch) {
    fill(watch, Family::V6, 104);
}

fn fill(watch: Watch, family: Family, subnet: u8) {
    let mut ctx = Ctx::of(watch, family, subnet, |_| {});
    let p = &ctx.pair;
    let dst = SocketAddr::new(p.s_ip(), UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let ports = traffic::ports(21000, FLOWS);

    let before = CtStats::read(&p.c);
    let results = {
        // nf_conntrack_max is global: keep the lowered value for as short as possible.
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        traffic::udp_flows(&p.c, p.c_ip(), &ports, dst)
    };
    let delta = CtStats::read(&p.c).since(&before);

    let failed = traffic::dropped_ports(&ports, &results);
    note(format!(
        "table_full: {} of {FLOWS} sends got EPERM; kernel delta {delta}",
        failed.len()
    ));
    let drops = delta.get("drop");
    assert!(drops > 0, "no drop with nf_conntrack_max={MAX}: {delta}");
    assert_eq!(
        failed.len() as u64,
        drops,
        "EPERM sends vs the kernel's drop delta: {delta}"
    );
    // Early drop may have evicted a few entries to admit others.
    assert_eq!(
        kernel::ct_count(&p.c),
        (FLOWS - failed.len()) as u64 - delta.get("early_drop"),
        "entries left in c: {delta}"
    );

    let (c_addr, s_addr, inode) = (p.c_ip(), p.s_ip(), ctx.inode);
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "table_full", inode, None) as u64 >= drops
    });
    let Some(evs) = ctx.finish() else { return };
    let full = events::select(&evs, "table_full", inode, None);
    assert_eq!(
        full.len() as u64,
        drops,
        "`table_full` events vs the kernel's drop delta ({delta}):\n{}",
        events::sample(&full)
    );
    // Capping makes the count match whatever was counted; the tuples must also match:
    // each event names a flow whose send failed, and no failed flow twice.
    let mut unclaimed: BTreeSet<Tuple> = failed
        .iter()
        .map(|&port| Tuple::new(c_addr, port, s_addr, UDP_PORT))
        .collect();
    events::assert_each(&full, "table_full event", |e| {
        if e["cause"] != "table_full" {
            return Err("cause is not table_full".into());
        }
        if !events::is_proto(e, "udp") {
            return Err("not UDP: the scenario sent only UDP".into());
        }
        let orig = Tuple::from_json(&e["orig"])
            .ok_or("no orig tuple: both tiers read it from the dropped packet")?;
        if unclaimed.remove(&orig) {
            return Ok(());
        }
        Err(
            if failed.contains(&orig.sport) && orig.dst == s_addr.to_string() {
                format!("{orig}: a second event for the same dropped flow")
            } else {
                format!("{orig}: not a flow whose send failed with EPERM {failed:?}")
            },
        )
    });
}

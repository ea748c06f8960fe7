//! With the global nf_conntrack_max lowered to 8, 20 new UDP flows from `c` overflow the
//! table: every flow the kernel drops (`drop` delta, EPERM at the sender) is one
//! `table_full` event.

use std::net::SocketAddrV4;

use ctscope_tests::{
    events,
    kernel::{self, CtStats, SysctlGuard},
    traffic,
};

use crate::common::{Ctx, UDP_PORT, Watch, event_wait, note};

const MAX: u64 = 8;
const FLOWS: usize = 20;

pub fn run(watch: Watch) {
    let mut ctx = Ctx::new(watch, 3, |_| {});
    let p = &ctx.pair;
    let dst = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let ports = traffic::ports(21000, FLOWS);

    let before = CtStats::read(&p.c);
    let results = {
        // nf_conntrack_max is global: keep the lowered value for as short as possible.
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        traffic::udp_flows(&p.c, p.c_addr, &ports, dst)
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

    let inode = ctx.inode;
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
    for e in &full {
        assert_eq!(e["cause"], "table_full", "cause: {e}");
        // The tuple is optional in the contract; when present it names a dropped flow.
        if let Some(sport) = e["orig"]["sport"].as_u64() {
            assert!(
                failed.iter().any(|&p| u64::from(p) == sport),
                "not a dropped flow: {e}"
            );
        }
    }
}

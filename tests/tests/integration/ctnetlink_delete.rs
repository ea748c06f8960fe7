//! Entries changed through ctnetlink: `conntrack -D` of one flow gives one `destroy` with
//! reason `ctnetlink` and that flow's tuple; `conntrack -F` gives one such `destroy` per
//! entry the table held before the flush; `conntrack -I` gives one `new` marked
//! `from_ctnetlink` (it never passes the packet path's confirm). Tier 2 cannot see that
//! insert (it learns of entries on egress), so its twin skips that part.

use std::{collections::BTreeSet, net::SocketAddrV4};

use ctscope_tests::{
    events::{self, Tuple},
    kernel, traffic,
};
use serde_json::Value;

use crate::common::{Ctx, UDP_PORT, Watch, event_wait};

const FLOWS: usize = 5;
/// Source port of the entry created with `conntrack -I` (outside the flows' ports).
const INSERTED_SPORT: u16 = 21999;

pub fn run(watch: Watch) {
    let mut ctx = Ctx::new(watch, 4, |_| {});
    let p = &ctx.pair;
    let dst = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let ports = traffic::ports(22000, FLOWS);
    for (port, r) in ports
        .iter()
        .zip(traffic::udp_flows(&p.c, p.c_addr, &ports, dst))
    {
        r.unwrap_or_else(|e| panic!("UDP flow from port {port}: {e}"));
    }
    assert_eq!(
        kernel::ct_count(&p.c),
        FLOWS as u64,
        "entries after the traffic"
    );

    let want: BTreeSet<Tuple> = ports
        .iter()
        .map(|&sp| Tuple::new(p.c_addr, sp, p.s_addr, UDP_PORT))
        .collect();
    let victim = Tuple::new(p.c_addr, ports[0], p.s_addr, UDP_PORT);
    let (src, dst_addr) = (p.c_addr.to_string(), p.s_addr.to_string());
    let (sport, dport) = (ports[0].to_string(), UDP_PORT.to_string());
    let filter = [
        "-p", "udp", "-s", &src, "-d", &dst_addr, "--sport", &sport, "--dport", &dport,
    ];
    assert_eq!(
        kernel::ct_delete(&p.c, &filter),
        1,
        "conntrack -D {filter:?}"
    );
    let before_flush = kernel::ct_count(&p.c);
    assert_eq!(before_flush, FLOWS as u64 - 1, "entries after conntrack -D");

    let inode = ctx.inode;
    // Flush only after the delete's event arrived, so the two can be told apart.
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "destroy", inode, None) >= 1
    });
    let after_delete = ctx.events.as_ref().map(|e| e.snapshot());
    kernel::ct_flush(&p.c);
    assert_eq!(kernel::ct_count(&p.c), 0, "entries after conntrack -F");

    let total = 1 + before_flush as usize;
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "destroy", inode, None) >= total
    });
    let inserted = Tuple::new(p.c_addr, INSERTED_SPORT, p.s_addr, UDP_PORT);
    let sport = INSERTED_SPORT.to_string();
    // Tier 2 sees entries on egress: one inserted through ctnetlink never passes there.
    let tier2 = watch.is_tier2();
    if !tier2 {
        p.c.exec(&[
            "conntrack",
            "-I",
            "-p",
            "udp",
            "-s",
            &src,
            "-d",
            &dst_addr,
            "--sport",
            &sport,
            "--dport",
            &dport,
            "-t",
            "60",
        ]);
        ctx.wait_events(event_wait(), |ev| {
            Ctx::count(ev, "new", inode, None) > FLOWS
        });
    }
    let Some(evs) = ctx.finish() else { return };

    if !tier2 {
        check_inserted(&evs, inode, &inserted);
    }

    let deleted = events::select(
        after_delete.as_deref().unwrap_or_default(),
        "destroy",
        inode,
        None,
    );
    assert_eq!(
        deleted.len(),
        1,
        "`destroy` events after conntrack -D:\n{}",
        events::sample(&deleted)
    );
    assert_eq!(
        Tuple::of(deleted[0], "orig"),
        victim,
        "deleted entry: {}",
        deleted[0]
    );

    let destroys = events::select(&evs, "destroy", inode, None);
    assert_eq!(
        destroys.len(),
        total,
        "`destroy` events: 1 from -D + {before_flush} from -F (reasons {}):\n{}",
        events::histogram(&destroys, "reason"),
        events::sample(&destroys)
    );
    let not_ctnetlink: Vec<&Value> = destroys
        .iter()
        .copied()
        .filter(|e| e["reason"] != "ctnetlink")
        .collect();
    assert!(
        not_ctnetlink.is_empty(),
        "reason must be ctnetlink:\n{}",
        events::sample(&not_ctnetlink)
    );
    let got: BTreeSet<Tuple> = destroys.iter().map(|e| Tuple::of(e, "orig")).collect();
    assert_eq!(got, want, "destroyed tuples");
}

/// Exactly one `new` marked `from_ctnetlink`, for the entry `conntrack -I` made.
fn check_inserted(evs: &[Value], inode: u64, inserted: &Tuple) {
    let from_ctnetlink: Vec<&Value> = events::select(evs, "new", inode, None)
        .into_iter()
        .filter(|e| e["from_ctnetlink"] == true)
        .collect();
    assert_eq!(
        from_ctnetlink.len(),
        1,
        "one `new` from conntrack -I:\n{}",
        events::sample(&from_ctnetlink)
    );
    assert_eq!(
        &Tuple::of(from_ctnetlink[0], "orig"),
        inserted,
        "{}",
        from_ctnetlink[0]
    );
}

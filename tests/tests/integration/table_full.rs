//! With the global nf_conntrack_max lowered to 8, 20 new UDP flows from `c` overflow the
//! table: every flow the kernel drops (`drop` delta, EPERM at the sender) is one
//! `table_full` event. The IPv6 twin ([`run6`]) sends IPv6 flows, then ICMPv6 echoes
//! into the full table: their events carry the echo's id, and the reply tuple the answer's
//! type, as conntrack would have made them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use ctscope_tests::{
    events::{self, Tuple},
    kernel::{self, CtStats, SysctlGuard},
    netns::Family,
    traffic,
};

use crate::common::{Ctx, UDP_PORT, Watch, event_wait, note};

const MAX: u64 = 8;
const FLOWS: usize = 20;
/// Ids of the IPv6 twin's echoes, sent once the table is full.
const ECHO_IDS: [u16; 3] = [800, 801, 802];

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
    let (results, echo_results) = {
        // nf_conntrack_max is global: keep the lowered value for as short as possible.
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        let udp = traffic::udp_flows(&p.c, p.c_ip(), &ports, dst);
        let echoes = match p.s_ip() {
            IpAddr::V6(s6) => traffic::icmpv6_echoes(&p.c, s6, &ECHO_IDS),
            IpAddr::V4(_) => Vec::new(),
        };
        (udp, echoes)
    };
    let delta = CtStats::read(&p.c).since(&before);

    let failed = traffic::dropped_ports(&ports, &results);
    let echo_ids = &ECHO_IDS[..echo_results.len()];
    let failed_echoes = traffic::dropped_ports(echo_ids, &echo_results);
    note(format!(
        "table_full: {} of {FLOWS} sends and {} of {} echoes got EPERM; kernel delta {delta}",
        failed.len(),
        failed_echoes.len(),
        echo_ids.len()
    ));
    let drops = delta.get("drop");
    assert!(drops > 0, "no drop with nf_conntrack_max={MAX}: {delta}");
    assert_eq!(
        (failed.len() + failed_echoes.len()) as u64,
        drops,
        "EPERM sends vs the kernel's drop delta: {delta}"
    );
    // Early drop may have evicted a few entries to admit others.
    let admitted = FLOWS - failed.len() + echo_ids.len() - failed_echoes.len();
    assert_eq!(
        kernel::ct_count(&p.c),
        admitted as u64 - delta.get("early_drop"),
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
    let mut unclaimed_echoes: BTreeSet<u16> = failed_echoes.iter().copied().collect();
    events::assert_each(&full, "table_full event", |e| {
        if e["cause"] != "table_full" {
            return Err("cause is not table_full".into());
        }
        if events::is_proto(e, "icmpv6") {
            return dropped_echo(e, (c_addr, s_addr), &mut unclaimed_echoes);
        }
        if !events::is_proto(e, "udp") {
            return Err("not UDP or ICMPv6: the scenario sent nothing else".into());
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

/// Checks a `table_full` event of an ICMPv6 echo: from c to s, an echo request whose id
/// is one of `unclaimed` (taken), the reply the echo reply with that id.
fn dropped_echo(
    e: &serde_json::Value,
    (c, s): (IpAddr, IpAddr),
    unclaimed: &mut BTreeSet<u16>,
) -> Result<(), String> {
    let (o, r) = (&e["orig"], &e["reply"]);
    let (c, s) = (c.to_string(), s.to_string());
    if o["src"] != c.as_str() || o["dst"] != s.as_str() || r["src"] != s.as_str() {
        return Err(format!("not an echo from {c} to {s}"));
    }
    if o["type"] != traffic::ICMPV6_ECHO_REQUEST || r["type"] != traffic::ICMPV6_ECHO_REPLY {
        return Err("orig is not an echo request, or reply not an echo reply".into());
    }
    if r["id"] != o["id"] || r["code"] != 0 || o["code"] != 0 {
        return Err("the reply's id or codes differ from the request's".into());
    }
    let id = o["id"].as_u64().and_then(|i| u16::try_from(i).ok());
    match id {
        Some(id) if unclaimed.remove(&id) => Ok(()),
        _ => Err(format!(
            "echo id {id:?} is not one dropped once {unclaimed:?}"
        )),
    }
}

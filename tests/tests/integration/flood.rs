//! A burst of new flows from one sender: every flow must arrive as exactly one `new` event
//! and nothing may be lost. Also prints the rate the events came at (a figure for the
//! record, not an assertion: the VMs run under TCG and the machines are shared).

use std::net::SocketAddrV4;

use ctscope_tests::{events, kernel, traffic};

use crate::common::{Ctx, Watch, event_wait, note};

const FLOWS: u16 = 10_000;
const FIRST_PORT: u16 = 30_000;
const SPORT: u16 = 5353;

pub fn run(watch: Watch) {
    let mut ctx = Ctx::new(watch, 6, |_| {});
    let p = &ctx.pair;
    let src = SocketAddrV4::new(p.c_addr, SPORT);
    let (failed, took) = traffic::udp_spray(&p.c, src, p.s_addr, FIRST_PORT..FIRST_PORT + FLOWS);
    assert_eq!(
        failed, 0,
        "sends failed: the table should have room for {FLOWS} entries"
    );
    note(format!(
        "flood: {FLOWS} flows sent in {:.3} s ({:.0} flows/s)",
        took.as_secs_f64(),
        f64::from(FLOWS) / took.as_secs_f64()
    ));
    assert!(
        kernel::ct_count(&p.c) >= u64::from(FLOWS),
        "the kernel should hold all {FLOWS} entries"
    );

    let inode = ctx.inode;
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "new", inode, Some("udp")) >= usize::from(FLOWS)
    });
    let Some(evs) = ctx.finish() else { return };
    let news = events::select(&evs, "new", inode, Some("udp"));
    let mut dports: Vec<u64> = news
        .iter()
        .filter(|e| e["orig"]["sport"] == u64::from(SPORT))
        .filter_map(|e| e["orig"]["dport"].as_u64())
        .collect();
    dports.sort_unstable();
    let reported = dports.len();
    dports.dedup();
    assert_eq!(
        (dports.len(), reported),
        (usize::from(FLOWS), usize::from(FLOWS)),
        "exactly one `new` per flow: (distinct destination ports, `new` events of the flows)"
    );
    let ts: Vec<f64> = news.iter().filter_map(|e| e["ts"].as_f64()).collect();
    let span =
        ts.iter().copied().fold(f64::MIN, f64::max) - ts.iter().copied().fold(f64::MAX, f64::min);
    if span > 0.0 {
        note(format!(
            "flood: {} new events over {span:.3} s of kernel time: {:.0} events/s, 0 lost",
            news.len(),
            news.len() as f64 / span
        ));
    }
}

//! Destroy reasons beyond timeout and ctnetlink: a TCP connect to a closed port is answered
//! with a RST, which kills the new entry in CLOSE (`tcp_close`); deleting a network
//! namespace destroys every entry in it (`netns_exit`).

use std::{
    net::{SocketAddrV4, TcpStream},
    time::Duration,
};

use ctscope_tests::{events, kernel, netns::Pair, nft, traffic};
use serde_json::Value;

use crate::common::{Ctx, Watch, event_wait, note};

/// No listener on this port in `s`: the SYN gets a RST.
const CLOSED_PORT: u16 = 8099;
const NETNS_FLOWS: u16 = 5;

pub fn tcp_close(watch: Watch) {
    let mut ctx = Ctx::new(watch, 7, |_| {});
    let p = &ctx.pair;
    let dst = SocketAddrV4::new(p.s_addr, CLOSED_PORT);
    let refused =
        p.c.run(move || TcpStream::connect_timeout(&dst.into(), Duration::from_secs(5)));
    let err = refused.expect_err("connect to a closed port should fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(
        kernel::ct_count(&p.c),
        0,
        "the RST should have killed the entry"
    );

    let inode = ctx.inode;
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "destroy", inode, Some("tcp")) >= 1
    });
    let Some(evs) = ctx.finish() else { return };
    let destroys = events::select(&evs, "destroy", inode, Some("tcp"));
    assert_eq!(
        destroys.len(),
        1,
        "one destroy:\n{}",
        events::sample(&destroys)
    );
    let d = destroys[0];
    assert_eq!(d["reason"], "tcp_close", "{d}");
    assert_eq!(d["tcp_state"], "CLOSE", "{d}");
    assert_eq!(d["orig"]["dport"], u64::from(CLOSED_PORT), "{d}");
}

pub fn netns_exit(watch: Watch) {
    let pair = Pair::new(8);
    nft::apply(&pair.c, nft::CT_ENABLE);
    let inode = pair.c.inode();
    let watching = watch.start(inode);
    let src = SocketAddrV4::new(pair.c_addr, 5353);
    let (failed, _) = traffic::udp_spray(&pair.c, src, pair.s_addr, 31000..31000 + NETNS_FLOWS);
    assert_eq!(failed, 0);
    assert_eq!(kernel::ct_count(&pair.c), u64::from(NETNS_FLOWS));
    // Deleting the namespaces; the kernel tears conntrack down from a workqueue.
    drop(pair);

    let Some(watching) = watching else { return };
    let exited = |ev: &[Value]| {
        events::select(ev, "destroy", inode, Some("udp"))
            .iter()
            .filter(|e| e["reason"] == "netns_exit")
            .count()
    };
    watching.wait_until(event_wait(), |ev| exited(ev) >= usize::from(NETNS_FLOWS));
    let finished = watching.stop();
    finished.assert_clean();
    events::assert_no_loss(&finished.events);
    let destroys = events::select(&finished.events, "destroy", inode, Some("udp"));
    note(format!("netns_exit: {} destroy events", destroys.len()));
    assert_eq!(
        destroys.len(),
        usize::from(NETNS_FLOWS),
        "{}",
        events::sample(&destroys)
    );
    assert!(
        destroys.iter().all(|e| e["reason"] == "netns_exit"),
        "every entry of a deleted namespace ends with netns_exit:\n{}",
        events::sample(&destroys)
    );
}

//! Dump speed against `conntrack -L` on a large table. Ignored by default (it
//! fills a table with CTNL_PERF_ENTRIES entries, 250000 unless set):
//! `cargo test --release -p ct-netlink --test perf -- --ignored --nocapture`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ct_netlink::{NewEntry, Tuple, proto};

#[tokio::test]
#[ignore]
async fn dump_large_table() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let n: u32 = std::env::var("CTNL_PERF_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250_000);
    let mut ct = ns.open();
    let start = Instant::now();
    for i in 0..n {
        // Distinct loopback sources, 60000 ports each.
        let src = IpAddr::V4(Ipv4Addr::from(0x7f00_0001 + i / 60_000));
        let dst = IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1));
        let t = Tuple::ports(proto::UDP, src, dst, 1 + (i % 60_000) as u16, 53);
        ct.create(&NewEntry::new(t, 600)).await.unwrap();
    }
    println!("created {n} entries in {:?}", start.elapsed());

    let start = Instant::now();
    let entries = ct.dump(None).await.unwrap();
    let ours = start.elapsed();
    assert_eq!(entries.len() as u32, n);

    let start = Instant::now();
    let (code, out) = ns.conntrack(&["-L"]);
    let theirs = start.elapsed();
    assert_eq!(code, 0);
    assert_eq!(out.lines().count() as u32, n);
    println!("dump of {n}: ct-netlink {ours:?}, conntrack -L {theirs:?}");
    ct.flush(None).await.unwrap();
}

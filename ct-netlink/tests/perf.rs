//! Dump speed against `conntrack -L` on a large table. Ignored by default (it
//! fills a table with CTNL_PERF_ENTRIES entries, 250000 unless set):
//! `cargo test --release -p ct-netlink --test perf -- --ignored --nocapture`.
//!
//! With `CTSCOPE_BIN` set to a ctscope binary (a release build for figures), the same
//! run also times the commands themselves on that table: `ctscope list` and
//! `conntrack -L`, each run in the namespace by `ip netns exec` with its text going to
//! /dev/null, best of three.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    if let Some(bin) = std::env::var_os("CTSCOPE_BIN") {
        let bin = bin.to_string_lossy().into_owned();
        let list = best_of_three(&ns.name, &[&bin, "list"]);
        let conntrack = best_of_three(&ns.name, &["conntrack", "-L"]);
        println!(
            "commands on {n} entries, text to /dev/null (best of 3): `ctscope list` {list:?}, \
             `conntrack -L` {conntrack:?}"
        );
    }
    ct.flush(None).await.unwrap();
}

/// The fastest of three runs of `ip netns exec NS ARGV > /dev/null` (stderr, with the
/// summary line, is discarded too); panics unless each exits 0.
fn best_of_three(ns: &str, argv: &[&str]) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new("ip")
                .args(["netns", "exec", ns])
                .args(argv)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("run {argv:?}: {e}"));
            let took = start.elapsed();
            assert!(status.success(), "{argv:?} in {ns}: {status}");
            took
        })
        .min()
        .unwrap_or_default()
}

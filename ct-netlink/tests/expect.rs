//! Expectation table and the dying/unconfirmed lists against conntrack.

mod common;

use std::net::IpAddr;

use common::NetNs;
use ct_netlink::{DumpFilter, NewEntry, NewExpectation, Table, Tuple, proto};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (src, dst, dport, master-src) of each `conntrack -L expect` line.
fn cli_expectations(ns: &NetNs) -> Vec<(String, String, String, String)> {
    let (code, out) = ns.conntrack(&["-L", "expect"]);
    assert_eq!(code, 0);
    let mut v: Vec<_> = out
        .lines()
        .map(|l| {
            let get = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .unwrap_or_default()
                    .to_string()
            };
            (get("src="), get("dst="), get("dport="), get("master-src="))
        })
        .collect();
    v.sort();
    v
}

fn new_expectation(master: &Tuple, dport: u16) -> NewExpectation {
    let tuple = Tuple::ports(proto::TCP, ip("127.0.0.2"), ip("127.0.0.1"), 0, dport);
    let mask = Tuple::ports(
        proto::TCP,
        ip("255.255.255.255"),
        ip("255.255.255.255"),
        0,
        0xffff,
    );
    NewExpectation {
        master: master.clone(),
        tuple,
        mask,
        timeout: 300,
        helper: None,
        zone: None,
        flags: None,
        class: None,
    }
}

#[tokio::test]
async fn expectations_list_delete_flush() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut ct = ns.open();
    // FTP control connections with the ftp helper attached are the masters; the
    // ftp helper allows one expectation per master.
    let masters: Vec<Tuple> = [40000, 40001]
        .map(|sport| Tuple::ports(proto::TCP, ip("127.0.0.1"), ip("127.0.0.2"), sport, 21))
        .into();
    for m in &masters {
        let mut entry = NewEntry::new(m.clone(), 300);
        entry.helper = Some("ftp".into());
        if let Err(e) = ct.create(&entry).await {
            common::skipped(&format!("cannot attach the ftp helper: {e}"));
            return;
        }
    }
    for (m, port) in masters.iter().zip([50000, 50001]) {
        ct.create_expectation(&new_expectation(m, port))
            .await
            .unwrap();
    }
    let master = &masters[0];
    let ours = ct.expectations(None).await.unwrap();
    assert_eq!(ours.len(), 2);
    let mut ours_keys: Vec<_> = ours
        .iter()
        .map(|e| {
            (
                e.tuple.src.to_string(),
                e.tuple.dst.to_string(),
                e.tuple.dst_port.unwrap().to_string(),
                e.master.src.to_string(),
            )
        })
        .collect();
    ours_keys.sort();
    assert_eq!(ours_keys, cli_expectations(&ns));
    assert_eq!(ours[0].helper.as_deref(), Some("ftp"));

    let first = &ours[0].tuple;
    assert!(ct.get_expectation(first).await.unwrap().is_some());
    ct.delete_expectation(first).await.unwrap();
    assert!(ct.get_expectation(first).await.unwrap().is_none());
    assert_eq!(cli_expectations(&ns).len(), 1);

    // conntrack -F expect empties what we list, and our flush empties theirs.
    assert_eq!(ns.conntrack(&["-F", "expect"]).0, 0);
    assert!(ct.expectations(None).await.unwrap().is_empty());
    ct.create_expectation(&new_expectation(master, 50002))
        .await
        .unwrap();
    assert_eq!(cli_expectations(&ns).len(), 1);
    ct.flush_expectations(None).await.unwrap();
    assert!(cli_expectations(&ns).is_empty());
}

#[tokio::test]
async fn dying_and_unconfirmed_lists_match() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    ns.udp_flows(ip("127.0.0.1"), 5353, 2);
    let mut ct = ns.open();
    for (table, name) in [(Table::Dying, "dying"), (Table::Unconfirmed, "unconfirmed")] {
        let filter = DumpFilter {
            table,
            ..DumpFilter::default()
        };
        let ours = ct.dump_filtered(&filter).await.unwrap();
        let (code, out) = ns.conntrack(&["-L", name]);
        assert_eq!(code, 0, "conntrack -L {name}");
        assert_eq!(ours.len(), out.lines().count(), "{name}");
    }
}

//! `dump`, `count`, `get` and the statistics against the real conntrack binary.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::{NetNs, cli_keys, lib_keys, skip};
use ct_netlink::{Conntrack, Error, Family, NewEntry, Tuple, proto};

fn v4() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn v6() -> IpAddr {
    "::1".parse().unwrap()
}

#[tokio::test]
async fn dump_matches_conntrack_list() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    ns.enable_acct();
    ns.sh("sysctl -qw net.netfilter.nf_conntrack_timestamp=1");
    ns.udp_flows(v4(), 5000, 5);
    ns.udp_flows(v6(), 5001, 3);
    let have_ping = ns
        .sh("busybox ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 && busybox ping6 -c1 -W1 ::1 >/dev/null 2>&1 && echo yes || true")
        .stdout
        .starts_with(b"yes");
    let mut ct = ns.open();

    let all = ct.dump(None).await.unwrap();
    assert!(
        all.len() >= 8,
        "expected at least 8 flows, got {}",
        all.len()
    );
    assert_eq!(lib_keys(&all), cli_keys(&ns, &[]));

    let only_v4 = ct.dump(Some(Family::Ipv4)).await.unwrap();
    assert!(only_v4.iter().all(|e| e.family == Family::Ipv4));
    assert_eq!(lib_keys(&only_v4), cli_keys(&ns, &["-f", "ipv4"]));
    let only_v6 = ct.dump(Some(Family::Ipv6)).await.unwrap();
    assert_eq!(only_v6.len(), if have_ping { 4 } else { 3 });
    if have_ping {
        assert!(
            all.iter()
                .any(|e| e.proto == proto::ICMP && e.orig.icmp_type == Some(8))
        );
        assert!(
            all.iter()
                .any(|e| e.proto == proto::ICMPV6 && e.reply.icmp_type == Some(129))
        );
    }
    assert_eq!(lib_keys(&only_v6), cli_keys(&ns, &["-f", "ipv6"]));

    assert!(
        all.iter()
            .all(|e| e.counters_orig.is_some_and(|c| c.packets >= 1))
    );

    let json = serde_json::to_value(&all[0]).unwrap();
    for field in ["family", "proto", "orig", "reply", "status", "use", "id"] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
}

#[tokio::test]
async fn count_and_get_match_conntrack() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let ports = ns.udp_flows(v4(), 6000, 4);
    let mut ct = ns.open();
    let (code, out) = ns.conntrack(&["-C"]);
    assert_eq!(code, 0);
    assert_eq!(ct.count().await.unwrap().to_string(), out.trim());
    assert_eq!(ct.count().await.unwrap(), 4);
    let global = ct.stats_global().await.unwrap();
    assert_eq!(global.entries, 4);

    let entries = ct.dump(None).await.unwrap();
    let first = entries
        .iter()
        .find(|e| e.orig.src_port == Some(ports[0]))
        .expect("flow of the first socket");
    let got = ct
        .get(&first.orig, None)
        .await
        .unwrap()
        .expect("get finds it");
    assert_eq!(got.id, first.id);
    assert_eq!(got.orig, first.orig);
    // conntrack -G on the same tuple shows the same entry.
    let sport = ports[0].to_string();
    let (code, out) = ns.conntrack(&[
        "-G",
        "-p",
        "udp",
        "-s",
        "127.0.0.1",
        "-d",
        "127.0.0.1",
        "--sport",
        &sport,
        "--dport",
        "6000",
        "-o",
        "extended,id",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        common::key_of_line(out.lines().next().unwrap()),
        common::key_of_entry(&got)
    );

    let mut missing = first.orig.clone();
    missing.dst_port = Some(1);
    assert!(ct.get(&missing, None).await.unwrap().is_none());
}

/// Parse `conntrack -S`: `cpu=0 found=0 invalid=0 ...` per line.
fn cli_stats(ns: &NetNs) -> Vec<BTreeMap<String, u32>> {
    let (code, out) = ns.conntrack(&["-S"]);
    assert_eq!(code, 0);
    out.lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn stats_cpu_match_conntrack_s() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    ns.udp_flows(v4(), 7000, 6);
    let mut ct = ns.open();
    // `insert` only counts ctnetlink inserts (nf_conntrack_hash_check_insert).
    for port in 1..=3 {
        let t = Tuple::ports(proto::UDP, v4(), v4(), port, 7001);
        ct.create(&NewEntry::new(t, 60)).await.unwrap();
    }
    let ours = ct.stats_cpu().await.unwrap();
    let cli = cli_stats(&ns);
    assert_eq!(ours.len(), cli.len(), "one entry per possible CPU");
    let mut cli_sorted = cli;
    cli_sorted.sort_by_key(|m| m["cpu"]);
    for (s, m) in ours.iter().zip(&cli_sorted) {
        let mut mine: BTreeMap<String, u32> = s
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        mine.insert("cpu".into(), u32::from(s.cpu));
        assert_eq!(&mine, m);
    }
    let inserted: u32 = ours.iter().filter_map(|s| s.insert).sum();
    assert_eq!(inserted, 3, "3 entries inserted by ctnetlink");
}

#[tokio::test]
async fn missing_netns_is_a_clear_error() {
    if skip() {
        return;
    }
    let err = Conntrack::open_in_netns("/run/netns/ctnl-test-does-not-exist")
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::NetnsNotFound { .. }), "{err}");
    assert!(err.to_string().contains("not found"));
}

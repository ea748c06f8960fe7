//! A dual-stack namespace: IPv4 and IPv6 entries side by side must both show in `list`,
//! `count`, `stats`, `top` and `diagnose`, each family with its own entries (issue 16).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use ctscope_tests::{
    netns::{Family, Pair},
    traffic,
};
use serde_json::Value;

use crate::{
    common::{Ctx, UDP_PORT, Watch, note},
    diagnose::{ctscope_json, ctscope_stdout},
};

const V4_FLOWS: usize = 3;
const V6_FLOWS: usize = 2;
const ECHO_ID: u16 = 900;

pub fn run() {
    let ctx = Ctx::of(Watch::KernelOnly, Family::V6, 106, |p| {
        for key in ["udp_timeout", "icmpv6_timeout"] {
            p.c.sysctl(&format!("net.netfilter.nf_conntrack_{key}"), "600");
        }
    });
    let p = &ctx.pair;
    let (c4, c6) = (p.addr(Family::V4, 0), p.addr(Family::V6, 0));
    send_udp(p, Family::V4, 26000, V4_FLOWS);
    send_udp(p, Family::V6, 26100, V6_FLOWS);
    let IpAddr::V6(s6) = p.addr(Family::V6, 1) else {
        unreachable!("an IPv6 server address")
    };
    traffic::assert_sent(&[ECHO_ID], &traffic::icmpv6_echoes(&p.c, s6, &[ECHO_ID]));
    let (n4, n6) = (V4_FLOWS as u64, V6_FLOWS as u64 + 1);
    let total = n4 + n6;
    let conntrack_count: u64 = p.c.exec(&["conntrack", "-C"]).trim().parse().expect("-C");
    assert_eq!(
        conntrack_count,
        total,
        "the table itself: {}",
        p.c.exec(&["conntrack", "-L"])
    );

    // list: every entry once, in its family; -f picks one.
    let families = |args: &[&str]| -> BTreeMap<&'static str, u64> {
        let mut argv = vec!["list", "--json"];
        argv.extend_from_slice(args);
        let text = ctscope_stdout(&ctx.pair.c, &argv);
        let mut by = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let e: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("list --json line {line:?}: {err}"));
            *by.entry(family_of(&e)).or_default() += 1;
        }
        by
    };
    let both = BTreeMap::from([("ipv4", n4), ("ipv6", n6)]);
    assert_eq!(families(&[]), both, "list --json entries by family");
    assert_eq!(
        families(&["-f", "ipv6"]),
        BTreeMap::from([("ipv6", n6)]),
        "list -f ipv6"
    );
    assert_eq!(
        families(&["-f", "ipv4"]),
        BTreeMap::from([("ipv4", n4)]),
        "list -f ipv4"
    );

    let count = ctscope_json(&p.c, &["count", "--json"]);
    assert_eq!(count["count"], total, "count --json: {count}");
    let stats = ctscope_json(&p.c, &["stats", "--json"]);
    assert_eq!(stats["entries"], total, "stats --json: {stats}");

    // top: the client's two addresses, one per family, with their entry counts.
    let top = ctscope_json(&p.c, &["top", "--by", "src", "--json"]);
    let keys: BTreeMap<String, u64> = top["top"]
        .as_array()
        .expect("`top` array")
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or("").to_owned(),
                r["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        keys,
        BTreeMap::from([(c4.to_string(), n4), (c6.to_string(), n6)]),
        "top --by src: {top}"
    );
    assert_eq!(top["entries"], total, "top entries: {top}");
    let protos = ctscope_json(&p.c, &["top", "--by", "proto", "--json"]);
    note(format!("dual_stack: top --by proto {protos}"));
    let proto_keys: Vec<&str> = protos["top"]
        .as_array()
        .expect("`top` array")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert!(
        proto_keys.iter().any(|k| k.contains("icmpv6")),
        "top --by proto has the ICMPv6 entry: {protos}"
    );

    // diagnose: the namespace's count and fill include both families.
    let report = ctscope_json(&p.c, &["diagnose", "--json"]);
    let sysctls = &report["evidence"][0]["sysctls"];
    assert_eq!(
        sysctls["nf_conntrack_count"], total,
        "diagnose sysctls: {sysctls}"
    );
    let fill = report["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["id"] == "table_fill"))
        .unwrap_or_else(|| panic!("no table_fill finding: {report}"));
    assert_eq!(fill["evidence"]["count"], total, "table_fill: {fill}");
    let table = &report["evidence"][0]["table"];
    assert_eq!(table["dumped"], total, "diagnose's dump: {table}");
    assert_eq!(
        table["by_proto"],
        serde_json::json!({"udp": V4_FLOWS + V6_FLOWS, "icmpv6": 1}),
        "diagnose's composition: {table}"
    );
}

/// `count` UDP flows of `family` from the client, source ports from `first`.
fn send_udp(p: &Pair, family: Family, first: u16, count: usize) {
    let dst = SocketAddr::new(p.addr(family, 1), UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let ports = traffic::ports(first, count);
    for r in traffic::udp_flows(&p.c, p.addr(family, 0), &ports, dst) {
        r.unwrap_or_else(|e| panic!("UDP flow to {dst}: {e}"));
    }
}

/// A `list --json` entry's family, from its original source address.
fn family_of(e: &Value) -> &'static str {
    let src: IpAddr = e["orig"]["src"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no orig.src address: {e}"));
    if src.is_ipv6() { "ipv6" } else { "ipv4" }
}

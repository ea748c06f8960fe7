//! `ctscope diagnose` and `ctscope top` against real tables: a full table, a SNAT port
//! clash, and a table whose destination ports are counted from `conntrack -L`.

use std::{collections::BTreeMap, net::SocketAddrV4, process::Command};

use ctscope_tests::{
    ctscope,
    kernel::{CtStats, SysctlGuard},
    netns::{self, Netns},
    nft, traffic,
};
use serde_json::Value;

use crate::common::{Ctx, UDP_PORT, Watch, note};

/// `ctscope ARGS --netns NS`, required to exit 0; stdout as JSON.
pub fn ctscope_json(ns: &Netns, args: &[&str]) -> Value {
    let stdout = ctscope_stdout(ns, args);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ctscope {args:?}: not one JSON object ({e}):\n{stdout}"))
}

/// `ctscope ARGS --netns NS`, required to exit 0; its stdout.
pub fn ctscope_stdout(ns: &Netns, args: &[&str]) -> String {
    let bin = ctscope::binary_or_panic();
    let out = Command::new(&bin)
        .args(args)
        .args(["--netns", ns.name()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "ctscope {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The finding `id` of a diagnose report; panics listing the ids when it is absent.
fn finding<'a>(report: &'a Value, id: &str) -> &'a Value {
    let findings = report["findings"].as_array().expect("`findings` array");
    findings
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no `{id}` finding in {findings:#?}"))
}

fn has_finding(report: &Value, id: &str) -> bool {
    report["findings"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["id"] == id))
}

/// Checks the report is about namespace `inode` only.
fn assert_about(report: &Value, inode: u64) {
    let evidence = report["evidence"].as_array().expect("`evidence` array");
    assert_eq!(evidence.len(), 1, "one namespace: {evidence:#?}");
    assert_eq!(evidence[0]["netns"], inode, "evidence netns");
    for f in report["findings"].as_array().into_iter().flatten() {
        assert_eq!(f["netns"], inode, "finding netns: {f}");
        for field in ["severity", "evidence", "recommendation", "summary"] {
            assert!(!f[field].is_null(), "finding without {field}: {f}");
        }
    }
}

/// nf_conntrack_max lowered to 8 and 20 flows: the table_full finding, crit, with the
/// kernel's drops as evidence and the sysctl to raise.
pub fn table_full() {
    const MAX: u64 = 8;
    let ctx = Ctx::new(Watch::KernelOnly, 40, |_| {});
    let p = &ctx.pair;
    let dst = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let ports = traffic::ports(24000, 20);

    let before = CtStats::read(&p.c);
    let (delta, report) = {
        // Global: diagnose runs while it is lowered (the table is still full), then restore.
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        traffic::udp_flows(&p.c, p.c_addr, &ports, dst);
        let delta = CtStats::read(&p.c).since(&before);
        (delta, ctscope_json(&p.c, &["diagnose", "--json"]))
    };
    note(format!("diagnose table_full: kernel delta {delta}"));
    assert!(delta.get("drop") > 0, "no drop with max {MAX}: {delta}");
    assert_about(&report, ctx.inode);

    let f = finding(&report, "table_full");
    assert_eq!(f["severity"], "crit", "{f}");
    let drop = f["evidence"]["drop"].as_u64().expect("evidence.drop");
    assert!(
        drop >= delta.get("drop"),
        "evidence drop {drop} < kernel delta: {delta}"
    );
    assert_eq!(f["evidence"]["max"], MAX, "{f}");
    let rec = f["recommendation"].as_str().unwrap_or_default();
    assert!(
        rec.contains("sysctl -w net.netfilter.nf_conntrack_max="),
        "{rec}"
    );
    assert_eq!(finding(&report, "table_fill")["severity"], "crit");
    let ev = &report["evidence"][0];
    assert_eq!(
        ev["sysctls"]["nf_conntrack_max"], MAX,
        "read in the namespace"
    );
    assert!(
        ev["counters"]["drop"].as_u64() >= Some(delta.get("drop")),
        "{ev}"
    );
    assert!(ev["memory"]["per_entry_bytes"].as_u64() > Some(0), "{ev}");
}

/// The single-port SNAT clash: the snat_port_clash finding recommending random-fully,
/// and no table_full (the one drop is the clash's).
pub fn snat_clash() {
    let ctx = Ctx::new(Watch::KernelOnly, 41, |p| {
        nft::apply(&p.c, &nft::snat_single_port(netns::C_IF, p.c_addr, 40000))
    });
    let p = &ctx.pair;
    let dst = SocketAddrV4::new(p.s_addr, 53);
    let _sink = traffic::UdpSink::bind(&p.s, dst);
    let before = CtStats::read(&p.c);
    let clash = traffic::snat_clash(&p.c, p.c_addr, [33101, 33102], dst);
    let delta = CtStats::read(&p.c).since(&before);
    assert!(
        traffic::is_eperm(&clash.second),
        "second flow: {:?}",
        clash.second
    );
    assert_eq!(delta.get("insert_failed"), 1, "kernel counters: {delta}");

    let report = ctscope_json(&p.c, &["diagnose", "--json"]);
    assert_about(&report, ctx.inode);
    let f = finding(&report, "snat_port_clash");
    assert_eq!(f["severity"], "warn", "{f}");
    assert!(f["evidence"]["insert_failed"].as_u64() >= Some(1), "{f}");
    assert!(f["evidence"]["src_nat_entries"].as_u64() >= Some(1), "{f}");
    let rec = f["recommendation"].as_str().unwrap_or_default();
    assert!(
        rec.contains("--random-fully") && rec.contains("fully-random"),
        "{rec}"
    );
    assert!(
        !has_finding(&report, "table_full"),
        "a clash is not a full table: {report}"
    );
}

/// UDP flows to three ports plus inserted TCP and ICMP entries: `ctscope top --by dport`
/// counts what `conntrack -L` shows.
pub fn top_dport() {
    let ctx = Ctx::new(Watch::KernelOnly, 42, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600")
    });
    let p = &ctx.pair;
    let plan = [(5301, 5), (5302, 3), (5303, 1)];
    for (i, (dport, flows)) in plan.into_iter().enumerate() {
        let dst = SocketAddrV4::new(p.s_addr, dport);
        let _sink = traffic::UdpSink::bind(&p.s, dst);
        let ports = traffic::ports(25000 + 100 * i as u16, flows);
        for r in traffic::udp_flows(&p.c, p.c_addr, &ports, dst) {
            r.unwrap_or_else(|e| panic!("UDP flow to {dst}: {e}"));
        }
    }
    let (c, s) = (p.c_addr.to_string(), p.s_addr.to_string());
    let tcp = [
        "-p",
        "tcp",
        "--sport",
        "1000",
        "--dport",
        "5301",
        "--state",
        "ESTABLISHED",
    ];
    let icmp = [
        "-p",
        "icmp",
        "--icmp-type",
        "8",
        "--icmp-code",
        "0",
        "--icmp-id",
        "7",
    ];
    for extra in [&tcp, &icmp] {
        let mut argv = vec!["conntrack", "-I", "-t", "600", "-s", &c, "-d", &s];
        argv.extend_from_slice(extra);
        p.c.exec(&argv);
    }

    let top = ctscope_json(&p.c, &["top", "--by", "dport", "--json", "-n", "100"]);
    let listed = p.c.exec(&["conntrack", "-L"]);
    let want = dports_of(&listed);
    note(format!(
        "top_dport: conntrack -L dports {want:?}; top {top}"
    ));
    assert_eq!(
        want,
        BTreeMap::from([("5301".into(), 6), ("5302".into(), 3), ("5303".into(), 1)]),
        "the table itself:\n{listed}"
    );
    let rows = top["top"].as_array().expect("`top` array");
    let got: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "ctscope top vs conntrack -L:\n{listed}");
    let entries = listed.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    assert_eq!(top["entries"], entries, "entries, ICMP included");
    assert_eq!(top["by"], "dport");
    assert_eq!(rows[0]["key"], "5301", "biggest first: {top}");
    let share = rows[0]["share"].as_f64().unwrap();
    assert!(
        (share - 6.0 / entries as f64).abs() < 1e-9,
        "share {share} of {entries}"
    );

    let top2 = ctscope_json(&p.c, &["top", "--by", "dport", "--json", "-n", "2"]);
    let keys: Vec<&str> = top2["top"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert_eq!(keys, ["5301", "5302"], "-n 2: {top2}");
}

/// Original-direction destination port of each `conntrack -L` line that has one, counted.
fn dports_of(listing: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in listing.lines() {
        if let Some(port) = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("dport="))
        {
            *counts.entry(port.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

//! `ctscope timeouts` against a real table: per-namespace timeout sysctls set to values no
//! kernel defaults to, unanswered and answered UDP flows and one open TCP connection;
//! the report must show the namespace's sysctls (not the host's), the entries per
//! protocol and state that `conntrack -L` shows, seconds left within the sysctl, and
//! the UNREPLIED UDP warning.

use std::{
    collections::BTreeMap,
    net::{SocketAddrV4, TcpListener, TcpStream},
    time::Duration,
};

use ctscope_tests::{kernel, netns::Netns, traffic};
use serde_json::Value;

use crate::{
    common::{Ctx, TCP_PORT, UDP_PORT, Watch, note},
    ctnetlink_cli::run_ctscope,
    diagnose::ctscope_json,
};

const SUBNET: u8 = 43;
const UDP_TIMEOUT: u64 = 37;
const TCP_ESTABLISHED: u64 = 1234;
const UDP_KEY: &str = "net.netfilter.nf_conntrack_udp_timeout";
const TCP_KEY: &str = "net.netfilter.nf_conntrack_tcp_timeout_established";
/// Enough unanswered flows for `udp_unreplied` (≥ 100 entries and ≥ 25 % of the table).
const UNANSWERED: usize = 120;
const ANSWERED: usize = 3;

/// Entries of one protocol and state in `conntrack -L`: how many, and their fewest and
/// most seconds left.
#[derive(Debug, Default, PartialEq)]
struct Listed {
    entries: u64,
    min: u64,
    max: u64,
}

pub fn run() {
    let host = [UDP_KEY, TCP_KEY].map(kernel::read_global);
    let ctx = Ctx::new(Watch::KernelOnly, SUBNET, |p| {
        p.c.sysctl(UDP_KEY, &UDP_TIMEOUT.to_string());
        p.c.sysctl(TCP_KEY, &TCP_ESTABLISHED.to_string());
    });
    let p = &ctx.pair;
    assert_eq!(
        [UDP_KEY, TCP_KEY].map(kernel::read_global),
        host,
        "per-namespace sysctls changed the host's"
    );
    assert_ne!(
        host[0],
        UDP_TIMEOUT.to_string(),
        "the host has the test's value"
    );

    let sink = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, sink);
    let ports = traffic::ports(26000, UNANSWERED);
    let sent = traffic::udp_flows(&p.c, p.c_addr, &ports, sink);
    assert!(sent.iter().all(Result::is_ok), "unanswered flows: {sent:?}");
    let echo = SocketAddrV4::new(p.s_addr, UDP_PORT + 1);
    let answered = traffic::ports(27000, ANSWERED);
    traffic::udp_answered_flows(&p.c, &p.s, p.c_addr, &answered, echo);
    let _tcp = open_tcp(&p.c, &p.s, SocketAddrV4::new(p.s_addr, TCP_PORT));

    let report = ctscope_json(&p.c, &["timeouts", "--json"]);
    let listing = p.c.exec(&["conntrack", "-L"]);
    let listed = parse_listing(&listing);
    note(format!(
        "timeouts: conntrack -L {listed:?}; report {report}"
    ));

    assert_eq!(
        listed.get(&key("udp", "UNREPLIED")).map(|l| l.entries),
        Some(UNANSWERED as u64),
        "the table itself:\n{listing}"
    );
    assert_eq!(
        listed.get(&key("tcp", "ESTABLISHED")).map(|l| l.entries),
        Some(1),
        "the table itself:\n{listing}"
    );
    assert_eq!(report["netns"], ctx.inode);
    let sysctls = &report["sysctls"];
    assert_eq!(
        sysctls["nf_conntrack_udp_timeout"], UDP_TIMEOUT,
        "{sysctls}"
    );
    assert_eq!(
        sysctls["nf_conntrack_tcp_timeout_established"], TCP_ESTABLISHED,
        "{sysctls}"
    );
    assert!(report.get("lifetimes").is_none(), "no agent runs: {report}");
    check_rows(&report, &listed, &listing);
    check_finding(&report, &listed);
    check_text_and_errors(&p.c);
}

/// A TCP connection from `c` to `dst` in `s`, held open (both ends returned): its entry
/// is ESTABLISHED once connect returns, since conntrack saw the handshake's last ACK leave.
fn open_tcp(c: &Netns, s: &Netns, dst: SocketAddrV4) -> (TcpStream, TcpStream) {
    let listener =
        s.run(move || TcpListener::bind(dst).unwrap_or_else(|e| panic!("listen TCP {dst}: {e}")));
    let client = c.run(move || {
        TcpStream::connect_timeout(&dst.into(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("TCP connect to {dst}: {e}"))
    });
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

fn key(proto: &str, state: &str) -> (String, String) {
    (proto.to_owned(), state.to_owned())
}

/// Every row matches `conntrack -L` (read after the report, so its timeouts are no
/// larger), and no entry has more seconds left than the sysctl that governs it.
fn check_rows(report: &Value, listed: &BTreeMap<(String, String), Listed>, listing: &str) {
    let rows = report["table"].as_array().expect("`table` array");
    let mut counts = BTreeMap::new();
    for r in rows {
        let k = key(r["proto"].as_str().unwrap(), r["state"].as_str().unwrap());
        let left = &r["remaining"];
        let (min, max) = (left["min"].as_f64().unwrap(), left["max"].as_f64().unwrap());
        let timeout = r["timeout"]
            .as_f64()
            .unwrap_or_else(|| panic!("no sysctl: {r}"));
        assert!(max <= timeout, "more seconds left than the sysctl: {r}");
        let l = &listed[&k];
        assert!(
            min >= l.min as f64 && max >= l.max as f64,
            "seconds left below conntrack -L's, read later: {r} vs {l:?}"
        );
        assert_eq!(left["count"], r["entries"], "{r}");
        counts.insert(k, r["entries"].as_u64().unwrap());
    }
    let want: BTreeMap<_, _> = listed.iter().map(|(k, l)| (k.clone(), l.entries)).collect();
    assert_eq!(counts, want, "ctscope timeouts vs conntrack -L:\n{listing}");
    assert_eq!(report["dumped"], want.values().sum::<u64>());

    let row = |p, s| {
        rows.iter()
            .find(|r| r["proto"] == p && r["state"] == s)
            .unwrap_or_else(|| panic!("no {p}/{s} row: {report}"))
    };
    let udp = row("udp", "UNREPLIED");
    assert_eq!(udp["sysctl"], "nf_conntrack_udp_timeout");
    assert_eq!(udp["timeout"], UDP_TIMEOUT);
    let tcp = row("tcp", "ESTABLISHED");
    assert_eq!(tcp["sysctl"], "nf_conntrack_tcp_timeout_established");
    assert_eq!(tcp["timeout"], TCP_ESTABLISHED);
}

/// The UNREPLIED UDP warning with the table's numbers; no 5-day TCP warning at 1234 s.
fn check_finding(report: &Value, listed: &BTreeMap<(String, String), Listed>) {
    let findings = report["findings"].as_array().expect("`findings` array");
    let ids: Vec<&str> = findings.iter().filter_map(|f| f["id"].as_str()).collect();
    assert_eq!(ids, ["udp_unreplied"], "{findings:#?}");
    let f = &findings[0];
    assert_eq!(
        f["evidence"]["udp_unreplied"],
        listed[&key("udp", "UNREPLIED")].entries
    );
    assert_eq!(f["evidence"]["udp_timeout"], UDP_TIMEOUT);
    let rec = f["recommendation"].as_str().unwrap_or_default();
    assert!(
        rec.contains("sysctl -w net.netfilter.nf_conntrack_udp_timeout="),
        "{rec}"
    );
}

/// The text report shows the same, says where lifetimes come from; a bad --netns is an
/// error that says what to give.
fn check_text_and_errors(c: &Netns) {
    let out = run_ctscope(&["timeouts", "--netns", c.name()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let sysctl_line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("nf_conntrack_udp_timeout"))
        .unwrap_or_else(|| panic!("no udp_timeout line:\n{text}"));
    assert!(sysctl_line.ends_with(&format!(" {UDP_TIMEOUT}")), "{text}");
    assert!(text.contains("run `ctscope watch`"), "{text}");
    assert!(text.contains("[WARN] udp_unreplied"), "{text}");

    let out = run_ctscope(&["timeouts", "--netns", "ctscope-no-such-netns"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
    assert!(stderr.contains("unknown network namespace"), "{stderr}");
}

/// `conntrack -L` lines by protocol and state (the TCP state, else UNREPLIED, ASSURED or
/// REPLIED from the flags), with their seconds left.
fn parse_listing(listing: &str) -> BTreeMap<(String, String), Listed> {
    let mut found: BTreeMap<(String, String), Listed> = BTreeMap::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (proto, timeout) = (fields[0], fields[2].parse::<u64>().expect("timeout"));
        let state = if proto == "tcp" {
            fields[3]
        } else if line.contains("[UNREPLIED]") {
            "UNREPLIED"
        } else if line.contains("[ASSURED]") {
            "ASSURED"
        } else {
            "REPLIED"
        };
        let l = found.entry(key(proto, state)).or_default();
        l.min = if l.entries == 0 {
            timeout
        } else {
            l.min.min(timeout)
        };
        l.max = l.max.max(timeout);
        l.entries += 1;
    }
    found
}

//! ctscope's ctnetlink table commands side by side with conntrack(8) in a fresh namespace
//! pair: `list` (text and JSON) vs `conntrack -L`, `count` vs `-C`, `stats` vs `-S`,
//! `delete` vs `-D` and its effect on `-L`, `flush` vs `-C`, and the error exits.
//!
//! The table holds UDP flows to two ports and entries inserted with `conntrack -I`
//! (ICMP, ICMPv6, IPv6 UDP, TCP ESTABLISHED with a zone and a mark, TCP TIME_WAIT) so every
//! output form is covered without depending on ping or IPv6 routing. Timeouts are long
//! enough that nothing expires while the outputs are compared.

use std::{
    collections::BTreeSet,
    net::SocketAddrV4,
    process::{Command, Output},
};

use ctscope_tests::{ctscope, netns::Netns, traffic};
use serde_json::Value;

use crate::common::{Ctx, UDP_PORT, Watch};

/// A second UDP destination port, whose flows `delete` removes.
const UDP_PORT2: u16 = UDP_PORT + 1;

/// Entries inserted through ctnetlink: one per output form traffic does not make.
const INSERTS: &[&[&str]] = &[
    &[
        "-p",
        "icmp",
        "-s",
        "10.99.0.1",
        "-d",
        "10.99.0.2",
        "--icmp-type",
        "8",
        "--icmp-code",
        "0",
        "--icmp-id",
        "77",
    ],
    &[
        "-p",
        "icmpv6",
        "-s",
        "fd00:99::1",
        "-d",
        "fd00:99::2",
        "--icmpv6-type",
        "128",
        "--icmpv6-code",
        "0",
        "--icmpv6-id",
        "78",
    ],
    &[
        "-p",
        "udp",
        "-s",
        "fd00:99::1",
        "-d",
        "fd00:99::2",
        "--sport",
        "4000",
        "--dport",
        "53",
    ],
    &[
        "-p",
        "tcp",
        "-s",
        "10.99.0.1",
        "-d",
        "10.99.0.2",
        "--sport",
        "1000",
        "--dport",
        "80",
        "--state",
        "ESTABLISHED",
        "-u",
        "SEEN_REPLY,ASSURED",
        "--zone",
        "5",
        "-m",
        "7",
    ],
    // TIME_WAIT inserted rather than reached by live connections: under emulation the
    // kernel sometimes ends a closed connection in CLOSE instead, and the entry vanishes.
    &[
        "-p",
        "tcp",
        "-s",
        "10.99.0.1",
        "-d",
        "10.99.0.2",
        "--sport",
        "1001",
        "--dport",
        "80",
        "--state",
        "TIME_WAIT",
        "-u",
        "SEEN_REPLY,ASSURED",
    ],
];

/// A namespace pair whose client table holds every kind of entry above.
struct Table {
    ctx: Ctx,
    /// Entries in the table after [`Table::fill`].
    entries: usize,
}

impl Table {
    fn fill(subnet: u8) -> Self {
        let ctx = Ctx::new(Watch::KernelOnly, subnet, |_| {});
        let p = &ctx.pair;
        let sinks: Vec<_> = [UDP_PORT, UDP_PORT2]
            .into_iter()
            .map(|port| traffic::UdpSink::bind(&p.s, SocketAddrV4::new(p.s_addr, port)))
            .collect();
        for (dport, first) in [(UDP_PORT, 23000), (UDP_PORT2, 23100)] {
            let ports = traffic::ports(first, 3);
            let dst = SocketAddrV4::new(p.s_addr, dport);
            for r in traffic::udp_flows(&p.c, p.c_addr, &ports, dst) {
                r.unwrap_or_else(|e| panic!("UDP flow to {dst}: {e}"));
            }
        }
        drop(sinks);
        for args in INSERTS {
            let mut argv = vec!["conntrack", "-I", "-t", "600"];
            argv.extend_from_slice(args);
            p.c.exec(&argv);
        }
        let entries = 6 + INSERTS.len();
        Table { ctx, entries }
    }

    fn ns(&self) -> &Netns {
        &self.ctx.pair.c
    }

    /// `ctscope ARGS --netns <c>`, required to succeed; returns stdout.
    fn ctscope(&self, args: &[&str]) -> String {
        let out = self.ctscope_output(args);
        assert!(
            out.status.success(),
            "ctscope {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ctscope_output(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--netns", self.ns().name()]);
        run_ctscope(&all)
    }

    /// `conntrack ARGS` inside c, required to succeed; returns stdout.
    fn conntrack(&self, args: &[&str]) -> String {
        let mut argv = vec!["conntrack"];
        argv.extend_from_slice(args);
        self.ns().exec(&argv)
    }
}

pub fn run_ctscope(args: &[&str]) -> Output {
    let bin = ctscope::binary_or_panic();
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// `conntrack -L` lines without the timeout column (entries age between two listings),
/// sorted (the two dumps need not walk the hash table identically).
fn without_timeouts(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 2 && fields[2].bytes().all(|b| b.is_ascii_digit()) {
                fields.remove(2);
            }
            fields.join(" ")
        })
        .collect();
    lines.sort();
    lines
}

/// The original tuple of a `conntrack -L` line: `proto src dst sport dport` or
/// `proto src dst type code id`.
fn text_tuple(line: &str) -> String {
    let mut key = vec![
        line.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    ];
    for name in ["src", "dst", "sport", "dport", "type", "code", "id"] {
        let prefix = format!("{name}=");
        // The first occurrence is the original direction.
        if let Some(v) = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&prefix))
        {
            key.push(v.to_owned());
        }
    }
    key.join(" ")
}

/// The same key from a `list --json` object.
fn json_tuple(entry: &Value) -> String {
    let o = &entry["orig"];
    let name = match entry["proto"].as_u64() {
        Some(1) => "icmp",
        Some(6) => "tcp",
        Some(17) => "udp",
        Some(58) => "icmpv6",
        other => panic!("unexpected proto {other:?} in {entry}"),
    };
    let mut key = vec![name.to_owned()];
    for field in ["src", "dst", "sport", "dport", "type", "code", "id"] {
        match &o[field] {
            Value::Null => {}
            Value::String(s) => key.push(s.clone()),
            v => key.push(v.to_string()),
        }
    }
    key.join(" ")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `list` text and JSON, and `list --all-netns`, against `conntrack -L`.
pub fn list() {
    let t = Table::fill(8);
    let theirs = t.conntrack(&["-L"]);
    let out = t.ctscope_output(&["list"]);
    assert!(out.status.success(), "ctscope list: {}", stderr(&out));
    let ours = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        without_timeouts(&ours),
        without_timeouts(&theirs),
        "ctscope list vs conntrack -L (timeouts removed)"
    );
    assert_eq!(without_timeouts(&ours).len(), t.entries, "entries:\n{ours}");
    assert!(
        stderr(&out).contains(&format!(
            "ctscope: {} flow entries have been shown.",
            t.entries
        )),
        "summary: {}",
        stderr(&out)
    );

    let json = t.ctscope(&["list", "--json"]);
    let entries: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    let from_json: BTreeSet<String> = entries.iter().map(json_tuple).collect();
    let from_text: BTreeSet<String> = theirs.lines().map(text_tuple).collect();
    assert_eq!(from_json, from_text, "list --json tuples vs conntrack -L");
    assert_eq!(entries.len(), t.entries);

    for (filter, theirs_filter) in [
        (
            &["-p", "udp", "--dport", "5301"][..],
            &["-p", "udp", "--dport", "5301"][..],
        ),
        (&["-f", "ipv6"][..], &["-f", "ipv6"][..]),
        (&["--zone", "5"][..], &["-w", "5"][..]),
        (&["--mark", "7"][..], &["-m", "7"][..]),
    ] {
        let mut ours_args = vec!["list"];
        ours_args.extend_from_slice(filter);
        let mut theirs_args = vec!["-L"];
        theirs_args.extend_from_slice(theirs_filter);
        assert_eq!(
            without_timeouts(&t.ctscope(&ours_args)),
            without_timeouts(&t.conntrack(&theirs_args)),
            "ctscope list {filter:?} vs conntrack -L {theirs_filter:?}"
        );
    }

    let all_json = run_ctscope(&["list", "--all-netns", "--json"]);
    let tagged = String::from_utf8_lossy(&all_json.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v["netns"] == t.ctx.inode)
        .count();
    assert_eq!(tagged, t.entries, "list --all-netns --json entries of c");

    let all = run_ctscope(&["list", "--all-netns"]);
    assert!(all.status.success(), "list --all-netns: {}", stderr(&all));
    let tag = format!(" netns={}", t.ctx.inode);
    let mine: Vec<&str> = std::str::from_utf8(&all.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|l| l.strip_suffix(&tag))
        .collect();
    assert_eq!(
        without_timeouts(&mine.join("\n")),
        without_timeouts(&theirs),
        "list --all-netns lines tagged{tag}"
    );
}

/// `count` vs `-C`, `stats` vs `-S` (after the traffic stopped).
pub fn count_and_stats() {
    let t = Table::fill(9);
    let theirs = t.conntrack(&["-C"]);
    assert_eq!(t.ctscope(&["count"]).trim(), theirs.trim(), "count vs -C");
    assert_eq!(theirs.trim(), t.entries.to_string());
    let json: Value = serde_json::from_str(&t.ctscope(&["count", "--json"])).expect("JSON");
    assert_eq!(json["count"], t.entries);

    let all = String::from_utf8_lossy(&run_ctscope(&["count", "--all-netns"]).stdout).into_owned();
    let want = format!("{} {} {}", t.ctx.inode, t.entries, t.ns().name());
    assert!(
        all.lines().any(|l| l == want),
        "count --all-netns has no line {want:?}:\n{all}"
    );

    // conntrack ends each line with a space; ctscope's own `stats` does not.
    let cpu_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("cpu="))
            .map(|l| l.trim_end().to_owned())
            .collect()
    };
    let ours = t.ctscope(&["stats"]);
    assert!(
        !ours.lines().any(|l| l.ends_with(' ')),
        "stats lines end without a space:\n{ours:?}"
    );
    let theirs = t.conntrack(&["-S"]);
    assert!(!cpu_lines(&theirs).is_empty(), "conntrack -S:\n{theirs}");
    assert_eq!(
        cpu_lines(&ours),
        cpu_lines(&theirs),
        "stats vs conntrack -S"
    );
    assert!(
        ours.lines()
            .any(|l| l.starts_with(&format!("entries={} max_entries=", t.entries))),
        "stats has no entries line:\n{ours}"
    );

    let json: Value = serde_json::from_str(&t.ctscope(&["stats", "--json"])).expect("JSON");
    let cpus = json["cpus"].as_array().expect("cpus");
    assert_eq!(cpus.len(), cpu_lines(&theirs).len(), "one object per CPU");
    let insert_sum: u64 = cpus.iter().map(|c| c["insert"].as_u64().unwrap_or(0)).sum();
    assert_eq!(json["totals"]["insert"], insert_sum, "totals: {json}");
    assert_eq!(json["entries"], t.entries);
}

/// `delete` vs `-D` and their effect on `-L`; `flush -f ipv6` then `flush` vs `-C`.
pub fn delete_and_flush() {
    let t = Table::fill(10);
    let before = without_timeouts(&t.conntrack(&["-L"]));
    let out = t.ctscope_output(&["delete", "-p", "udp", "--dport", "5301"]);
    assert!(out.status.success(), "ctscope delete: {}", stderr(&out));
    assert!(
        stderr(&out).contains("ctscope: 3 flow entries have been deleted."),
        "{}",
        stderr(&out)
    );
    let expected: Vec<String> = before
        .iter()
        .filter(|l| !(l.starts_with("udp ") && l.contains(" dport=5301 ")))
        .cloned()
        .collect();
    assert_eq!(expected.len(), before.len() - 3);
    assert_eq!(
        without_timeouts(&t.conntrack(&["-L"])),
        expected,
        "conntrack -L after ctscope delete"
    );

    // The same again finds nothing: exit 1, like conntrack -D.
    let again = t.ctscope_output(&["delete", "-p", "udp", "--dport", "5301"]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("no conntrack entry matched"));
    let theirs = t
        .ns()
        .exec_output(&["conntrack", "-D", "-p", "udp", "--dport", "5301"]);
    assert_eq!(theirs.status.code(), Some(1), "conntrack -D with no match");

    // conntrack -D the other port; ctscope list sees the same effect.
    let d = t
        .ns()
        .exec_output(&["conntrack", "-D", "-p", "udp", "--dport", "5300"]);
    assert!(d.status.success(), "conntrack -D: {}", stderr(&d));
    assert_eq!(
        without_timeouts(&t.ctscope(&["list"])),
        without_timeouts(&t.conntrack(&["-L"])),
        "ctscope list after conntrack -D"
    );

    let ipv4 = t.conntrack(&["-L", "-f", "ipv4"]);
    t.ctscope(&["flush", "-f", "ipv6"]);
    assert_eq!(
        t.conntrack(&["-L", "-f", "ipv6"]).trim(),
        "",
        "after flush -f ipv6"
    );
    assert_eq!(
        without_timeouts(&t.conntrack(&["-L", "-f", "ipv4"])),
        without_timeouts(&ipv4),
        "flush -f ipv6 kept the IPv4 entries"
    );
    let out = t.ctscope_output(&["flush"]);
    assert!(out.status.success(), "ctscope flush: {}", stderr(&out));
    assert!(stderr(&out).contains("table has been emptied"));
    assert_eq!(t.conntrack(&["-C"]).trim(), "0", "conntrack -C after flush");
    assert_eq!(t.ctscope(&["count"]).trim(), "0");
}

/// Error exits: unknown namespace 1, delete without filter 2, port out of range 2.
pub fn errors() {
    let name = "ctst-no-such-namespace";
    for args in [
        &["list", "--netns", name][..],
        &["count", "--netns", name][..],
    ] {
        let out = run_ctscope(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "ctscope {args:?}: a usage error"
        );
        assert!(stderr(&out).contains(name), "names it: {}", stderr(&out));
    }
    let out = run_ctscope(&["delete"]);
    assert_eq!(out.status.code(), Some(2), "delete without a filter");
    assert!(stderr(&out).contains("ctscope flush"), "{}", stderr(&out));
    for args in [
        &["list", "--dport", "70000"][..],
        &["delete", "--sport", "65536"][..],
        &["list", "-s", "10.0.0"][..],
        &["delete", "-f", "ipv4", "-d", "::1"][..],
    ] {
        let out = run_ctscope(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "ctscope {args:?}: {}",
            stderr(&out)
        );
    }
}

//! `ctscope timeouts`' report of one namespace: the timeout sysctls, the dump per protocol
//! and state beside the sysctl that governs it, lifetimes of ended flows, and findings;
//! as aligned text or one JSON object.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::Serialize;

use crate::{
    diagnose::{Evidence, Finding, census::StateCount},
    lifetimes::{Histogram, Lifetimes},
    render::findings::{block, header},
    sys::workload::Workload,
};

/// One namespace's report (`--json`: one object per line).
#[derive(Debug, Serialize)]
pub struct Report {
    pub netns: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(flatten)]
    pub workload: Workload,
    /// Entries in the dump (or rows in the agent's table).
    pub dumped: u64,
    /// The `nf_conntrack_*timeout*` sysctls, `nf_conntrack_max` and `nf_conntrack_count`.
    pub sysctls: BTreeMap<String, u64>,
    /// The dump (or the agent's table) per protocol and state.
    pub table: Vec<StateRow>,
    /// Absent when no agent collects them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetimes: Option<Lifetimes>,
    pub findings: Vec<Finding>,
    /// What the findings were drawn from; the text header.
    #[serde(skip)]
    pub evidence: Evidence,
}

/// The entries of one protocol and state, and the timeout that governs them.
#[derive(Debug, PartialEq, Serialize)]
pub struct StateRow {
    pub proto: String,
    pub state: String,
    pub entries: u64,
    /// The sysctl that sets these entries' timeout, when this kernel has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysctl: Option<String>,
    /// Its value in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Seconds the entries have left.
    pub remaining: Histogram,
}

/// The sysctls the report shows: every timeout, the limit and the count.
pub fn shown(sysctls: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let wanted =
        |k: &str| k.contains("timeout") || k == "nf_conntrack_max" || k == "nf_conntrack_count";
    sysctls
        .iter()
        .filter(|(k, _)| wanted(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The entries per protocol and state as counted (sorted by both), each beside the
/// sysctl that governs it.
pub fn rows(states: Vec<StateCount>, sysctls: &BTreeMap<String, u64>) -> Vec<StateRow> {
    states
        .into_iter()
        .map(|s| {
            let sysctl = governing(&s.proto, &s.state, sysctls);
            StateRow {
                timeout: sysctl.as_ref().and_then(|k| sysctls.get(k).copied()),
                sysctl,
                proto: s.proto,
                state: s.state,
                entries: s.entries,
                remaining: s.remaining,
            }
        })
        .collect()
}

/// The sysctl that sets the timeout of `proto` entries in `state`, when this kernel has
/// it. UDP (and UDP-Lite, which shares its timeouts) and GRE use their stream timeout
/// once assured; a TCP entry with retransmissions or unacknowledged data gets the
/// shorter `tcp_timeout_max_retrans` / `tcp_timeout_unacknowledged` instead.
fn governing(proto: &str, state: &str, sysctls: &BTreeMap<String, u64>) -> Option<String> {
    let name = match (proto, state) {
        ("tcp" | "sctp" | "dccp", _) => {
            format!("nf_conntrack_{proto}_timeout_{}", state.to_lowercase())
        }
        ("udp" | "udplite", "ASSURED") => "nf_conntrack_udp_timeout_stream".into(),
        ("udp" | "udplite", _) => "nf_conntrack_udp_timeout".into(),
        ("gre", "UNREPLIED") => "nf_conntrack_gre_timeout".into(),
        ("gre", _) => "nf_conntrack_gre_timeout_stream".into(),
        ("icmp" | "icmpv6", _) => format!("nf_conntrack_{proto}_timeout"),
        _ => "nf_conntrack_generic_timeout".into(),
    };
    sysctls.contains_key(&name).then_some(name)
}

pub fn write(out: &mut impl Write, r: &Report, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")
    } else {
        out.write_all(text(r).as_bytes())
    }
}

const NO_AGENT: &str = "lifetimes of ended flows: run `ctscope watch` (the agent) to collect them";

/// The header, the sysctls, the table, the lifetimes, then one block per finding.
fn text(r: &Report) -> String {
    let mut s = header(&r.evidence);
    s.push_str("\ntimeout sysctls (seconds):\n");
    let sysctls: Vec<Vec<String>> = r
        .sysctls
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    s.push_str(&align(&sysctls));
    if r.table.is_empty() {
        s.push_str("\nin the table now: no entries\n");
    } else {
        s.push_str("\nin the table now (seconds left):\n");
        s.push_str(&align(&table_cells(&r.table)));
    }
    match &r.lifetimes {
        None => s.push_str(&format!("\n{NO_AGENT}\n")),
        Some(l) if l.is_empty() => s.push_str("\nlifetimes of ended flows: none ended yet\n"),
        Some(l) => {
            s.push_str("\nlifetimes of ended flows (seconds lived):\n");
            s.push_str(&align(&lifetime_cells(l)));
        }
    }
    for f in &r.findings {
        s.push_str(&block(f));
    }
    s.push('\n');
    s
}

/// A header row and one row per protocol and state.
fn table_cells(rows: &[StateRow]) -> Vec<Vec<String>> {
    let head = [
        "PROTO", "STATE", "ENTRIES", "MIN", "P50", "P90", "MAX", "TIMEOUT", "SYSCTL", "BUCKETS",
    ];
    let mut cells = vec![head.map(String::from).to_vec()];
    for r in rows {
        let mut row = vec![r.proto.clone(), r.state.clone(), r.entries.to_string()];
        row.extend(spread(&r.remaining));
        row.push(r.timeout.map_or("-".into(), |t| t.to_string()));
        row.push(r.sysctl.clone().unwrap_or_else(|| "-".into()));
        row.push(buckets(&r.remaining));
        cells.push(row);
    }
    cells
}

fn lifetime_cells(l: &Lifetimes) -> Vec<Vec<String>> {
    let head = [
        "PROTO", "STATE", "FLOWS", "MIN", "P50", "P90", "MAX", "MEAN", "BUCKETS",
    ];
    let mut cells = vec![head.map(String::from).to_vec()];
    for (proto, state, h) in l.iter() {
        let mut row = vec![proto.into(), state.into(), h.count.to_string()];
        row.extend(spread(h));
        row.push(h.mean().map_or("-".into(), secs));
        row.push(buckets(h));
        cells.push(row);
    }
    cells
}

/// Min, p50, p90, max (percentiles: the upper bound of their log2 bucket).
fn spread(h: &Histogram) -> [String; 4] {
    if h.count == 0 {
        return ["-", "-", "-", "-"].map(String::from);
    }
    let q = |q| h.quantile(q).map_or("-".into(), secs);
    [secs(h.min), q(0.5), q(0.9), secs(h.max)]
}

/// The non-empty buckets: `LOW-HIGH:COUNT ...` (seconds, high excluded).
fn buckets(h: &Histogram) -> String {
    let parts: Vec<String> = h
        .ranges()
        .map(|(lo, hi, n)| format!("{lo}-{hi}:{n}"))
        .collect();
    parts.join(" ")
}

/// Whole seconds without decimals, others with one.
fn secs(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Rows indented by two spaces, columns padded to their widest cell; a column with a
/// number in it is right-aligned, header included.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let column = |c: usize| rows.iter().filter_map(move |r| r.get(c));
    let widths: Vec<usize> = (0..cols)
        .map(|c| column(c).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let numeric: Vec<bool> = (0..cols)
        .map(|c| column(c).any(|s| s.parse::<f64>().is_ok()))
        .collect();
    let mut s = String::new();
    for row in rows {
        let mut line = String::new();
        for ((cell, &w), &right) in row.iter().zip(&widths).zip(&numeric) {
            if right {
                line.push_str(&format!("  {cell:>w$}"));
            } else {
                line.push_str(&format!("  {cell:<w$}"));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use ct_netlink::{Entry, Status, proto};

    use super::*;
    use crate::{
        diagnose::{Composition, census::Census, rules},
        lifetimes,
    };

    fn rows(dump: &[Entry], sysctls: &BTreeMap<String, u64>) -> Vec<StateRow> {
        super::rows(Census::of(dump).states, sysctls)
    }

    fn entry(p: u8, status: u32, timeout: u32) -> Entry {
        let mut e = lifetimes::tests::entry(p, status);
        e.timeout = Some(timeout);
        e
    }

    fn established(timeout: u32) -> Entry {
        let mut e = lifetimes::tests::tcp("ESTABLISHED");
        e.timeout = Some(timeout);
        e
    }

    fn sysctls() -> BTreeMap<String, u64> {
        [
            ("nf_conntrack_count", 5),
            ("nf_conntrack_max", 100),
            ("nf_conntrack_buckets", 64),
            ("nf_conntrack_tcp_timeout_established", 1234),
            ("nf_conntrack_udp_timeout", 37),
            ("nf_conntrack_udp_timeout_stream", 120),
            ("nf_conntrack_generic_timeout", 600),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    #[test]
    fn rows_count_entries_and_their_seconds_left_per_state() {
        let dump = [
            entry(proto::UDP, 0, 36),
            entry(proto::UDP, 0, 3),
            entry(proto::UDP, Status::SEEN_REPLY, 20),
            established(1200),
            entry(proto::GRE, 0, 30),
        ];
        let rows = rows(&dump, &sysctls());
        let keys: Vec<_> = rows
            .iter()
            .map(|r| (r.proto.as_str(), r.state.as_str(), r.entries))
            .collect();
        assert_eq!(
            keys,
            [
                ("gre", "UNREPLIED", 1),
                ("tcp", "ESTABLISHED", 1),
                ("udp", "REPLIED", 1),
                ("udp", "UNREPLIED", 2)
            ]
        );
        let unreplied = &rows[3];
        assert_eq!(
            unreplied.sysctl.as_deref(),
            Some("nf_conntrack_udp_timeout")
        );
        assert_eq!(unreplied.timeout, Some(37));
        assert_eq!(unreplied.remaining.count, 2);
        assert_eq!(
            (unreplied.remaining.min, unreplied.remaining.max),
            (3.0, 36.0)
        );
        assert_eq!(unreplied.remaining.buckets, [0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(rows[1].timeout, Some(1234));
        assert_eq!(rows[2].sysctl.as_deref(), Some("nf_conntrack_udp_timeout"));
        assert_eq!(rows[0].sysctl, None, "no GRE sysctl on this kernel");
    }

    #[test]
    fn entries_without_a_timeout_count_but_have_no_seconds_left() {
        let mut e = entry(proto::UDP, 0, 0);
        e.timeout = None;
        let rows = rows(&[e], &sysctls());
        assert_eq!((rows[0].entries, rows[0].remaining.count), (1, 0));
        assert_eq!(spread(&rows[0].remaining), ["-", "-", "-", "-"]);
    }

    #[test]
    fn governing_sysctl_per_protocol_and_state() {
        let all: BTreeMap<String, u64> = [
            "nf_conntrack_tcp_timeout_time_wait",
            "nf_conntrack_udp_timeout",
            "nf_conntrack_udp_timeout_stream",
            "nf_conntrack_gre_timeout",
            "nf_conntrack_gre_timeout_stream",
            "nf_conntrack_icmpv6_timeout",
            "nf_conntrack_sctp_timeout_shutdown_recd",
            "nf_conntrack_dccp_timeout_timewait",
            "nf_conntrack_generic_timeout",
        ]
        .into_iter()
        .map(|k| (k.to_owned(), 1))
        .collect();
        let cases = [
            (
                "tcp",
                "TIME_WAIT",
                Some("nf_conntrack_tcp_timeout_time_wait"),
            ),
            ("tcp", "LISTEN", None), // SYN_SENT2 has no sysctl
            ("udp", "UNREPLIED", Some("nf_conntrack_udp_timeout")),
            ("udp", "REPLIED", Some("nf_conntrack_udp_timeout")),
            (
                "udplite",
                "ASSURED",
                Some("nf_conntrack_udp_timeout_stream"),
            ),
            ("gre", "UNREPLIED", Some("nf_conntrack_gre_timeout")),
            ("gre", "ASSURED", Some("nf_conntrack_gre_timeout_stream")),
            ("icmpv6", "REPLIED", Some("nf_conntrack_icmpv6_timeout")),
            ("icmp", "REPLIED", None), // not in this kernel's list
            (
                "sctp",
                "SHUTDOWN_RECD",
                Some("nf_conntrack_sctp_timeout_shutdown_recd"),
            ),
            (
                "dccp",
                "TIMEWAIT",
                Some("nf_conntrack_dccp_timeout_timewait"),
            ),
            ("unknown", "UNREPLIED", Some("nf_conntrack_generic_timeout")),
        ];
        for (proto, state, want) in cases {
            let got = governing(proto, state, &all);
            assert_eq!(got.as_deref(), want, "{proto} {state}");
        }
    }

    #[test]
    fn shows_timeouts_limit_and_count_only() {
        let keys: Vec<String> = shown(&sysctls()).into_keys().collect();
        assert!(!keys.contains(&"nf_conntrack_buckets".to_owned()));
        assert_eq!(keys.len(), 6);
    }

    fn report(lifetimes: Option<Lifetimes>) -> Report {
        let dump = [entry(proto::UDP, 0, 36)];
        let evidence = Evidence {
            netns: 9,
            sysctls: sysctls(),
            table: Composition::of(&dump),
            ..Evidence::default()
        };
        Report {
            netns: 9,
            names: Vec::new(),
            workload: Workload::default(),
            dumped: 1,
            sysctls: shown(&evidence.sysctls),
            table: rows(&dump, &evidence.sysctls),
            lifetimes,
            findings: rules::timeouts(&evidence),
            evidence,
        }
    }

    #[test]
    fn json_omits_lifetimes_without_an_agent() {
        let v = serde_json::to_value(report(None)).unwrap();
        assert!(v.get("lifetimes").is_none(), "{v}");
        assert!(v.get("evidence").is_none());
        assert_eq!(v["table"][0]["remaining"]["max"], 36.0);
        assert_eq!(v["sysctls"]["nf_conntrack_udp_timeout"], 37);
        let with = serde_json::to_value(report(Some(Lifetimes::default()))).unwrap();
        assert!(with["lifetimes"]["by_proto"].is_object(), "{with}");
    }

    #[test]
    fn text_aligns_the_table_and_says_where_lifetimes_come_from() {
        let t = text(&report(None));
        assert!(t.starts_with("netns=9 entries=5 max=100 dumped=1\n"), "{t}");
        assert!(t.contains(
            "  PROTO  STATE      ENTRIES  MIN  P50  P90  MAX  TIMEOUT  SYSCTL                    BUCKETS\n  \
             udp    UNREPLIED        1   36   36   36   36       37  nf_conntrack_udp_timeout  32-64:1\n"
        ), "{t}");
        assert!(
            t.contains("  nf_conntrack_udp_timeout                37\n"),
            "{t}"
        );
        assert!(t.contains(NO_AGENT), "{t}");
        let mut l = Lifetimes::default();
        l.record(&established(0), 90.5);
        let t = text(&report(Some(l)));
        assert!(!t.contains(NO_AGENT));
        assert!(
            t.contains("  tcp    ESTABLISHED      1  90.5  90.5  90.5  90.5  90.5  64-128:1\n"),
            "{t}"
        );
    }
}

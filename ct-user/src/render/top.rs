//! `ctscope top`'s ranking: entries counted per key (from dumps, or from the agent's
//! table) and written as `uniq -c`-style lines or one JSON object.

use std::collections::HashMap;

use ct_netlink::{Entry, proto};
use serde::{Deserialize, Serialize};

use crate::{
    lifetimes::state_label,
    sys::netns::{Tags, Who},
};

/// What `ctscope top` groups entries by (original direction).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TopBy {
    Src,
    Dst,
    Dport,
    Proto,
    State,
    Zone,
    Netns,
}

/// One key and how many entries have it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Row {
    key: String,
    count: u64,
    /// count / entries (0..1).
    share: f64,
    /// By namespace: who is in it ([`Top::tag_namespaces`]).
    #[serde(flatten)]
    who: Option<Who>,
}

/// `--json`: the ranking over every namespace read.
#[derive(Debug, Serialize, Deserialize)]
pub struct Top {
    pub by: String,
    /// Entries in the dumps (those without the key, e.g. ICMP for `dport`, included).
    pub entries: u64,
    /// Distinct keys.
    pub keys: usize,
    top: Vec<Row>,
}

/// Counts entries per key, over any number of namespaces.
pub struct Counter {
    by: TopBy,
    counts: HashMap<String, u64>,
    entries: u64,
}

impl Counter {
    pub fn new(by: TopBy) -> Self {
        Counter {
            by,
            counts: HashMap::new(),
            entries: 0,
        }
    }

    pub fn add(&mut self, e: &Entry, netns: u64) {
        self.entries += 1;
        if let Some(k) = key(e, self.by, netns) {
            *self.counts.entry(k).or_insert(0) += 1;
        }
    }

    /// The `n` biggest keys.
    pub fn top(self, n: usize) -> Top {
        Top {
            by: by_name(self.by).into(),
            entries: self.entries,
            keys: self.counts.len(),
            top: rank(self.counts, self.entries, n),
        }
    }
}

impl Top {
    /// By namespace: each row says who is in its namespace (its key is the inode).
    pub fn tag_namespaces(&mut self) {
        if self.by != by_name(TopBy::Netns) {
            return;
        }
        let mut tags = Tags::default();
        for row in &mut self.top {
            row.who = row.key.parse().ok().and_then(|i| tags.get(i).cloned());
        }
    }
}

/// The ranking as `top` prints it: one JSON object, or `uniq -c`-style lines.
pub fn render(top: &Top, json: bool) -> Vec<u8> {
    if json {
        let mut v = serde_json::to_vec(top).unwrap_or_default();
        v.push(b'\n');
        v
    } else {
        text(top).into_bytes()
    }
}

fn by_name(by: TopBy) -> &'static str {
    match by {
        TopBy::Src => "src",
        TopBy::Dst => "dst",
        TopBy::Dport => "dport",
        TopBy::Proto => "proto",
        TopBy::State => "state",
        TopBy::Zone => "zone",
        TopBy::Netns => "netns",
    }
}

/// The entry's key (original direction); `None` when it has none (no port for `dport`).
fn key(e: &Entry, by: TopBy, netns: u64) -> Option<String> {
    Some(match by {
        TopBy::Src => e.orig.src.to_string(),
        TopBy::Dst => e.orig.dst.to_string(),
        // GRE keys also land in the port fields; conntrack does not print them as ports.
        TopBy::Dport if has_ports(e.proto) => e.orig.dst_port?.to_string(),
        TopBy::Dport => return None,
        TopBy::Proto => proto::name(e.proto).to_owned(),
        TopBy::State => format!("{}/{}", proto::name(e.proto), state_label(e)),
        TopBy::Zone => e.zone.unwrap_or(0).to_string(),
        TopBy::Netns => netns.to_string(),
    })
}

fn has_ports(p: u8) -> bool {
    matches!(
        p,
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP
    )
}

/// The `n` biggest keys, biggest first, ties by key.
fn rank(counts: HashMap<String, u64>, entries: u64, n: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = counts
        .into_iter()
        .map(|(key, count)| Row {
            share: crate::diagnose::ratio(count, entries),
            key,
            count,
            who: None,
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    rows.truncate(n);
    rows
}

/// `uniq -c` lines with the share: `  COUNT  SHARE%  KEY`.
fn text(top: &Top) -> String {
    top.top
        .iter()
        .map(|r| format!("{:>8} {:>6.1}%  {}\n", r.count, r.share * 100.0, r.key))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ct_netlink::{Status, Tuple};

    use super::*;

    fn udp(src: u8, dport: u16, status: u32) -> Entry {
        let s = IpAddr::V4(Ipv4Addr::new(10, 0, 0, src));
        let d = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99));
        let orig = Tuple::ports(proto::UDP, s, d, 40000, dport);
        let mut e = Entry::new(orig.clone(), orig.inverted());
        e.status = Status(status);
        e
    }

    #[test]
    fn keys_by_field() {
        let e = udp(1, 53, 0);
        assert_eq!(key(&e, TopBy::Src, 5).unwrap(), "10.0.0.1");
        assert_eq!(key(&e, TopBy::Dst, 5).unwrap(), "10.0.0.99");
        assert_eq!(key(&e, TopBy::Dport, 5).unwrap(), "53");
        assert_eq!(key(&e, TopBy::Proto, 5).unwrap(), "udp");
        assert_eq!(key(&e, TopBy::State, 5).unwrap(), "udp/UNREPLIED");
        assert_eq!(key(&e, TopBy::Zone, 5).unwrap(), "0");
        assert_eq!(key(&e, TopBy::Netns, 5).unwrap(), "5");
        let assured = udp(1, 53, Status::SEEN_REPLY | Status::ASSURED);
        assert_eq!(key(&assured, TopBy::State, 5).unwrap(), "udp/ASSURED");
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let icmp = Tuple::icmp(a, a, 8, 0, 1);
        let ping = Entry::new(icmp.clone(), icmp.inverted());
        assert_eq!(key(&ping, TopBy::Dport, 5), None);
    }

    #[test]
    fn rank_sorts_truncates_and_shares() {
        let counts = HashMap::from([("b".into(), 2), ("a".into(), 2), ("c".into(), 6)]);
        let rows = rank(counts, 10, 2);
        let got: Vec<_> = rows.iter().map(|r| (r.key.as_str(), r.count)).collect();
        assert_eq!(got, [("c", 6), ("a", 2)]);
        assert_eq!(rows[0].share, 0.6);
        let t = Top {
            by: "src".into(),
            entries: 10,
            keys: 3,
            top: rows,
        };
        assert_eq!(text(&t), "       6   60.0%  c\n       2   20.0%  a\n");
    }
}

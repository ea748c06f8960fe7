//! What one namespace's table holds, counted entry by entry: the [`Composition`] that
//! `diagnose` reads, and per protocol and state the entries and the seconds they have
//! left (`timeouts`' table). The CLI counts a ctnetlink dump; the agent (`ctscope watch`)
//! counts its rows the same way and sends the [`Census`], so a million entries need no
//! dump of seconds.

use std::collections::BTreeMap;

use ct_netlink::{Entry, Status, proto};
use serde::{Deserialize, Serialize};

use super::Composition;
use crate::lifetimes::{Histogram, state_label};

/// One namespace's table, summed (the agent's `census` answer carries it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Census {
    pub composition: Composition,
    /// Per protocol and state, sorted by both.
    pub states: Vec<StateCount>,
}

/// The entries of one protocol and [`state_label`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateCount {
    pub proto: String,
    pub state: String,
    pub entries: u64,
    /// Seconds left, of the entries that have a timeout.
    pub remaining: Histogram,
}

impl Census {
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Self {
        let mut c = Counter::default();
        entries.into_iter().for_each(|e| c.add(e));
        c.finish()
    }
}

/// Counts entries one at a time into a [`Census`]. Keys are the kernel's static names,
/// so an entry costs a few comparisons and no allocation: the agent counts a million
/// rows in its loop.
#[derive(Debug, Default)]
pub struct Counter {
    /// Everything but `by_proto` and `tcp_states`, which [`Counter::finish`] fills.
    composition: Composition,
    tcp_states: BTreeMap<&'static str, u64>,
    states: BTreeMap<(&'static str, &'static str), (u64, Histogram)>,
}

impl Counter {
    pub fn add(&mut self, e: &Entry) {
        let c = &mut self.composition;
        c.dumped += 1;
        let udp = e.proto == proto::UDP;
        c.udp_unreplied += u64::from(udp && e.status.is_unreplied());
        c.dns_udp += u64::from(udp && e.orig.dst_port == Some(53));
        c.src_nat += u64::from(e.status.contains(Status::SRC_NAT));
        c.dst_nat += u64::from(e.status.contains(Status::DST_NAT));
        c.with_helper += u64::from(e.helper.is_some());
        if let Some(tcp) = &e.tcp {
            *self.tcp_states.entry(tcp.state.name()).or_default() += 1;
        }
        let (count, left) = self
            .states
            .entry((proto::name(e.proto), state_label(e)))
            .or_default();
        *count += 1;
        if let Some(t) = e.timeout {
            left.add(f64::from(t));
        }
    }

    pub fn finish(self) -> Census {
        let mut composition = self.composition;
        composition.tcp_states = owned(self.tcp_states);
        let mut states = Vec::with_capacity(self.states.len());
        for ((proto, state), (entries, remaining)) in self.states {
            *composition.by_proto.entry(proto.to_owned()).or_default() += entries;
            states.push(StateCount {
                proto: proto.to_owned(),
                state: state.to_owned(),
                entries,
                remaining,
            });
        }
        Census {
            composition,
            states,
        }
    }
}

fn owned(counts: BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    counts.into_iter().map(|(k, n)| (k.to_owned(), n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifetimes::tests::{entry, tcp};

    fn timed(mut e: Entry, timeout: Option<u32>) -> Entry {
        e.timeout = timeout;
        e
    }

    #[test]
    fn counts_protocols_states_and_seconds_left() {
        let mut helped = entry(proto::TCP, Status::SEEN_REPLY);
        helped.helper = Some("ftp".into());
        let table = [
            timed(entry(proto::UDP, 0), Some(36)),
            timed(entry(proto::UDP, Status::SRC_NAT), Some(3)),
            timed(entry(proto::UDP, Status::SEEN_REPLY), None),
            timed(tcp("ESTABLISHED"), Some(1200)),
            timed(tcp("TIME_WAIT"), Some(100)),
            timed(tcp("ESTABLISHED"), Some(9)),
            helped,
            timed(entry(proto::GRE, Status::DST_NAT), Some(30)),
        ];
        let c = Census::of(&table);
        let m = &c.composition;
        assert_eq!(m.dumped, 8);
        assert_eq!(
            m.by_proto,
            BTreeMap::from([("gre".into(), 1), ("tcp".into(), 4), ("udp".into(), 3)])
        );
        assert_eq!(
            m.tcp_states,
            BTreeMap::from([("ESTABLISHED".into(), 2), ("TIME_WAIT".into(), 1)]),
            "a TCP entry without TCP info has no TCP state"
        );
        let scalars = (
            m.udp_unreplied,
            m.dns_udp,
            m.src_nat,
            m.dst_nat,
            m.with_helper,
        );
        assert_eq!(scalars, (2, 3, 1, 1, 1), "port 53: lifetimes::tests::entry");
        let keys: Vec<_> = c
            .states
            .iter()
            .map(|s| (s.proto.as_str(), s.state.as_str(), s.entries))
            .collect();
        assert_eq!(
            keys,
            [
                ("gre", "UNREPLIED", 1),
                ("tcp", "ESTABLISHED", 2),
                ("tcp", "REPLIED", 1),
                ("tcp", "TIME_WAIT", 1),
                ("udp", "REPLIED", 1),
                ("udp", "UNREPLIED", 2),
            ]
        );
        let established = &c.states[1].remaining;
        assert_eq!(
            (established.count, established.min, established.max),
            (2, 9.0, 1200.0)
        );
        assert_eq!(
            c.states[4].remaining.count, 0,
            "no timeout, no seconds left"
        );
        assert_eq!(c.states[5].remaining.buckets, [0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn travels_as_json_unchanged() {
        let table = [
            timed(tcp("SYN_SENT"), Some(119)),
            timed(entry(proto::UDP, 0), Some(29)),
        ];
        let c = Census::of(&table);
        let back: Census = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(Census::of(&[]), Census::default());
    }
}

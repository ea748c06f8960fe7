//! Histograms of seconds per protocol and state: how long flows that ended lived
//! ([`Lifetimes`], filled by the agent from destroy events) and, in `ctscope timeouts`, how
//! long the entries in the table have left. Both key entries by [`state_label`].

use std::collections::BTreeMap;

use ct_netlink::{Entry, proto};
use serde::{Deserialize, Serialize};

/// The state an entry is counted under: the TCP, SCTP or DCCP state name, or for
/// protocols without states what conntrack's flags say (`UNREPLIED`, `REPLIED` — a reply
/// seen, not yet assured — or `ASSURED`).
pub fn state_label(e: &Entry) -> &'static str {
    if let Some(s) = e.tcp.as_ref().map(|t| t.state.name()) {
        return s;
    }
    if let Some(s) = e.sctp.as_ref().map(|t| t.state.name()) {
        return s;
    }
    if let Some(s) = e.dccp.as_ref().map(|t| t.state.name()) {
        return s;
    }
    match (e.status.is_unreplied(), e.status.is_assured()) {
        (true, _) => "UNREPLIED",
        (false, true) => "ASSURED",
        (false, false) => "REPLIED",
    }
}

/// Buckets a histogram can have: the last one, [2^31 s, ∞), is past any conntrack timeout.
const BUCKETS: usize = 33;

/// A log2 histogram of durations in seconds, with their exact count, sum, min and max.
///
/// `buckets[0]` counts values below 1 s, `buckets[i]` (i ≥ 1) those in [2^(i-1), 2^i) s;
/// trailing empty buckets are not stored. Negative values (an entry already expired)
/// count as 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub buckets: Vec<u64>,
}

impl Histogram {
    pub fn add(&mut self, secs: f64) {
        let secs = if secs > 0.0 { secs } else { 0.0 };
        if self.count == 0 || secs < self.min {
            self.min = secs;
        }
        if self.count == 0 || secs > self.max {
            self.max = secs;
        }
        self.count += 1;
        self.sum += secs;
        let i = bucket(secs);
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
    }

    /// Adds every value of `other`, as if each had been [`add`](Self::add)ed here.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        if self.count == 0 || other.max > self.max {
            self.max = other.max;
        }
        self.count += other.count;
        self.sum += other.sum;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    /// The value below which a fraction `q` of the values lie, as the upper bound of its
    /// bucket, kept within [min, max]; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        let i = self.buckets.iter().position(|&n| {
            seen += n;
            seen >= rank
        })?;
        Some(upper_bound(i).clamp(self.min, self.max))
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The first `n` buckets as (upper bound in seconds, count), empty ones included: a
    /// fixed layout, as Prometheus histograms want. A bound is exclusive (a value of
    /// exactly 2^i s counts in the next bucket), where Prometheus' `le` is inclusive.
    pub fn first_buckets(&self, n: usize) -> impl Iterator<Item = (f64, u64)> + '_ {
        (0..n).map(|i| (upper_bound(i), self.buckets.get(i).copied().unwrap_or(0)))
    }

    /// The non-empty buckets as (lower bound, upper bound, count), in seconds.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (lower_bound(i), upper_bound(i) as u64, *n))
    }
}

/// The bucket of a non-negative duration (whole seconds decide it).
fn bucket(secs: f64) -> usize {
    // `as` saturates: huge values land in the last bucket.
    let whole = secs as u64;
    (u64::BITS - whole.leading_zeros()).min(BUCKETS as u32 - 1) as usize
}

fn lower_bound(i: usize) -> u64 {
    if i == 0 { 0 } else { 1 << (i - 1) }
}

fn upper_bound(i: usize) -> f64 {
    (1u64 << i) as f64
}

/// How long flows that ended lived, per protocol name and [`state_label`] of their last
/// known state. The agent records one flow per destroy; `ctscope timeouts` shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifetimes {
    /// Protocol name (`tcp`, `udp`, ...) → state label → lifetimes in seconds.
    pub by_proto: BTreeMap<String, BTreeMap<String, Histogram>>,
}

impl Lifetimes {
    /// Records one flow that ended: `entry` is its last known state, `lived` its lifetime in seconds.
    pub fn record(&mut self, entry: &Entry, lived: f64) {
        self.by_proto
            .entry(proto::name(entry.proto).to_owned())
            .or_default()
            .entry(state_label(entry).to_owned())
            .or_default()
            .add(lived);
    }

    /// Adds every flow `other` recorded.
    pub fn merge(&mut self, other: &Lifetimes) {
        for (proto, state, h) in other.iter() {
            let mine = match self.by_proto.get_mut(proto) {
                Some(states) => states,
                None => self.by_proto.entry(proto.to_owned()).or_default(),
            };
            match mine.get_mut(state) {
                Some(m) => m.merge(h),
                None => {
                    mine.insert(state.to_owned(), h.clone());
                }
            }
        }
    }

    pub fn get(&self, proto: &str, state: &str) -> Option<&Histogram> {
        self.by_proto.get(proto)?.get(state)
    }

    /// Every (protocol, state, histogram), sorted by protocol then state.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Histogram)> {
        self.by_proto
            .iter()
            .flat_map(|(p, states)| states.iter().map(move |(s, h)| (p.as_str(), s.as_str(), h)))
    }

    pub fn is_empty(&self) -> bool {
        self.by_proto.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ct_netlink::{Status, TcpInfo, TcpState, Tuple};

    use super::*;

    /// An entry 10.0.0.1:40000 → 10.0.0.2:53 of protocol `p` with these status bits.
    pub(crate) fn entry(p: u8, status: u32) -> Entry {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let orig = Tuple::ports(p, a, b, 40000, 53);
        let mut e = Entry::new(orig.clone(), orig.inverted());
        e.status = Status(status);
        e
    }

    /// An assured TCP entry in `state`.
    pub(crate) fn tcp(state: &str) -> Entry {
        let mut e = entry(proto::TCP, Status::SEEN_REPLY | Status::ASSURED);
        e.tcp = Some(TcpInfo {
            state: TcpState::from_name(state).unwrap(),
            wscale_orig: None,
            wscale_reply: None,
            flags_orig: None,
            flags_reply: None,
        });
        e
    }

    #[test]
    fn state_label_of_stateful_and_stateless_protocols() {
        assert_eq!(state_label(&tcp("TIME_WAIT")), "TIME_WAIT");
        assert_eq!(state_label(&entry(proto::UDP, 0)), "UNREPLIED");
        assert_eq!(
            state_label(&entry(proto::UDP, Status::SEEN_REPLY)),
            "REPLIED"
        );
        let assured = entry(proto::UDP, Status::SEEN_REPLY | Status::ASSURED);
        assert_eq!(state_label(&assured), "ASSURED");
        // ASSURED without SEEN_REPLY (set through ctnetlink) is still unreplied.
        assert_eq!(
            state_label(&entry(proto::GRE, Status::ASSURED)),
            "UNREPLIED"
        );
    }

    #[test]
    fn buckets_are_log2_of_whole_seconds() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(0.99), 0);
        assert_eq!(bucket(1.0), 1);
        assert_eq!(bucket(1.5), 1);
        assert_eq!(bucket(2.0), 2);
        assert_eq!(bucket(3.9), 2);
        assert_eq!(bucket(4.0), 3);
        assert_eq!(bucket(432_000.0), 19, "5 days: [2^18, 2^19)");
        assert_eq!(bucket(1e300), BUCKETS - 1);
        assert_eq!((lower_bound(19), upper_bound(19)), (262_144, 524_288.0));
    }

    #[test]
    fn histogram_counts_sums_and_bounds() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in [30.0, 29.5, 3.0, -1.0] {
            h.add(v);
        }
        assert_eq!(h.count, 4);
        assert_eq!(h.sum, 62.5);
        assert_eq!((h.min, h.max), (0.0, 30.0), "negative counts as 0");
        assert_eq!(h.buckets, [1, 0, 1, 0, 0, 2]);
        let ranges: Vec<_> = h.ranges().collect();
        assert_eq!(ranges, [(0, 1, 1), (2, 4, 1), (16, 32, 2)]);
        assert_eq!(h.quantile(0.5), Some(4.0));
        assert_eq!(
            h.quantile(0.9),
            Some(30.0),
            "upper bound 32 kept within max"
        );
        assert_eq!(h.quantile(0.0), Some(1.0));
        assert_eq!(h.mean(), Some(15.625));
    }

    #[test]
    fn lifetimes_record_per_protocol_and_state() {
        let mut l = Lifetimes::default();
        assert!(l.is_empty());
        l.record(&entry(proto::UDP, 0), 30.2);
        l.record(&entry(proto::UDP, 0), 31.0);
        l.record(
            &entry(proto::UDP, Status::SEEN_REPLY | Status::ASSURED),
            180.0,
        );
        l.record(&tcp("TIME_WAIT"), 120.5);
        let unreplied = l.get("udp", "UNREPLIED").unwrap();
        assert_eq!((unreplied.count, unreplied.max), (2, 31.0));
        assert_eq!(l.get("udp", "ASSURED").unwrap().buckets[8], 1);
        assert_eq!(l.get("tcp", "TIME_WAIT").unwrap().count, 1);
        assert!(l.get("tcp", "ESTABLISHED").is_none());
        let keys: Vec<_> = l.iter().map(|(p, s, h)| (p, s, h.count)).collect();
        assert_eq!(
            keys,
            [
                ("tcp", "TIME_WAIT", 1),
                ("udp", "ASSURED", 1),
                ("udp", "UNREPLIED", 2)
            ]
        );
    }

    #[test]
    fn merging_equals_adding_every_value() {
        let (a, b) = ([0.5, 3.0, 40.0], [2.0, 700.0]);
        let mut all = Histogram::default();
        a.iter().chain(&b).for_each(|&v| all.add(v));
        let mut merged = Histogram::default();
        let mut other = Histogram::default();
        a.iter().for_each(|&v| merged.add(v));
        b.iter().for_each(|&v| other.add(v));
        merged.merge(&other);
        merged.merge(&Histogram::default());
        assert_eq!(merged, all);

        let mut l = Lifetimes::default();
        l.record(&tcp("CLOSE"), 10.0);
        let mut m = Lifetimes::default();
        m.record(&tcp("CLOSE"), 20.0);
        m.record(&entry(proto::UDP, 0), 30.0);
        l.merge(&m);
        assert_eq!(l.get("tcp", "CLOSE").map(|h| h.count), Some(2));
        assert_eq!(l.get("udp", "UNREPLIED").map(|h| h.sum), Some(30.0));
    }

    #[test]
    fn lifetimes_round_trip_through_json() {
        let mut l = Lifetimes::default();
        l.record(&tcp("CLOSE"), 10.0);
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["by_proto"]["tcp"]["CLOSE"]["count"], 1);
        let back: Lifetimes = serde_json::from_value(json).unwrap();
        assert_eq!(back, l);
    }
}

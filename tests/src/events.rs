//! Reading ctscope's JSON event objects (one per line of `ctscope events --json`).

use std::{fmt, net::IpAddr};

use serde_json::Value;

/// An event's `kind`: `new`, `destroy`, `insert_failed`, `clash_resolved`, `table_full`,
/// `early_drop` or `lost`.
pub fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or("")
}

/// Whether the event belongs to the namespace with this inode (`netns` field).
pub fn in_netns(e: &Value, inode: u64) -> bool {
    e["netns"].as_u64() == Some(inode)
}

/// Whether the event's `proto` is `name` (`udp`, `tcp`, ...), given by name or number.
pub fn is_proto(e: &Value, name: &str) -> bool {
    let number = match name {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "icmpv6" => 58,
        "sctp" => 132,
        _ => -1,
    };
    match &e["proto"] {
        Value::String(s) => s == name,
        Value::Number(n) => n.as_i64() == Some(number),
        _ => false,
    }
}

/// Events of `kind` in namespace `inode`, optionally only of protocol `proto`.
pub fn select<'a>(
    events: &'a [Value],
    kind_: &str,
    inode: u64,
    proto: Option<&str>,
) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| kind(e) == kind_ && in_netns(e, inode))
        .filter(|e| proto.is_none_or(|p| is_proto(e, p)))
        .collect()
}

/// Counts of each `field` value (`cause`, `reason`) among `events`, for messages.
pub fn histogram(events: &[&Value], field: &str) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in events {
        let value = e[field]
            .as_str()
            .map_or_else(|| e[field].to_string(), str::to_owned);
        *counts.entry(value).or_default() += 1;
    }
    format!("{counts:?}")
}

/// Panics if ctscope reported ring-buffer loss: exact counts are meaningless then.
pub fn assert_no_loss(events: &[Value]) {
    let lost: Vec<&Value> = events.iter().filter(|e| kind(e) == "lost").collect();
    assert!(
        lost.is_empty(),
        "ctscope lost events, counts cannot be exact: {lost:?}"
    );
}

/// A few events, one per line, for failure messages.
pub fn sample(events: &[&Value]) -> String {
    const MAX: usize = 8;
    let mut out: Vec<String> = events.iter().take(MAX).map(|e| e.to_string()).collect();
    if events.len() > MAX {
        out.push(format!("... {} more", events.len() - MAX));
    }
    out.join("\n")
}

/// Panics at the first of `events` that `check` rejects, naming it (`what` #index), why,
/// and the event itself: a per-event check says which event broke it.
pub fn assert_each(
    events: &[&Value],
    what: &str,
    mut check: impl FnMut(&Value) -> Result<(), String>,
) {
    for (i, e) in events.iter().enumerate() {
        if let Err(why) = check(e) {
            panic!("{what} #{i} of {}: {why}\n{e}", events.len());
        }
    }
}

/// A layer-4 tuple as ctscope prints `orig` and `reply`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    pub fn new(src: impl Into<IpAddr>, sport: u16, dst: impl Into<IpAddr>, dport: u16) -> Self {
        let (src, dst): (IpAddr, IpAddr) = (src.into(), dst.into());
        Tuple {
            src: src.to_string(),
            dst: dst.to_string(),
            sport,
            dport,
        }
    }

    /// The same flow seen from the other end (the reply tuple without NAT).
    pub fn reversed(&self) -> Self {
        Tuple {
            src: self.dst.clone(),
            dst: self.src.clone(),
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// Parses `{src, dst, sport, dport}`; `None` if a field is missing or malformed.
    pub fn from_json(v: &Value) -> Option<Self> {
        let port = |k: &str| v[k].as_u64().and_then(|p| u16::try_from(p).ok());
        Some(Tuple {
            src: v["src"].as_str()?.to_owned(),
            dst: v["dst"].as_str()?.to_owned(),
            sport: port("sport")?,
            dport: port("dport")?,
        })
    }

    /// `event[dir]` (`orig`, `reply`) as a tuple; panics with the event if malformed.
    pub fn of(event: &Value, dir: &str) -> Self {
        Self::from_json(&event[dir])
            .unwrap_or_else(|| panic!("event has no valid {dir:?} tuple: {event}"))
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

    #[test]
    fn tuples_and_filters() {
        let e = json!({"kind": "new", "proto": "udp", "netns": 7,
            "orig": {"src": "10.200.0.1", "dst": "10.200.0.2", "sport": 20000, "dport": 5300},
            "reply": {"src": "10.200.0.2", "dst": "10.200.0.1", "sport": 5300, "dport": 20000}});
        let orig = Tuple::of(&e, "orig");
        assert_eq!(
            orig,
            Tuple::new(
                Ipv4Addr::new(10, 200, 0, 1),
                20000,
                Ipv4Addr::new(10, 200, 0, 2),
                5300
            )
        );
        assert_eq!(Tuple::of(&e, "reply"), orig.reversed());
        let events = vec![e, json!({"kind": "new", "proto": 6, "netns": 7})];
        assert_eq!(select(&events, "new", 7, Some("udp")).len(), 1);
        assert_eq!(select(&events, "new", 7, Some("tcp")).len(), 1);
        assert_eq!(select(&events, "new", 8, None).len(), 0);
    }
}

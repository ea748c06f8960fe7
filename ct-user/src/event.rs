//! Decoded events: the raw `ct_common::Event` records turned into what users read.
//!
//! The JSON form is a protocol (README "Event stream"): one object per line, snake_case
//! fields, optional fields omitted rather than null. Add fields; never rename them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ct_common::{
    Cause, DestroyReason, Event, EventKind, FLAG_FROM_CTNETLINK, FLAG_HAS_WINNER, FLAG_UNVERIFIED,
    Tuple,
};
use ct_netlink::{Status, TcpState, proto};

use crate::clock::Clock;
use serde::{Deserialize, Serialize};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// One line of `ctscope events`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Record {
    Conntrack(Box<CtEvent>),
    Lost(Lost),
}

/// What a line of `ctscope events` is about: a conntrack event's kind, or `lost`. The
/// kinds `--kind` and the agent's `kinds` filter take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum RecordKind {
    New,
    Destroy,
    InsertFailed,
    ClashResolved,
    TableFull,
    EarlyDrop,
    /// Events ctscope could not deliver.
    Lost,
}

impl From<EventKind> for RecordKind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::New => Self::New,
            EventKind::Destroy => Self::Destroy,
            EventKind::InsertFailed => Self::InsertFailed,
            EventKind::ClashResolved => Self::ClashResolved,
            EventKind::TableFull => Self::TableFull,
            EventKind::EarlyDrop => Self::EarlyDrop,
        }
    }
}

impl RecordKind {
    /// The name on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self.event() {
            Some(kind) => kind.name(),
            None => "lost",
        }
    }

    /// The conntrack event kind; `None` for `lost`.
    pub fn event(self) -> Option<EventKind> {
        [
            EventKind::New,
            EventKind::Destroy,
            EventKind::InsertFailed,
            EventKind::ClashResolved,
            EventKind::TableFull,
            EventKind::EarlyDrop,
        ]
        .into_iter()
        .find(|&k| Self::from(k) == self)
    }
}

/// Events ctscope could not deliver: the ring buffer's, counted by the BPF side per
/// kind, or those of another stage.
#[derive(Clone, Debug, Serialize)]
pub struct Lost {
    pub ts: f64,
    /// Always [`RecordKind::Lost`].
    pub kind: RecordKind,
    pub lost_kind: LostKind,
    pub count: u64,
}

impl Lost {
    pub fn new(ts: f64, lost_kind: LostKind, count: u64) -> Self {
        Self {
            ts,
            kind: RecordKind::Lost,
            lost_kind,
            count,
        }
    }
}

/// What was lost: events of one kind the ring buffer could not take, or events of
/// every kind lost at another stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LostKind {
    Ring(EventKind),
    Other(LostAt),
}

/// Where events of every kind were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostAt {
    /// A ring-buffer loss counter that no kind uses.
    Unknown,
    /// The agent dropped them for a subscriber that did not read.
    AgentSubscriber,
    /// Tier 3: the ctnetlink socket's buffer overflowed.
    CtnetlinkOverrun,
}

impl LostKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ring(k) => k.name(),
            Self::Other(LostAt::Unknown) => "unknown",
            Self::Other(LostAt::AgentSubscriber) => "agent_subscriber",
            Self::Other(LostAt::CtnetlinkOverrun) => "ctnetlink_overrun",
        }
    }
}

/// For `reason: timeout`: which mechanism reaped the expired entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The gc worker.
    Gc,
    /// A packet or dump that found it expired.
    Lookup,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gc => "gc",
            Self::Lookup => "lookup",
        }
    }
}

/// A conntrack event.
#[derive(Clone, Debug, Serialize)]
pub struct CtEvent {
    /// Unix time in seconds.
    pub ts: f64,
    pub kind: EventKind,
    /// insert_failed, clash_resolved and table_full: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// destroy and early_drop: why. Never [`DestroyReason::TimeoutLookup`]: that is
    /// [`DestroyReason::Timeout`] with `via` [`Via::Lookup`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DestroyReason>,
    /// For `reason: "timeout"`: who reaped the expired entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    pub proto: Proto,
    /// IP protocol number.
    pub protonum: u8,
    pub family: &'static str,
    pub orig: Side,
    pub reply: Side,
    /// Serialized as the list of set flag names, as ct-netlink names them.
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<TcpState>,
    pub mark: u32,
    pub zone: u16,
    /// Inode of the entry's network namespace.
    pub netns: u32,
    /// Seconds before expiry at the time of the event (negative once expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Task in whose context the kernel ran the hook (0: softirq on an idle CPU).
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<Winner>,
    /// insert_failed and clash_resolved: the NAT mappings the entry had been given (the
    /// source SNAT picked, the destination DNAT picked), from its reply tuple.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nat: Vec<Nat>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_ctnetlink: bool,
    /// Address of the kernel's entry: its identity while it lives (not printed).
    #[serde(skip)]
    pub ct: u64,
    /// Tier 2: a candidate the kernel's counters could not confirm (its namespace's
    /// ctnetlink was unreachable); the cause or reason is the tracepoints' best guess.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
}

/// The entry already in the table that won a clash.
#[derive(Clone, Debug, Serialize)]
pub struct Winner {
    pub orig: Side,
    pub reply: Side,
}

/// A NAT mapping: what the original source (`snat`) or destination (`dnat`) became.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Nat {
    pub kind: NatKind,
    pub addr: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Nat {
    /// The mappings an entry's status says it has, read from its reply tuple.
    pub fn of(status: Status, reply: &Side) -> Vec<Nat> {
        let mut out = Vec::new();
        if status.contains(Status::SRC_NAT) {
            out.push(Nat {
                kind: NatKind::Snat,
                addr: reply.dst,
                port: reply.dport,
            });
        }
        if status.contains(Status::DST_NAT) {
            out.push(Nat {
                kind: NatKind::Dnat,
                addr: reply.src,
                port: reply.sport,
            });
        }
        out
    }
}

/// Which end of the original direction a NAT mapping rewrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    Snat,
    Dnat,
}

impl NatKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Snat => "snat",
            Self::Dnat => "dnat",
        }
    }
}

/// The protocol by name where it has one, else by number.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(untagged)]
pub enum Proto {
    Name(&'static str),
    Number(u8),
}

impl Proto {
    pub fn from_number(n: u8) -> Self {
        match proto::name(n) {
            "unknown" => Self::Number(n),
            name => Self::Name(name),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

/// One direction of a tuple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    pub src: IpAddr,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
}

impl From<&ct_netlink::Tuple> for Side {
    fn from(t: &ct_netlink::Tuple) -> Self {
        Side {
            src: t.src,
            dst: t.dst,
            sport: t.src_port,
            dport: t.dst_port,
            icmp_type: t.icmp_type,
            code: t.icmp_code,
            id: t.icmp_id,
        }
    }
}

impl Side {
    fn decode(t: &Tuple, family: u8, l4: u8) -> Self {
        let addr = |b: &[u8; 16]| -> IpAddr {
            if family == AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(*b))
            } else {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
        };
        // Ports sit in memory in network order; the raw u16 was read little-endian.
        let be = |v: u16| u16::from_be_bytes(v.to_le_bytes());
        let mut side = Side {
            src: addr(&t.src),
            dst: addr(&t.dst),
            sport: None,
            dport: None,
            icmp_type: None,
            code: None,
            id: None,
        };
        if l4 == proto::ICMP || l4 == proto::ICMPV6 {
            let [ty, code] = t.dport.to_le_bytes();
            side.icmp_type = Some(ty);
            side.code = Some(code);
            side.id = Some(be(t.sport));
        } else if has_ports(l4) {
            side.sport = Some(be(t.sport));
            side.dport = Some(be(t.dport));
        }
        side
    }
}

/// Protocols whose tuple carries ports.
fn has_ports(l4: u8) -> bool {
    matches!(
        l4,
        proto::TCP | proto::UDP | proto::DCCP | proto::SCTP | proto::UDPLITE
    )
}

/// Which mechanism reaped an expired entry, and the reason users see.
fn reason_and_via(r: DestroyReason) -> (DestroyReason, Option<Via>) {
    match r {
        DestroyReason::Timeout => (r, Some(Via::Gc)),
        DestroyReason::TimeoutLookup => (DestroyReason::Timeout, Some(Via::Lookup)),
        _ => (r, None),
    }
}

/// Decodes a raw record; `None` for a kind this build does not know.
pub fn decode(raw: &Event, clock: &Clock) -> Option<CtEvent> {
    let kind = EventKind::from_u8(raw.kind)?;
    let (cause, reason, via) = match kind {
        EventKind::InsertFailed | EventKind::ClashResolved | EventKind::TableFull => {
            (Some(Cause::from_u8(raw.cause)), None, None)
        }
        EventKind::Destroy | EventKind::EarlyDrop => {
            let (reason, via) = reason_and_via(DestroyReason::from_u8(raw.cause));
            (None, Some(reason), via)
        }
        EventKind::New => (None, None, None),
    };
    let family = raw.l3proto;
    let l4 = raw.l4proto;
    let winner = (raw.flags & FLAG_HAS_WINNER != 0).then(|| Winner {
        orig: Side::decode(&raw.winner_orig, family, l4),
        reply: Side::decode(&raw.winner_reply, family, l4),
    });
    let reply = Side::decode(&raw.reply, family, l4);
    let nat = match kind {
        EventKind::InsertFailed | EventKind::ClashResolved => Nat::of(Status(raw.status), &reply),
        _ => Vec::new(),
    };
    Some(CtEvent {
        ts: clock.unix_secs(raw.ts_ns),
        kind,
        cause,
        reason,
        via,
        proto: Proto::from_number(l4),
        protonum: l4,
        family: if family == AF_INET6 {
            "ipv6"
        } else if family == AF_INET {
            "ipv4"
        } else {
            "unknown"
        },
        orig: Side::decode(&raw.orig, family, l4),
        reply,
        status: Status(raw.status),
        tcp_state: (l4 == proto::TCP && kind != EventKind::TableFull)
            .then_some(TcpState(raw.tcp_state)),
        mark: raw.mark,
        zone: raw.zone,
        netns: raw.netns,
        timeout: if kind == EventKind::TableFull {
            None
        } else {
            clock.seconds(raw.timeout_jiffies)
        },
        pid: raw.pid,
        winner,
        nat,
        from_ctnetlink: raw.flags & FLAG_FROM_CTNETLINK != 0,
        unverified: raw.flags & FLAG_UNVERIFIED != 0,
        ct: raw.ct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_event() -> Event {
        let mut e = Event::zeroed();
        e.kind = EventKind::InsertFailed as u8;
        e.cause = Cause::NatPortClash as u8;
        e.l3proto = AF_INET;
        e.l4proto = 17;
        e.orig.src[..4].copy_from_slice(&[10, 200, 0, 2]);
        e.orig.dst[..4].copy_from_slice(&[10, 200, 0, 3]);
        e.orig.sport = u16::from_le_bytes(5353u16.to_be_bytes());
        e.orig.dport = u16::from_le_bytes(53u16.to_be_bytes());
        e.reply.src[..4].copy_from_slice(&[10, 200, 0, 3]);
        e.reply.dst[..4].copy_from_slice(&[10, 200, 0, 1]);
        e.reply.sport = u16::from_le_bytes(53u16.to_be_bytes());
        e.reply.dport = u16::from_le_bytes(40000u16.to_be_bytes());
        e.status = (1 << 4) | (1 << 7);
        e.timeout_jiffies = 7500;
        e.flags = FLAG_HAS_WINNER;
        e
    }

    #[test]
    fn decodes_ports_addresses_and_cause() {
        let clock = Clock {
            boot_to_unix_ns: 0,
            hz: 250,
        };
        let ev = decode(&udp_event(), &clock).unwrap();
        assert_eq!(ev.kind, EventKind::InsertFailed);
        assert_eq!(ev.cause, Some(Cause::NatPortClash));
        assert_eq!(ev.orig.src, "10.200.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(ev.orig.sport, Some(5353));
        assert_eq!(ev.orig.dport, Some(53));
        assert_eq!(ev.timeout, Some(30));
        assert_eq!(ev.status.names(), vec!["SRC_NAT", "SRC_NAT_DONE"]);
        assert!(ev.winner.is_some());
        let snat = Nat {
            kind: NatKind::Snat,
            addr: "10.200.0.1".parse().unwrap(),
            port: Some(40000),
        };
        assert_eq!(
            ev.nat,
            [snat],
            "the source SNAT picked, from the reply tuple"
        );
    }

    #[test]
    fn icmp_tuple_has_type_code_id() {
        let mut raw = udp_event();
        raw.l4proto = proto::ICMP;
        raw.orig.sport = u16::from_le_bytes(0x1234u16.to_be_bytes());
        raw.orig.dport = u16::from_le_bytes([8, 0]);
        let ev = decode(
            &raw,
            &Clock {
                boot_to_unix_ns: 0,
                hz: 0,
            },
        )
        .unwrap();
        assert_eq!(
            (ev.orig.icmp_type, ev.orig.code, ev.orig.id),
            (Some(8), Some(0), Some(0x1234))
        );
        assert_eq!(ev.orig.sport, None);
        assert_eq!(ev.timeout, None, "unknown HZ omits the timeout");
    }

    #[test]
    fn json_omits_absent_fields() {
        let ev = decode(
            &udp_event(),
            &Clock {
                boot_to_unix_ns: 0,
                hz: 250,
            },
        )
        .unwrap();
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["proto"], "udp");
        assert!(v.get("reason").is_none());
        assert!(v.get("tcp_state").is_none());
        assert!(v.get("from_ctnetlink").is_none());
        assert_eq!(v["orig"]["dport"], 53);
    }

    #[test]
    fn both_timeout_paths_are_timeouts() {
        let clock = Clock {
            boot_to_unix_ns: 0,
            hz: 250,
        };
        let mut raw = udp_event();
        raw.kind = EventKind::Destroy as u8;
        raw.cause = DestroyReason::TimeoutLookup as u8;
        let ev = decode(&raw, &clock).unwrap();
        assert_eq!(
            (ev.reason, ev.via, ev.cause),
            (Some(DestroyReason::Timeout), Some(Via::Lookup), None)
        );
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            (&v["reason"], &v["via"]),
            (&"timeout".into(), &"lookup".into())
        );
        raw.cause = DestroyReason::Timeout as u8;
        assert_eq!(decode(&raw, &clock).unwrap().via, Some(Via::Gc));
        raw.cause = DestroyReason::Ctnetlink as u8;
        assert_eq!(decode(&raw, &clock).unwrap().via, None);
    }

    #[test]
    fn negative_timeouts_round_down() {
        let clock = Clock {
            boot_to_unix_ns: 0,
            hz: 250,
        };
        assert_eq!(clock.seconds(-1), Some(-1));
        assert_eq!(clock.seconds(i32::MIN), None);
    }

    /// `name()` (text output, map keys) and serde (JSON) never disagree.
    #[test]
    fn names_are_what_serde_writes() {
        fn same<T: Serialize>(v: T, name: &str) {
            assert_eq!(serde_json::to_value(v).unwrap(), name);
        }
        for k in 1..=6 {
            let k = EventKind::from_u8(k).unwrap();
            same(k, k.name());
            same(LostKind::Ring(k), LostKind::Ring(k).name());
        }
        for c in 0..=8 {
            same(Cause::from_u8(c), Cause::from_u8(c).name());
            same(DestroyReason::from_u8(c), DestroyReason::from_u8(c).name());
        }
        for at in [
            LostAt::Unknown,
            LostAt::AgentSubscriber,
            LostAt::CtnetlinkOverrun,
        ] {
            same(LostKind::Other(at), LostKind::Other(at).name());
        }
        for v in [Via::Gc, Via::Lookup] {
            same(v, v.name());
        }
        for n in [NatKind::Snat, NatKind::Dnat] {
            same(n, n.name());
        }
    }

    #[test]
    fn a_kind_has_one_name_on_the_wire_and_the_command_line() {
        use clap::ValueEnum;
        for k in RecordKind::value_variants() {
            let wire = serde_json::to_value(k).unwrap();
            let cli = k.to_possible_value().unwrap();
            assert_eq!((wire.as_str(), cli.get_name()), (Some(k.name()), k.name()));
        }
    }

    /// Every kind with every cause or reason it can carry, over UDP, TCP, ICMP and IPv6,
    /// with and without winner, NAT, ctnetlink and unverified flags.
    fn every_event() -> Vec<Event> {
        let mut out = Vec::new();
        for kind in 1..=6u8 {
            for cause in 0..=9u8 {
                let protocols = [(AF_INET, 17), (AF_INET, 6), (AF_INET, 1), (AF_INET6, 58)];
                let (l3, l4) = protocols[usize::from((kind + cause) % 4)];
                {
                    let mut e = udp_event();
                    e.kind = kind;
                    e.cause = cause;
                    e.l3proto = l3;
                    e.l4proto = l4;
                    e.tcp_state = 3;
                    e.flags = [0, FLAG_HAS_WINNER, FLAG_FROM_CTNETLINK | FLAG_UNVERIFIED]
                        [usize::from(cause % 3)];
                    e.status = [0x188, 0x1b8, 0x0e][usize::from(cause % 3)];
                    e.timeout_jiffies = [7500, -300, i32::MIN][usize::from(kind % 3)];
                    e.ts_ns = 1_000_000_000 * u64::from(kind) + u64::from(cause);
                    e.pid = 42;
                    e.mark = 7;
                    e.zone = 3;
                    e.netns = 4026531840;
                    out.push(e);
                }
            }
        }
        out
    }

    /// The JSON of every event is what ctscope printed when this file was recorded: the
    /// stream is a protocol. `CTSCOPE_RECORD_EVENTS=1` rewrites the recording.
    #[test]
    fn json_is_byte_for_byte_the_recorded_stream() {
        let clock = Clock {
            boot_to_unix_ns: 1_700_000_000_000_000_000,
            hz: 250,
        };
        let mut lines = String::new();
        for raw in every_event() {
            let ev = decode(&raw, &clock).unwrap();
            lines.push_str(&serde_json::to_string(&Record::Conntrack(Box::new(ev))).unwrap());
            lines.push('\n');
        }
        for lost in recorded_losses() {
            lines.push_str(&serde_json::to_string(&Record::Lost(lost)).unwrap());
            lines.push('\n');
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/events.jsonl");
        if std::env::var_os("CTSCOPE_RECORD_EVENTS").is_some() {
            std::fs::write(path, &lines).unwrap();
        }
        let recorded = std::fs::read_to_string(path).unwrap();
        for (i, (now, then)) in lines.lines().zip(recorded.lines()).enumerate() {
            assert_eq!(now, then, "line {} of testdata/events.jsonl", i + 1);
        }
        assert_eq!(lines.lines().count(), recorded.lines().count());
    }

    fn recorded_losses() -> Vec<Lost> {
        vec![
            Lost::new(1.5, LostKind::Ring(EventKind::New), 3),
            Lost::new(2.5, LostKind::Other(LostAt::Unknown), 1),
        ]
    }
}

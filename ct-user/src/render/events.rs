//! Printers for the event stream: conntrack-style text (the `conntrack -E` line, with
//! ctscope's extra fields appended so tools that parse the prefix keep working) and JSON
//! Lines.

use std::io::{self, Write};

use ct_common::EventKind;

use crate::event::{CtEvent, Lost, LostAt, LostKind, Record, Side};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text { timestamp: bool },
    Json,
}

/// One conntrack event (what [`write_record`] does for `Record::Conntrack`, without
/// boxing the event first: this runs once per event).
pub fn write_event(out: &mut impl Write, format: Format, ev: &CtEvent) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer(&mut *out, ev)?;
            out.write_all(b"\n")
        }
        Format::Text { timestamp } => writeln!(out, "{}", text_line(ev, timestamp)),
    }
}

pub fn write_record(out: &mut impl Write, format: Format, record: &Record) -> io::Result<()> {
    match (format, record) {
        (Format::Json, r) => {
            serde_json::to_writer(&mut *out, r)?;
            out.write_all(b"\n")
        }
        (Format::Text { timestamp }, Record::Conntrack(ev)) => {
            writeln!(out, "{}", text_line(ev, timestamp))
        }
        (Format::Text { timestamp }, Record::Lost(lost)) => {
            writeln!(out, "{}", lost_line(lost, timestamp))
        }
    }
}

/// `    [NEW] udp      17 30 src=… dst=… sport=… dport=… [UNREPLIED] src=… … netns=…`
pub fn text_line(ev: &CtEvent, timestamp: bool) -> String {
    let mut s = String::with_capacity(200);
    if timestamp {
        s.push_str(&format!("[{:.6}] ", ev.ts));
    }
    s.push_str(&format!(
        "{:>9} ",
        format!("[{}]", ev.kind.name().to_ascii_uppercase())
    ));
    s.push_str(&format!("{:<8} {} ", ev.proto.to_string(), ev.protonum));
    if ev.kind != EventKind::Destroy
        && let Some(t) = ev.timeout
    {
        s.push_str(&format!("{} ", t.max(0)));
    }
    if let Some(state) = ev.tcp_state {
        s.push_str(state.name());
        s.push(' ');
    }
    push_side(&mut s, &ev.orig);
    if ev.status.is_unreplied() {
        s.push_str("[UNREPLIED] ");
    }
    push_side(&mut s, &ev.reply);
    if ev.status.is_assured() {
        s.push_str("[ASSURED] ");
    }
    s.push_str(&format!("mark={} ", ev.mark));
    if ev.zone != 0 {
        s.push_str(&format!("zone={} ", ev.zone));
    }
    if let Some(cause) = ev.cause {
        s.push_str(&format!("cause={} ", cause.name()));
    }
    if let Some(reason) = ev.reason {
        s.push_str(&format!("reason={} ", reason.name()));
    }
    if let Some(via) = ev.via {
        s.push_str(&format!("via={} ", via.name()));
    }
    if let Some(w) = &ev.winner {
        s.push_str("winner=[");
        push_side(&mut s, &w.orig);
        push_side(&mut s, &w.reply);
        s.truncate(s.trim_end().len());
        s.push_str("] ");
    }
    for n in &ev.nat {
        // With a port, an IPv6 address is bracketed (`[A]:P`, as `--src-nat` takes it):
        // else its last group and the port cannot be told apart.
        match n.port {
            Some(p) => s.push_str(&format!(
                "nat={}:{} ",
                n.kind.name(),
                std::net::SocketAddr::new(n.addr, p)
            )),
            None => s.push_str(&format!("nat={}:{} ", n.kind.name(), n.addr)),
        }
    }
    s.push_str(&format!("netns={}", ev.netns));
    s
}

fn push_side(s: &mut String, side: &Side) {
    s.push_str(&format!("src={} dst={} ", side.src, side.dst));
    if let (Some(sp), Some(dp)) = (side.sport, side.dport) {
        s.push_str(&format!("sport={sp} dport={dp} "));
    }
    if let (Some(t), Some(c), Some(id)) = (side.icmp_type, side.code, side.id) {
        s.push_str(&format!("type={t} code={c} id={id} "));
    }
}

fn lost_line(lost: &Lost, timestamp: bool) -> String {
    let ts = if timestamp {
        format!("[{:.6}] ", lost.ts)
    } else {
        String::new()
    };
    let why = match lost.lost_kind {
        LostKind::Ring(_) | LostKind::Other(LostAt::Unknown) => {
            "the ring buffer was full (raise --ring-size)"
        }
        LostKind::Other(LostAt::AgentSubscriber) => "this client read too slowly for the agent",
        LostKind::Other(LostAt::CtnetlinkOverrun) => "the ctnetlink socket's buffer overflowed",
    };
    format!(
        "{ts}   [LOST] {} {} events: {why}",
        lost.count,
        lost.lost_kind.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::Clock, event::decode};
    use ct_common::{Event, EventKind};

    fn new_udp() -> CtEvent {
        let mut e = Event::zeroed();
        e.kind = EventKind::New as u8;
        e.l3proto = 2;
        e.l4proto = 17;
        e.orig.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.orig.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.orig.sport = u16::from_le_bytes(1234u16.to_be_bytes());
        e.orig.dport = u16::from_le_bytes(53u16.to_be_bytes());
        e.reply.src[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.reply.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.reply.sport = u16::from_le_bytes(53u16.to_be_bytes());
        e.reply.dport = u16::from_le_bytes(1234u16.to_be_bytes());
        e.status = 1 << 3;
        e.timeout_jiffies = 30 * 250;
        e.netns = 7;
        decode(
            &e,
            &Clock {
                boot_to_unix_ns: 0,
                hz: 250,
            },
        )
        .unwrap()
    }

    #[test]
    fn text_matches_conntrack_event_prefix() {
        assert_eq!(
            text_line(&new_udp(), false),
            "    [NEW] udp      17 30 src=10.0.0.1 dst=10.0.0.2 sport=1234 dport=53 [UNREPLIED] \
             src=10.0.0.2 dst=10.0.0.1 sport=53 dport=1234 mark=0 netns=7"
        );
    }

    #[test]
    fn nat_mappings_bracket_ipv6_with_a_port() {
        use crate::event::{Nat, NatKind};
        let mut ev = new_udp();
        let nat = |addr: &str, port| Nat {
            kind: NatKind::Snat,
            addr: addr.parse().unwrap(),
            port,
        };
        ev.nat = vec![
            nat("fd00:200::1", Some(40000)),
            nat("fd00:200::1", None),
            nat("10.0.0.9", Some(40000)),
        ];
        let line = text_line(&ev, false);
        assert!(
            line.ends_with(
                "nat=snat:[fd00:200::1]:40000 nat=snat:fd00:200::1 nat=snat:10.0.0.9:40000 netns=7"
            ),
            "{line}"
        );
    }

    #[test]
    fn json_is_one_line() {
        let mut buf = Vec::new();
        write_record(
            &mut buf,
            Format::Json,
            &Record::Conntrack(Box::new(new_udp())),
        )
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "new");
        assert_eq!(v["netns"], 7);
    }
}

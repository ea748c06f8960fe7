//! `conntrack -L` text: the line libnetfilter_conntrack's default printer writes for a
//! table entry (no message-type prefix, no layer-3 column), field for field and in the
//! same order, so scripts that parse conntrack's output can read ctscope's.

use std::fmt::Write as _;

use ct_netlink::{Entry, SctpState, Status, Tuple, proto};

/// One `conntrack -L` line (without newline). `now` is the Unix time in seconds, used
/// for `delta-time=` when the kernel reports timestamps.
pub fn entry_line(e: &Entry, now: u64) -> String {
    let mut s = String::with_capacity(200);
    let _ = write!(s, "{:<8} {} ", proto::name(e.proto), e.proto);
    if let Some(t) = e.timeout {
        let _ = write!(s, "{t} ");
    }
    push_state(&mut s, e);
    push_tuple(&mut s, &e.orig, "orig", e.counters_orig);
    if e.status.is_unreplied() {
        s.push_str("[UNREPLIED] ");
    }
    push_tuple(&mut s, &e.reply, "reply", e.counters_reply);
    push_assured(&mut s, e.status);
    push_trailer(&mut s, e, now);
    s.truncate(s.trim_end().len());
    s
}

/// TCP, SCTP or DCCP state after the timeout.
fn push_state(s: &mut String, e: &Entry) {
    if let Some(tcp) = &e.tcp {
        // libnetfilter_conntrack prints NONE past its table (TCP_CONNTRACK_MAX = 10).
        let name = if tcp.state.0 < 10 {
            tcp.state.name()
        } else {
            "NONE"
        };
        let _ = write!(s, "{name} ");
    }
    if let Some(sctp) = &e.sctp {
        let _ = write!(s, "{} ", sctp_name(sctp.state.0));
    }
    if let Some(dccp) = &e.dccp {
        let _ = write!(s, "{} ", known_or_none(dccp.state.name()));
    }
}

fn sctp_name(state: u8) -> &'static str {
    known_or_none(SctpState(state).name())
}

/// libnetfilter_conntrack prints states past its tables as NONE.
fn known_or_none(name: &'static str) -> &'static str {
    if name == "UNKNOWN" { "NONE" } else { name }
}

/// `src= dst= ` then the protocol part, the directional zone and the counters.
fn push_tuple(s: &mut String, t: &Tuple, dir: &str, counters: Option<ct_netlink::Counters>) {
    let _ = write!(s, "src={} dst={} ", t.src, t.dst);
    push_l4(s, t, true);
    if let Some(z) = t.zone {
        let _ = write!(s, "zone-{dir}={z} ");
    }
    if let Some(c) = counters {
        let _ = write!(s, "packets={} bytes={} ", c.packets, c.bytes);
    }
}

fn push_assured(s: &mut String, status: Status) {
    if status.contains(Status::HW_OFFLOAD) {
        s.push_str("[HW_OFFLOAD] ");
    } else if status.contains(Status::OFFLOAD) {
        s.push_str("[OFFLOAD] ");
    } else if status.is_assured() {
        s.push_str("[ASSURED] ");
    }
}

/// mark, secmark, secctx, zone, delta-time, helper, use: each only when reported.
fn push_trailer(s: &mut String, e: &Entry, now: u64) {
    if let Some(m) = e.mark {
        let _ = write!(s, "mark={m} ");
    }
    if let Some(m) = e.secmark {
        let _ = write!(s, "secmark={m} ");
    }
    if let Some(c) = &e.secctx {
        let _ = write!(s, "secctx={c} ");
    }
    if let Some(z) = e.zone {
        let _ = write!(s, "zone={z} ");
    }
    if let Some(ts) = e.timestamp {
        let stop = ts.stop.map_or(now, |ns| ns / 1_000_000_000);
        let delta = stop.saturating_sub(ts.start / 1_000_000_000);
        let _ = write!(s, "delta-time={delta} ");
    }
    if let Some(h) = &e.helper {
        let _ = write!(s, "helper={h} ");
    }
    if let Some(u) = e.use_count {
        let _ = write!(s, "use={u} ");
    }
}

/// The layer-4 part of a tuple (`sport= dport= `, ICMP `type= code= id= `, and GRE keys
/// when `gre_keys`: expectation lines leave them out).
pub fn push_l4(s: &mut String, t: &Tuple, gre_keys: bool) {
    match t.proto {
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP => {
            let (sp, dp) = (t.src_port.unwrap_or(0), t.dst_port.unwrap_or(0));
            let _ = write!(s, "sport={sp} dport={dp} ");
        }
        proto::GRE if gre_keys => {
            let (sk, dk) = (t.src_port.unwrap_or(0), t.dst_port.unwrap_or(0));
            let _ = write!(s, "srckey={sk:#x} dstkey={dk:#x} ");
        }
        proto::ICMP | proto::ICMPV6 => {
            let _ = write!(
                s,
                "type={} code={} id={} ",
                t.icmp_type.unwrap_or(0),
                t.icmp_code.unwrap_or(0),
                t.icmp_id.unwrap_or(0)
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_netlink::{Counters, Family, TcpInfo, TcpState, Timestamps};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entry(orig: Tuple, status: u32) -> Entry {
        let reply = orig.inverted();
        Entry {
            status: Status(status),
            timeout: Some(29),
            mark: Some(0),
            use_count: Some(1),
            id: Some(12345),
            ..Entry::new(orig, reply)
        }
    }

    fn udp(a: &str, b: &str, sport: u16, dport: u16) -> Tuple {
        Tuple::ports(proto::UDP, ip(a), ip(b), sport, dport)
    }

    #[test]
    fn udp_unreplied() {
        let e = entry(udp("10.0.0.1", "10.0.0.2", 1, 53), Status::CONFIRMED);
        assert_eq!(
            entry_line(&e, 0),
            "udp      17 29 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=53 [UNREPLIED] \
             src=10.0.0.2 dst=10.0.0.1 sport=53 dport=1 mark=0 use=1"
        );
    }

    #[test]
    fn tcp_established_assured_with_zone_and_mark() {
        let orig = Tuple::ports(proto::TCP, ip("10.251.0.1"), ip("10.251.0.2"), 1000, 80);
        let mut e = entry(
            orig,
            Status::CONFIRMED | Status::SEEN_REPLY | Status::ASSURED,
        );
        e.timeout = Some(299);
        e.mark = Some(7);
        e.zone = Some(5);
        e.tcp = Some(TcpInfo {
            state: TcpState(3),
            wscale_orig: None,
            wscale_reply: None,
            flags_orig: None,
            flags_reply: None,
        });
        assert_eq!(
            entry_line(&e, 0),
            "tcp      6 299 ESTABLISHED src=10.251.0.1 dst=10.251.0.2 sport=1000 dport=80 \
             src=10.251.0.2 dst=10.251.0.1 sport=80 dport=1000 [ASSURED] mark=7 zone=5 use=1"
        );
    }

    #[test]
    fn icmp_and_icmpv6() {
        let e = entry(
            Tuple::icmp(ip("10.251.0.1"), ip("10.251.0.2"), 8, 0, 77),
            Status::CONFIRMED,
        );
        assert_eq!(
            entry_line(&e, 0),
            "icmp     1 29 src=10.251.0.1 dst=10.251.0.2 type=8 code=0 id=77 [UNREPLIED] \
             src=10.251.0.2 dst=10.251.0.1 type=0 code=0 id=77 mark=0 use=1"
        );
        let e = entry(
            Tuple::icmp(ip("fd00:251::1"), ip("fd00:251::2"), 128, 0, 78),
            Status::CONFIRMED,
        );
        assert_eq!(e.family, Family::Ipv6);
        assert_eq!(
            entry_line(&e, 0),
            "icmpv6   58 29 src=fd00:251::1 dst=fd00:251::2 type=128 code=0 id=78 [UNREPLIED] \
             src=fd00:251::2 dst=fd00:251::1 type=129 code=0 id=78 mark=0 use=1"
        );
    }

    #[test]
    fn unknown_protocol_has_no_l4_fields() {
        let mut orig = udp("10.251.0.1", "10.251.0.2", 0, 0);
        orig.proto = 99;
        orig.src_port = None;
        orig.dst_port = None;
        let e = entry(orig, Status::CONFIRMED);
        assert_eq!(
            entry_line(&e, 0),
            "unknown  99 29 src=10.251.0.1 dst=10.251.0.2 [UNREPLIED] \
             src=10.251.0.2 dst=10.251.0.1 mark=0 use=1"
        );
    }

    #[test]
    fn counters_zones_timestamps_offload() {
        let mut e = entry(
            udp("fd00::1", "fd00::2", 5000, 53),
            Status::CONFIRMED | Status::SEEN_REPLY | Status::ASSURED | Status::OFFLOAD,
        );
        e.orig.zone = Some(2);
        e.counters_orig = Some(Counters {
            packets: 1,
            bytes: 60,
        });
        e.counters_reply = Some(Counters {
            packets: 2,
            bytes: 120,
        });
        e.timestamp = Some(Timestamps {
            start: 1_000 * 1_000_000_000,
            stop: None,
        });
        e.helper = Some("ftp".into());
        assert_eq!(
            entry_line(&e, 1_042),
            "udp      17 29 src=fd00::1 dst=fd00::2 sport=5000 dport=53 zone-orig=2 \
             packets=1 bytes=60 src=fd00::2 dst=fd00::1 sport=53 dport=5000 \
             packets=2 bytes=120 [OFFLOAD] mark=0 delta-time=42 helper=ftp use=1"
        );
    }

    #[test]
    fn gre_keys_in_hex() {
        let mut orig = udp("10.0.0.1", "10.0.0.2", 0x10, 0xab);
        orig.proto = proto::GRE;
        let e = entry(orig, Status::CONFIRMED);
        assert!(
            entry_line(&e, 0).starts_with(
                "gre      47 29 src=10.0.0.1 dst=10.0.0.2 srckey=0x10 dstkey=0xab [UNREPLIED]"
            ),
            "{}",
            entry_line(&e, 0)
        );
    }
}

//! ctnetlink attributes: decoding to [`Entry`] and encoding requests.
//!
//! netlink-packet-netfilter parses tuples (addresses, ports, protocol number),
//! status, TCP protoinfo, timeout and mark; it leaves everything else as
//! `DefaultNla`, which is decoded here by hand (uapi `nfnetlink_conntrack.h`).

use std::net::IpAddr;

use netlink_packet_core::{DefaultNla, NLA_F_NESTED, NLA_TYPE_MASK, Nla};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol, Tuple as NfTuple,
};

use crate::entry::{
    Counters, DccpInfo, DccpState, Entry, Family, SctpInfo, SctpState, Status, TcpInfo, TcpState,
    Timestamps, Tuple, proto,
};

// enum ctattr_type (TUPLE_ORIG/REPLY, STATUS, PROTOINFO: netlink-packet-netfilter)
pub(crate) const CTA_HELP: u16 = 5;
pub(crate) const CTA_NAT_SRC: u16 = 6;
pub(crate) const CTA_TIMEOUT: u16 = 7;
pub(crate) const CTA_MARK: u16 = 8;
pub(crate) const CTA_COUNTERS_ORIG: u16 = 9;
pub(crate) const CTA_COUNTERS_REPLY: u16 = 10;
pub(crate) const CTA_USE: u16 = 11;
pub(crate) const CTA_ID: u16 = 12;
pub(crate) const CTA_NAT_DST: u16 = 13;
pub(crate) const CTA_SECMARK: u16 = 17;
pub(crate) const CTA_ZONE: u16 = 18;
pub(crate) const CTA_SECCTX: u16 = 19;
pub(crate) const CTA_TIMESTAMP: u16 = 20;
pub(crate) const CTA_MARK_MASK: u16 = 21;
pub(crate) const CTA_LABELS: u16 = 22;
pub(crate) const CTA_LABELS_MASK: u16 = 23;
pub(crate) const CTA_STATUS_MASK: u16 = 26;

// enum ctattr_tuple / ctattr_l4proto (the parts netlink-packet-netfilter lacks)
const CTA_TUPLE_ZONE: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

// enum ctattr_protoinfo and its DCCP/SCTP parts
const CTA_PROTOINFO_DCCP: u16 = 2;
const CTA_PROTOINFO_SCTP: u16 = 3;
const CTA_PROTOINFO_DCCP_STATE: u16 = 1;
const CTA_PROTOINFO_DCCP_ROLE: u16 = 2;
const CTA_PROTOINFO_SCTP_STATE: u16 = 1;
const CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: u16 = 2;
const CTA_PROTOINFO_SCTP_VTAG_REPLY: u16 = 3;

// enum ctattr_counters / ctattr_tstamp / ctattr_help / ctattr_secctx
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_TIMESTAMP_STOP: u16 = 2;
const CTA_HELP_NAME: u16 = 1;

// enum ctattr_nat / ctattr_protonat
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;
const CTA_SECCTX_NAME: u16 = 1;

/// Bytes and type (flags masked) of an attribute netlink-packet-netfilter left raw.
pub(crate) fn raw(nla: &DefaultNla) -> (u16, Vec<u8>) {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    (nla.kind() & NLA_TYPE_MASK, value)
}

/// Iterate a nested attribute's children as (type, value). NlaBuffer::value borrows
/// the buffer object, so the walk is done here on the slice itself.
fn nested(mut value: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(value.get(..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(value.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let payload = value.get(4..len)?;
        value = value.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

pub(crate) fn be_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

pub(crate) fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

pub(crate) fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Partially filled tuple while decoding.
#[derive(Default)]
struct TupleParts {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    icmp_id: Option<u16>,
    zone: Option<u16>,
}

impl TupleParts {
    fn finish(self) -> Option<Tuple> {
        Some(Tuple {
            src: self.src?,
            dst: self.dst?,
            proto: self.proto?,
            src_port: self.src_port,
            dst_port: self.dst_port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            icmp_id: self.icmp_id,
            zone: self.zone,
        })
    }
}

fn decode_tuple(parts: &[NfTuple]) -> Option<Tuple> {
    let mut t = TupleParts::default();
    for part in parts {
        match part {
            NfTuple::Ip(ips) => ips.iter().for_each(|ip| decode_ip(&mut t, ip)),
            NfTuple::Proto(ps) => ps.iter().for_each(|p| decode_proto(&mut t, p)),
            NfTuple::Other(nla) => {
                if let (CTA_TUPLE_ZONE, v) = raw(nla) {
                    t.zone = be_u16(&v);
                }
            }
            _ => {}
        }
    }
    t.finish()
}

fn decode_ip(t: &mut TupleParts, ip: &IPTuple) {
    match ip {
        IPTuple::SourceAddress(a) => t.src = Some(*a),
        IPTuple::DestinationAddress(a) => t.dst = Some(*a),
        _ => {}
    }
}

fn decode_proto(t: &mut TupleParts, p: &ProtoTuple) {
    match p {
        ProtoTuple::Protocol(num) => t.proto = Some(u8::from(*num)),
        ProtoTuple::SourcePort(port) => t.src_port = Some(*port),
        ProtoTuple::DestinationPort(port) => t.dst_port = Some(*port),
        ProtoTuple::Other(nla) => {
            let (kind, v) = raw(nla);
            match kind {
                CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => t.icmp_id = be_u16(&v),
                CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => t.icmp_type = v.first().copied(),
                CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => t.icmp_code = v.first().copied(),
                _ => {}
            }
        }
        _ => {}
    }
}

fn decode_tcp(items: &[ProtoInfoTCP]) -> TcpInfo {
    let mut tcp = TcpInfo {
        state: TcpState(0),
        wscale_orig: None,
        wscale_reply: None,
        flags_orig: None,
        flags_reply: None,
    };
    for item in items {
        match item {
            ProtoInfoTCP::State(s) => tcp.state = TcpState(*s),
            ProtoInfoTCP::OriginalWindowScale(w) => tcp.wscale_orig = Some(*w),
            ProtoInfoTCP::ReplyWindowScale(w) => tcp.wscale_reply = Some(*w),
            ProtoInfoTCP::OriginalFlags(f) => tcp.flags_orig = Some(f.flags),
            ProtoInfoTCP::ReplyFlags(f) => tcp.flags_reply = Some(f.flags),
            _ => {}
        }
    }
    tcp
}

fn decode_sctp(value: &[u8]) -> SctpInfo {
    let mut sctp = SctpInfo {
        state: SctpState(0),
        vtag_orig: None,
        vtag_reply: None,
    };
    for (kind, v) in nested(value) {
        match kind {
            CTA_PROTOINFO_SCTP_STATE => sctp.state = SctpState(v.first().copied().unwrap_or(0)),
            CTA_PROTOINFO_SCTP_VTAG_ORIGINAL => sctp.vtag_orig = be_u32(v),
            CTA_PROTOINFO_SCTP_VTAG_REPLY => sctp.vtag_reply = be_u32(v),
            _ => {}
        }
    }
    sctp
}

fn decode_dccp(value: &[u8]) -> DccpInfo {
    let mut dccp = DccpInfo {
        state: DccpState(0),
        role: None,
    };
    for (kind, v) in nested(value) {
        match kind {
            CTA_PROTOINFO_DCCP_STATE => dccp.state = DccpState(v.first().copied().unwrap_or(0)),
            CTA_PROTOINFO_DCCP_ROLE => dccp.role = v.first().copied(),
            _ => {}
        }
    }
    dccp
}

fn decode_protoinfo(entry: &mut Entry, infos: &[ProtoInfo]) {
    for info in infos {
        match info {
            ProtoInfo::TCP(items) => entry.tcp = Some(decode_tcp(items)),
            ProtoInfo::Other(nla) => match raw(nla) {
                (CTA_PROTOINFO_SCTP, v) => entry.sctp = Some(decode_sctp(&v)),
                (CTA_PROTOINFO_DCCP, v) => entry.dccp = Some(decode_dccp(&v)),
                _ => {}
            },
            _ => {}
        }
    }
}

fn decode_counters(value: &[u8]) -> Counters {
    let mut c = Counters::default();
    for (kind, v) in nested(value) {
        match kind {
            CTA_COUNTERS_PACKETS => c.packets = be_u64(v).unwrap_or(0),
            CTA_COUNTERS_BYTES => c.bytes = be_u64(v).unwrap_or(0),
            CTA_COUNTERS32_PACKETS => c.packets = be_u32(v).map_or(0, u64::from),
            CTA_COUNTERS32_BYTES => c.bytes = be_u32(v).map_or(0, u64::from),
            _ => {}
        }
    }
    c
}

fn decode_timestamps(value: &[u8]) -> Timestamps {
    let mut ts = Timestamps::default();
    for (kind, v) in nested(value) {
        match kind {
            CTA_TIMESTAMP_START => ts.start = be_u64(v).unwrap_or(0),
            CTA_TIMESTAMP_STOP => ts.stop = be_u64(v),
            _ => {}
        }
    }
    ts
}

fn first_string(value: &[u8], kind_wanted: u16) -> Option<String> {
    nested(value)
        .find(|(kind, _)| *kind == kind_wanted)
        .map(|(_, v)| c_string(v))
}

/// Attributes netlink-packet-netfilter left as `DefaultNla`.
fn decode_other(entry: &mut Entry, nla: &DefaultNla) {
    let (kind, v) = raw(nla);
    match kind {
        CTA_COUNTERS_ORIG => entry.counters_orig = Some(decode_counters(&v)),
        CTA_COUNTERS_REPLY => entry.counters_reply = Some(decode_counters(&v)),
        CTA_USE => entry.use_count = be_u32(&v),
        CTA_ID => entry.id = be_u32(&v),
        CTA_ZONE => entry.zone = be_u16(&v),
        CTA_TIMESTAMP => entry.timestamp = Some(decode_timestamps(&v)),
        CTA_LABELS => entry.labels = Some(v),
        CTA_HELP => entry.helper = first_string(&v, CTA_HELP_NAME),
        CTA_SECCTX => entry.secctx = first_string(&v, CTA_SECCTX_NAME),
        CTA_SECMARK => entry.secmark = be_u32(&v),
        _ => {}
    }
}

/// Decode one conntrack message's attributes. `None` if either tuple is missing
/// (the kernel always sends both for table entries).
pub(crate) fn decode_entry(af: u8, attrs: &[ConntrackAttribute]) -> Option<Entry> {
    let orig = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) => decode_tuple(t),
        _ => None,
    })?;
    let reply = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleReply(t) => decode_tuple(t),
        _ => None,
    })?;
    let family = Family::from_af(af).unwrap_or_else(|| orig.family());
    let mut entry = Entry::new(orig, reply);
    entry.family = family;
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaStatus(s) => entry.status = Status(s.bits()),
            ConntrackAttribute::CtaTimeout(t) => entry.timeout = Some(*t),
            ConntrackAttribute::CtaMark(m) => entry.mark = Some(*m),
            ConntrackAttribute::CtaProtoInfo(p) => decode_protoinfo(&mut entry, p),
            ConntrackAttribute::Other(nla) => decode_other(&mut entry, nla),
            _ => {}
        }
    }
    Some(entry)
}

// ---- encoding ----

fn nla(kind: u16, value: Vec<u8>) -> DefaultNla {
    DefaultNla::new(kind, value)
}

/// Concatenate already-encoded children into one nested attribute.
fn nest(kind: u16, children: &[DefaultNla]) -> DefaultNla {
    let mut value = vec![0; netlink_packet_core::Emitable::buffer_len(&children)];
    netlink_packet_core::Emitable::emit(&children, &mut value);
    nla(kind | NLA_F_NESTED, value)
}

fn encode_tuple(t: &Tuple) -> Vec<NfTuple> {
    let mut parts = vec![
        NfTuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]),
        NfTuple::Proto(encode_l4(t)),
    ];
    if let Some(zone) = t.zone {
        parts.push(NfTuple::Other(nla(
            CTA_TUPLE_ZONE,
            zone.to_be_bytes().to_vec(),
        )));
    }
    parts
}

fn encode_l4(t: &Tuple) -> Vec<ProtoTuple> {
    let mut l4 = vec![ProtoTuple::Protocol(Protocol::from(t.proto))];
    if let Some(p) = t.src_port {
        l4.push(ProtoTuple::SourcePort(p));
    }
    if let Some(p) = t.dst_port {
        l4.push(ProtoTuple::DestinationPort(p));
    }
    let (id, ty, code) = if t.proto == proto::ICMPV6 {
        (
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
        )
    } else {
        (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
    };
    if let Some(v) = t.icmp_id {
        l4.push(ProtoTuple::Other(nla(id, v.to_be_bytes().to_vec())));
    }
    if let Some(v) = t.icmp_type {
        l4.push(ProtoTuple::Other(nla(ty, vec![v])));
    }
    if let Some(v) = t.icmp_code {
        l4.push(ProtoTuple::Other(nla(code, vec![v])));
    }
    l4
}

/// A tuple as a raw nested attribute (for subsystems without typed attributes).
pub(crate) fn tuple_nla(kind: u16, t: &Tuple) -> DefaultNla {
    let parts = encode_tuple(t);
    let mut value = vec![0; netlink_packet_core::Emitable::buffer_len(&parts.as_slice())];
    netlink_packet_core::Emitable::emit(&parts.as_slice(), &mut value);
    nla(kind | NLA_F_NESTED, value)
}

/// Decode a raw nested tuple attribute's value with netlink-packet-netfilter's parser.
pub(crate) fn tuple_from_bytes(value: &[u8]) -> Option<Tuple> {
    use netlink_packet_core::{NlaBuffer, NlasIterator, Parseable};
    let parts: Option<Vec<NfTuple>> = NlasIterator::new(value)
        .map(|nla| {
            nla.ok()
                .and_then(|b: NlaBuffer<&[u8]>| NfTuple::parse(&b).ok())
        })
        .collect();
    decode_tuple(&parts?)
}

pub(crate) fn tuple_orig(t: &Tuple) -> ConntrackAttribute {
    ConntrackAttribute::CtaTupleOrig(encode_tuple(t))
}

pub(crate) fn tuple_reply(t: &Tuple) -> ConntrackAttribute {
    ConntrackAttribute::CtaTupleReply(encode_tuple(t))
}

pub(crate) fn u32_attr(kind: u16, v: u32) -> ConntrackAttribute {
    ConntrackAttribute::Other(nla(kind, v.to_be_bytes().to_vec()))
}

pub(crate) fn u16_attr(kind: u16, v: u16) -> ConntrackAttribute {
    ConntrackAttribute::Other(nla(kind, v.to_be_bytes().to_vec()))
}

pub(crate) fn bytes_attr(kind: u16, v: &[u8]) -> ConntrackAttribute {
    ConntrackAttribute::Other(nla(kind, v.to_vec()))
}

/// `CTA_STATUS` through netlink-packet-netfilter's own type.
pub(crate) fn status_attr(bits: u32) -> ConntrackAttribute {
    ConntrackAttribute::CtaStatus(
        netlink_packet_netfilter::conntrack::Status::from_bits_retain(bits),
    )
}

/// `CTA_PROTOINFO` / `CTA_PROTOINFO_TCP` / `CTA_PROTOINFO_TCP_STATE`.
pub(crate) fn tcp_state_attr(state: TcpState) -> ConntrackAttribute {
    ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(state.0)])])
}

/// `CTA_HELP` / `CTA_HELP_NAME` (NUL-terminated).
pub(crate) fn helper_attr(name: &str) -> ConntrackAttribute {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    ConntrackAttribute::Other(nest(CTA_HELP, &[nla(CTA_HELP_NAME, v)]))
}

/// `CTA_NAT_SRC` / `CTA_NAT_DST`: one address and optionally one port, each as a
/// min = max range (what libnetfilter_conntrack sends for `conntrack -I --src-nat`).
pub(crate) fn nat_attr(kind: u16, addr: IpAddr, port: Option<u16>) -> ConntrackAttribute {
    let (min, max, bytes) = match addr {
        IpAddr::V4(a) => (CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, a.octets().to_vec()),
        IpAddr::V6(a) => (CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP, a.octets().to_vec()),
    };
    let mut children = vec![nla(min, bytes.clone()), nla(max, bytes)];
    if let Some(p) = port {
        let be = p.to_be_bytes().to_vec();
        children.push(nest(
            CTA_NAT_PROTO,
            &[
                nla(CTA_PROTONAT_PORT_MIN, be.clone()),
                nla(CTA_PROTONAT_PORT_MAX, be),
            ],
        ));
    }
    ConntrackAttribute::Other(nest(kind, &children))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NlaBuffer, Parseable};

    fn roundtrip(attr: &ConntrackAttribute) -> ConntrackAttribute {
        let mut buf = vec![0; attr.buffer_len()];
        attr.emit(&mut buf);
        ConntrackAttribute::parse(&NlaBuffer::new(&buf[..])).unwrap()
    }

    #[test]
    fn tuple_roundtrip_icmp_and_zone() {
        let a: IpAddr = "::1".parse().unwrap();
        let mut t = Tuple::icmp(a, a, 128, 0, 42);
        t.zone = Some(7);
        let orig = roundtrip(&tuple_orig(&t));
        let reply = roundtrip(&tuple_reply(&t.inverted()));
        let e = decode_entry(libc::AF_INET6 as u8, &[orig, reply, u32_attr(CTA_ID, 9)]).unwrap();
        assert_eq!(e.orig, t);
        assert_eq!(e.reply.icmp_type, Some(129));
        assert_eq!(e.id, Some(9));
        assert_eq!(e.family, Family::Ipv6);
    }

    #[test]
    fn nat_attribute_layout() {
        let ConntrackAttribute::Other(n) =
            nat_attr(CTA_NAT_SRC, "10.0.0.9".parse().unwrap(), Some(53))
        else {
            panic!("not a raw attribute")
        };
        let (kind, value) = raw(&n);
        assert_eq!(kind, CTA_NAT_SRC);
        let children: Vec<(u16, Vec<u8>)> = nested(&value).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(children[0], (CTA_NAT_V4_MINIP, vec![10, 0, 0, 9]));
        assert_eq!(children[1], (CTA_NAT_V4_MAXIP, vec![10, 0, 0, 9]));
        assert_eq!(children[2].0, CTA_NAT_PROTO);
        let ports: Vec<(u16, Vec<u8>)> = nested(&children[2].1)
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(
            ports,
            [
                (CTA_PROTONAT_PORT_MIN, vec![0, 53]),
                (CTA_PROTONAT_PORT_MAX, vec![0, 53])
            ]
        );
        let ConntrackAttribute::Other(n) = nat_attr(CTA_NAT_DST, "::1".parse().unwrap(), None)
        else {
            panic!("not a raw attribute")
        };
        let (_, value) = raw(&n);
        let kinds: Vec<u16> = nested(&value).map(|(k, _)| k).collect();
        assert_eq!(kinds, [CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP]);
    }

    #[test]
    fn tuple_roundtrip_ports() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let t = Tuple::ports(proto::UDP, a, a, 1000, 2000);
        let e = decode_entry(
            libc::AF_INET as u8,
            &[
                roundtrip(&tuple_orig(&t)),
                roundtrip(&tuple_reply(&t.inverted())),
                status_attr(6),
            ],
        )
        .unwrap();
        assert_eq!(e.orig, t);
        assert_eq!(e.reply.src_port, Some(2000));
        assert_eq!(e.status, Status(6));
    }
}

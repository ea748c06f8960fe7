//! Public conntrack entry types, named as conntrack-tools prints them.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize, Serializer};

/// Layer-3 family of an entry or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The `AF_*` / `NFPROTO_*` number used in `nfgenmsg`.
    pub fn to_af(self) -> u8 {
        match self {
            Family::Ipv4 => libc::AF_INET as u8,
            Family::Ipv6 => libc::AF_INET6 as u8,
        }
    }

    /// Inverse of [`Family::to_af`].
    pub fn from_af(af: u8) -> Option<Self> {
        match i32::from(af) {
            libc::AF_INET => Some(Family::Ipv4),
            libc::AF_INET6 => Some(Family::Ipv6),
            _ => None,
        }
    }

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// `ipv4` / `ipv6`, as conntrack's extended output prints it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// Protocol numbers ctnetlink gives special tuple or protoinfo attributes.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// The name conntrack prints in the first column (`unknown` for the rest).
    pub fn name(num: u8) -> &'static str {
        match num {
            ICMP => "icmp",
            TCP => "tcp",
            UDP => "udp",
            DCCP => "dccp",
            GRE => "gre",
            ICMPV6 => "icmpv6",
            SCTP => "sctp",
            UDPLITE => "udplite",
            _ => "unknown",
        }
    }

    /// Inverse of [`name`], also accepting a decimal number.
    pub fn from_name(name: &str) -> Option<u8> {
        let known = [ICMP, TCP, UDP, DCCP, GRE, ICMPV6, SCTP, UDPLITE];
        known
            .into_iter()
            .find(|p| self::name(*p).eq_ignore_ascii_case(name))
            .or_else(|| name.parse().ok())
    }
}

/// One direction of a connection. Port fields are set for port-based protocols
/// (TCP, UDP, UDP-Lite, SCTP, DCCP; GRE keys land in the port fields as the kernel
/// sends them), ICMP fields for ICMP and ICMPv6. Deserializing refuses unknown fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Layer-4 protocol number.
    pub proto: u8,
    // JSON names match ctscope's event stream (`sport`, `dport`, `type`, `code`, `id`):
    // one vocabulary for tuples across every command.
    #[serde(rename = "sport", skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(rename = "dport", skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(rename = "code", skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    #[serde(rename = "id", skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
    /// Directional zone (`CTA_TUPLE_ZONE`), when the kernel reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<u16>,
}

impl Tuple {
    /// A tuple for a port-based protocol.
    pub fn ports(proto: u8, src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Tuple {
            src,
            dst,
            proto,
            src_port: Some(src_port),
            dst_port: Some(dst_port),
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
            zone: None,
        }
    }

    /// A tuple for ICMP / ICMPv6 (picked from the address family).
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, icmp_code: u8, icmp_id: u16) -> Self {
        let proto = match src {
            IpAddr::V4(_) => proto::ICMP,
            IpAddr::V6(_) => proto::ICMPV6,
        };
        Tuple {
            src,
            dst,
            proto,
            src_port: None,
            dst_port: None,
            icmp_type: Some(icmp_type),
            icmp_code: Some(icmp_code),
            icmp_id: Some(icmp_id),
            zone: None,
        }
    }

    /// The family of the source address.
    pub fn family(&self) -> Family {
        Family::of(&self.src)
    }

    /// The reply direction of a tuple without NAT (addresses and ports swapped;
    /// ICMP echo request becomes echo reply).
    pub fn inverted(&self) -> Tuple {
        let icmp_type = self.icmp_type.map(|t| invert_icmp_type(self.proto, t));
        Tuple {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            icmp_type,
            ..self.clone()
        }
    }
}

/// The kernel's (and libnetfilter_conntrack's) ICMP invmap, both ways.
fn invert_icmp_type(proto: u8, t: u8) -> u8 {
    match (proto, t) {
        (proto::ICMP, 8) => 0,
        (proto::ICMP, 0) => 8,
        (proto::ICMP, 13) => 14,
        (proto::ICMP, 14) => 13,
        (proto::ICMP, 15) => 16,
        (proto::ICMP, 16) => 15,
        (proto::ICMP, 17) => 18,
        (proto::ICMP, 18) => 17,
        (proto::ICMPV6, 128) => 129,
        (proto::ICMPV6, 129) => 128,
        (proto::ICMPV6, 139) => 140,
        (proto::ICMPV6, 140) => 139,
        (proto::ICMPV6, 130) => 131,
        (_, t) => t,
    }
}

/// Conntrack status bits (`IPS_*`), named as `conntrack -u` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u32);

impl Status {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    /// Bit 12: a NAT-clash reply-only entry (~5.7+); the same bit named the untracked
    /// template before, which never appears in the table.
    pub const NAT_CLASH: u32 = 1 << 12;
    pub const UNTRACKED: u32 = Self::NAT_CLASH;
    pub const HELPER: u32 = 1 << 13;
    pub const OFFLOAD: u32 = 1 << 14;
    pub const HW_OFFLOAD: u32 = 1 << 15;

    const NAMES: [&'static str; 16] = [
        "EXPECTED",
        "SEEN_REPLY",
        "ASSURED",
        "CONFIRMED",
        "SRC_NAT",
        "DST_NAT",
        "SEQ_ADJUST",
        "SRC_NAT_DONE",
        "DST_NAT_DONE",
        "DYING",
        "FIXED_TIMEOUT",
        "TEMPLATE",
        "NAT_CLASH",
        "HELPER",
        "OFFLOAD",
        "HW_OFFLOAD",
    ];

    /// True if every bit of `mask` is set.
    pub fn contains(self, mask: u32) -> bool {
        self.0 & mask == mask
    }

    /// conntrack prints `[UNREPLIED]` when SEEN_REPLY is clear.
    pub fn is_unreplied(self) -> bool {
        !self.contains(Self::SEEN_REPLY)
    }

    /// conntrack prints `[ASSURED]` when this is set.
    pub fn is_assured(self) -> bool {
        self.contains(Self::ASSURED)
    }

    /// Names of the set bits, lowest first (unknown bits as `BIT<n>`).
    pub fn names(self) -> Vec<String> {
        (0..32)
            .filter(|b| self.0 & (1 << b) != 0)
            .map(|b| match Self::NAMES.get(b) {
                Some(n) => (*n).to_string(),
                None => format!("BIT{b}"),
            })
            .collect()
    }

    /// Bit for a name accepted by `conntrack -u` (case-insensitive; `UNTRACKED`, its name
    /// for bit 12, is accepted too).
    pub fn bit_from_name(name: &str) -> Option<u32> {
        if name.eq_ignore_ascii_case("UNTRACKED") {
            return Some(Self::UNTRACKED);
        }
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| 1 << i)
    }
}

/// Serialized as the list of set bit names (`["SEEN_REPLY", "ASSURED", ...]`).
impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// A protocol state number with its conntrack-tools name table.
macro_rules! state_type {
    ($name:ident, $doc:literal, [$($s:literal),* $(,)?]) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u8);

        impl $name {
            const NAMES: &'static [&'static str] = &[$($s),*];

            /// The name conntrack prints (`UNKNOWN` past the table).
            pub fn name(self) -> &'static str {
                Self::NAMES.get(usize::from(self.0)).copied().unwrap_or("UNKNOWN")
            }

            /// Inverse of `name` (case-insensitive).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(name))
                    .map(|i| Self(i as u8))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

// libnetfilter_conntrack's tables: kernel state 9 (SYN_SENT2) prints as LISTEN.
state_type!(
    TcpState,
    "TCP conntrack state (`CTA_PROTOINFO_TCP_STATE`).",
    [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "LISTEN",
        "MAX",
        "IGNORE",
    ]
);
state_type!(
    SctpState,
    "SCTP conntrack state (`CTA_PROTOINFO_SCTP_STATE`).",
    [
        "NONE",
        "CLOSED",
        "COOKIE_WAIT",
        "COOKIE_ECHOED",
        "ESTABLISHED",
        "SHUTDOWN_SENT",
        "SHUTDOWN_RECD",
        "SHUTDOWN_ACK_SENT",
        "HEARTBEAT_SENT",
        "HEARTBEAT_ACKED",
    ]
);
state_type!(
    DccpState,
    "DCCP conntrack state (`CTA_PROTOINFO_DCCP_STATE`).",
    [
        "NONE", "REQUEST", "RESPOND", "PARTOPEN", "OPEN", "CLOSEREQ", "CLOSING", "TIMEWAIT",
        "IGNORE", "INVALID",
    ]
);

/// TCP protocol info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpInfo {
    pub state: TcpState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wscale_orig: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wscale_reply: Option<u8>,
    /// `IP_CT_TCP_FLAG_*` bits of the original direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags_orig: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags_reply: Option<u8>,
}

/// SCTP protocol info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SctpInfo {
    pub state: SctpState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtag_orig: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtag_reply: Option<u32>,
}

/// DCCP protocol info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DccpInfo {
    pub state: DccpState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<u8>,
}

/// Accounting counters of one direction (needs `net.netfilter.nf_conntrack_acct=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// Start/stop timestamps in nanoseconds of CLOCK_REALTIME
/// (needs `net.netfilter.nf_conntrack_timestamp=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Timestamps {
    pub start: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<u64>,
}

/// One conntrack entry as ctnetlink reports it. Fields the kernel omits are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub family: Family,
    /// Layer-4 protocol number (same as `orig.proto`).
    pub proto: u8,
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: Status,
    /// Seconds left before the entry expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mark: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<u16>,
    /// Reference count (`use=` in conntrack's output).
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sctp: Option<SctpInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dccp: Option<DccpInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters_orig: Option<Counters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters_reply: Option<Counters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamps>,
    /// Connlabel bitmap, as the kernel sends it (bit n of the label set = byte n/8, bit n%8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
    /// Security context name (`CTA_SECCTX`), or the legacy `CTA_SECMARK` number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secctx: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secmark: Option<u32>,
}

impl Entry {
    /// An entry with these tuples and nothing else known: family and protocol from `orig`,
    /// no status bits, every optional field `None`.
    pub fn new(orig: Tuple, reply: Tuple) -> Self {
        Entry {
            family: orig.family(),
            proto: orig.proto,
            orig,
            reply,
            status: Status(0),
            timeout: None,
            mark: None,
            zone: None,
            use_count: None,
            id: None,
            tcp: None,
            sctp: None,
            dccp: None,
            counters_orig: None,
            counters_reply: None,
            timestamp: None,
            labels: None,
            helper: None,
            secctx: None,
            secmark: None,
        }
    }
}

impl Entry {
    /// Label bit numbers that are set.
    pub fn label_bits(&self) -> Vec<u32> {
        let Some(bytes) = &self.labels else {
            return Vec::new();
        };
        let mut bits = Vec::new();
        for (i, byte) in bytes.iter().enumerate() {
            for b in 0..8 {
                if byte & (1 << b) != 0 {
                    bits.push(i as u32 * 8 + b);
                }
            }
        }
        bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_conntrack() {
        let s = Status(Status::SEEN_REPLY | Status::ASSURED | Status::CONFIRMED);
        assert_eq!(s.names(), ["SEEN_REPLY", "ASSURED", "CONFIRMED"]);
        assert!(s.is_assured() && !s.is_unreplied());
        assert_eq!(Status::bit_from_name("assured"), Some(Status::ASSURED));
    }

    #[test]
    fn json_field_names() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let s = serde_json::to_value(Status(Status::SEEN_REPLY | 1 << 20)).unwrap();
        assert_eq!(s, serde_json::json!(["SEEN_REPLY", "BIT20"]));
        let t = serde_json::to_value(Tuple::ports(proto::UDP, a, a, 1, 2)).unwrap();
        assert_eq!(
            t,
            serde_json::json!({"src": "127.0.0.1", "dst": "127.0.0.1", "proto": 17, "sport": 1, "dport": 2})
        );
    }

    #[test]
    fn state_names() {
        assert_eq!(TcpState(3).name(), "ESTABLISHED");
        assert_eq!(TcpState(9).name(), "LISTEN");
        assert_eq!(TcpState::from_name("time_wait"), Some(TcpState(7)));
        assert_eq!(TcpState(200).name(), "UNKNOWN");
    }

    #[test]
    fn icmp_inversion() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let t = Tuple::icmp(a, a, 8, 0, 7).inverted();
        assert_eq!(t.icmp_type, Some(0));
        assert_eq!(proto::from_name("UDP"), Some(17));
        assert_eq!(proto::from_name("99"), Some(99));
    }
}

//! Event filters shared by `events` (and later `list`): netns, protocol, addresses, ports,
//! kinds. Every given filter must match.

use std::net::IpAddr;

use ct_netlink::proto;

use crate::event::{CtEvent, RecordKind, Side};

/// From the agent's socket every field is optional (empty matches everything) and an
/// unknown field or kind is refused.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    pub kinds: Vec<RecordKind>,
    pub netns: Option<u32>,
    pub proto: Option<u8>,
    /// Either end of either direction.
    pub addr: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// Either port of the original direction.
    pub port: Option<u16>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl Filter {
    pub fn matches(&self, ev: &CtEvent) -> bool {
        let o = &ev.orig;
        (self.kinds.is_empty() || self.kinds.contains(&ev.kind.into()))
            && self.netns.is_none_or(|n| n == ev.netns)
            && self.proto.is_none_or(|p| p == ev.protonum)
            && self
                .addr
                .is_none_or(|a| touches(&ev.orig, a) || touches(&ev.reply, a))
            && self.src.is_none_or(|a| o.src == a)
            && self.dst.is_none_or(|a| o.dst == a)
            && self
                .port
                .is_none_or(|p| o.sport == Some(p) || o.dport == Some(p))
            && self.sport.is_none_or(|p| o.sport == Some(p))
            && self.dport.is_none_or(|p| o.dport == Some(p))
    }
}

fn touches(side: &Side, a: IpAddr) -> bool {
    side.src == a || side.dst == a
}

/// `--proto`: a name conntrack(8) knows, or a number.
pub fn parse_proto(s: &str) -> Result<u8, String> {
    proto::from_name(s).ok_or_else(|| {
        format!(
            "unknown protocol {s:?}: use tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_by_name_or_number() {
        assert_eq!(parse_proto("udp"), Ok(17));
        assert_eq!(parse_proto("TCP"), Ok(6));
        assert_eq!(parse_proto("47"), Ok(47));
        assert!(parse_proto("foo").unwrap_err().contains("unknown protocol"));
    }

    #[test]
    fn socket_filter_refuses_unknown_kinds_and_fields() {
        let f: Filter = serde_json::from_str(r#"{"kinds": ["new", "lost"]}"#).unwrap();
        assert_eq!(f.kinds, [RecordKind::New, RecordKind::Lost]);
        let err = serde_json::from_str::<Filter>(r#"{"kinds": ["bogus"]}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `bogus`, expected one of `new`"),
            "{err}"
        );
        let err = serde_json::from_str::<Filter>(r#"{"source": "10.0.0.1"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `source`"), "{err}");
    }
}

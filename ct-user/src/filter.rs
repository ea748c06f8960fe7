//! Event filters shared by `events` (and later `list`): netns, protocol, addresses, ports,
//! kinds. Every given filter must match.

use std::net::IpAddr;

use ct_netlink::proto;

use crate::event::{CtEvent, Side};

/// The kinds a filter may name: every event kind, and `lost`.
pub const KINDS: [&str; 7] = [
    "new",
    "destroy",
    "insert_failed",
    "clash_resolved",
    "table_full",
    "early_drop",
    "lost",
];

/// From the agent's socket every field is optional (empty matches everything) and an
/// unknown field or kind is refused.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    #[serde(deserialize_with = "known_kinds")]
    pub kinds: Vec<String>,
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
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == ev.kind))
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

/// `kinds`, each one of [`KINDS`].
fn known_kinds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::{Deserialize as _, Error as _, Unexpected};
    let kinds = Vec::<String>::deserialize(d)?;
    if let Some(bad) = kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        let expected = format!("one of {}", KINDS.join(", "));
        return Err(D::Error::invalid_value(
            Unexpected::Str(bad),
            &expected.as_str(),
        ));
    }
    Ok(kinds)
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
        assert_eq!(f.kinds, ["new", "lost"]);
        let err = serde_json::from_str::<Filter>(r#"{"kinds": ["bogus"]}"#).unwrap_err();
        assert!(
            err.to_string().contains("\"bogus\", expected one of new"),
            "{err}"
        );
        let err = serde_json::from_str::<Filter>(r#"{"source": "10.0.0.1"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `source`"), "{err}");
    }
}

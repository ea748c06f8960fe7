//! What one namespace's events counted beyond attribution: entries born, by protocol,
//! and entries gone, by reason (`ctscope_new_total`, `ctscope_destroy_total`).

use std::collections::BTreeMap;

use ct_common::{DestroyReason, EventKind};
use ct_netlink::proto;

use crate::event::CtEvent;

/// Counts by label value; the values are names of a closed set (protocol names with
/// `unknown` for the rest, destroy reasons), so they stay few.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `new` events by protocol name.
    pub new: BTreeMap<&'static str, u64>,
    /// Entries that left the table by reason: `destroy` events, and `early_drop` events
    /// (tier 1 reports an eviction as that kind instead of a `destroy`).
    pub destroy: BTreeMap<&'static str, u64>,
}

impl Counts {
    pub fn count(&mut self, ev: &CtEvent) {
        let reason = match ev.kind {
            EventKind::New => {
                *self.new.entry(proto::name(ev.protonum)).or_default() += 1;
                return;
            }
            EventKind::Destroy => ev.reason.unwrap_or(DestroyReason::Unknown),
            EventKind::EarlyDrop => ev.reason.unwrap_or(DestroyReason::EarlyDrop),
            EventKind::InsertFailed | EventKind::ClashResolved | EventKind::TableFull => return,
        };
        *self.destroy.entry(reason.name()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    /// An event of `kind` with `cause` (a reason for destroys), of protocol `l4`.
    pub(crate) fn event(kind: EventKind, cause: u8, l4: u8) -> CtEvent {
        let mut raw = ct_common::Event::zeroed();
        raw.kind = kind as u8;
        raw.cause = cause;
        raw.l4proto = l4;
        raw.l3proto = 2; // AF_INET
        crate::event::decode(&raw, &Clock::new(250)).expect("a decodable event")
    }

    #[test]
    fn births_by_protocol_and_deaths_by_reason() {
        let mut c = Counts::default();
        for (kind, cause, l4) in [
            (EventKind::New, 0, proto::UDP),
            (EventKind::New, 0, proto::UDP),
            (EventKind::New, 0, 253),
            (EventKind::New, 0, 254),
            (EventKind::Destroy, DestroyReason::Timeout as u8, proto::UDP),
            (
                EventKind::Destroy,
                DestroyReason::TimeoutLookup as u8,
                proto::UDP,
            ),
            (
                EventKind::EarlyDrop,
                DestroyReason::EarlyDrop as u8,
                proto::UDP,
            ),
            (EventKind::InsertFailed, 1, proto::UDP),
        ] {
            c.count(&event(kind, cause, l4));
        }
        let new: Vec<_> = c.new.into_iter().collect();
        assert_eq!(
            new,
            [("udp", 2), ("unknown", 2)],
            "unknown protocols share one name"
        );
        let destroy: Vec<_> = c.destroy.into_iter().collect();
        assert_eq!(destroy, [("early_drop", 1), ("timeout", 2)]);
    }
}

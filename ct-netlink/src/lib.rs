//! An async (tokio) ctnetlink client: netfilter's conntrack table over netlink.
//!
//! Crate choice: the socket is `netlink-sys` (tokio `AsyncFd`, memberships, socket
//! options) and the framing `netlink-packet-core`, the maintained rust-netlink crates
//! behind rtnetlink. `netlink-packet-netfilter` adds nfgenmsg and the ctnetlink tuple,
//! status, TCP protoinfo, timeout and mark attributes; the rest (zone, counters,
//! timestamps, labels, id, use, ICMP ids, SCTP/DCCP, stats, expectations) is written
//! by hand in `attrs`, `stats` and `expect`. nlink has no conntrack support and
//! netlink-bindings (generated from YAML specs) is young and unproven here.
//!
//! A handle is bound to one network namespace: [`Conntrack::open`] uses the current
//! one, [`Conntrack::open_in_netns`] creates its socket inside another (in a
//! short-lived thread, so no runtime thread ever changes namespace). Both need a
//! tokio runtime. [`EventListener`] reports lost events as [`Event::Overrun`]; after
//! one, resync with [`Conntrack::dump`].
//!
//! Public types serialize (serde) with stable snake_case field names; absent
//! attributes are omitted, status is a list of `IPS_*` names, protocol states are
//! conntrack-tools' names (`ESTABLISHED`, ...).

mod attrs;
mod decode;
mod entry;
mod error;
mod events;
mod expect;
mod netns;
mod ops;
mod socket;
mod stats;

pub use decode::{Message, decode_datagram};
pub use entry::{
    Counters, DccpInfo, DccpState, Entry, Family, SctpInfo, SctpState, Status, TcpInfo, TcpState,
    Timestamps, Tuple, proto,
};
pub use error::{Error, Result};
pub use events::{Event, EventGroups, EventKind, EventListener, ListenerOptions};
pub use expect::{Expectation, NewExpectation};
pub use netns::{netns_path, run_in};
pub use ops::{Conntrack, DumpFilter, NatRange, NewEntry, Table, TupleFilter, Update};
pub use stats::{CpuStats, ExpCpuStats, GlobalStats};

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>(_: &T) {}

    /// Handles and their futures can move into `tokio::spawn`.
    #[allow(dead_code)]
    fn handles_and_futures_are_send(ct: &mut Conntrack, l: &mut EventListener) {
        send(&ct.dump(None));
        send(&ct.stats_cpu());
        send(&ct.expectations(None));
        send(&l.next());
    }

    #[test]
    fn types_are_send() {
        fn is_send<T: Send + Sync>() {}
        is_send::<Conntrack>();
        is_send::<EventListener>();
        is_send::<Error>();
    }
}

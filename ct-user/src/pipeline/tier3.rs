//! Tier 3: no BPF at all. ctnetlink NEW and DESTROY events, as `conntrack -E` gets them,
//! turned into ctscope's event records. No causes or reasons, nothing about failed
//! inserts, and a full socket buffer loses events (reported as `lost`).

use anyhow::Context as _;
use ct_common::{DestroyReason, EventKind};
use ct_netlink::{Entry, EventGroups, EventListener, ListenerOptions};

use crate::{
    event::{CtEvent, Proto, Side},
    sys::caps::{self, Cap},
    sys::netns,
};

/// A listener in the namespace `--netns` names (ctscope's own without one), and its
/// inode. ctnetlink events are per namespace, so tier 3 watches exactly one.
pub fn subscribe(netns_arg: Option<&str>) -> anyhow::Result<(EventListener, u32)> {
    caps::require(&[Cap::NetAdmin], "tier 3 (ctnetlink events)")?;
    let (netns, inode) = match netns_arg.map(netns::resolve).transpose()? {
        Some(named) if !named.current => {
            caps::require(
                &[Cap::SysAdmin],
                &format!("entering network namespace {:?}", named.path),
            )?;
            (Some(named.path), named.inode)
        }
        _ => (
            None,
            netns::own_inode().context("ctscope's own network namespace: /proc/self/ns/net")?,
        ),
    };
    let opts = ListenerOptions {
        netns,
        ..ListenerOptions::default()
    };
    let listener = EventListener::subscribe(EventGroups::NEW | EventGroups::DESTROY, &opts)
        .context("subscribing to ctnetlink events")?;
    Ok((listener, inode))
}

/// One ctnetlink event as a ctscope record.
pub fn to_event(kind: ct_netlink::EventKind, e: &Entry, netns: u32) -> CtEvent {
    let destroy = kind == ct_netlink::EventKind::Destroy;
    CtEvent {
        ts: crate::clock::wall_now(),
        kind: if destroy {
            EventKind::Destroy
        } else {
            EventKind::New
        },
        cause: None,
        reason: destroy.then_some(DestroyReason::Unknown),
        via: None,
        proto: Proto::from_number(e.proto),
        protonum: e.proto,
        family: match e.family {
            ct_netlink::Family::Ipv4 => "ipv4",
            ct_netlink::Family::Ipv6 => "ipv6",
        },
        orig: Side::from(&e.orig),
        reply: Side::from(&e.reply),
        status: e.status,
        tcp_state: e.tcp.as_ref().map(|t| t.state),
        mark: e.mark.unwrap_or(0),
        zone: e.zone.unwrap_or(0),
        netns,
        timeout: e.timeout.map(i64::from),
        pid: 0,
        winner: None,
        nat: Vec::new(),
        from_ctnetlink: false,
        unverified: false,
        ct: 0,
    }
}

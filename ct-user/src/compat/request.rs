//! What -I/-A, -U and -G send: the tuples, the new entry and each entry's update,
//! built from the parsed command line as conntrack builds them.

use std::net::IpAddr;

use ct_netlink::{Entry, NatRange, NewEntry, Status, TcpState, Tuple, Update, proto};

use super::{
    Fail, labels,
    parse::{NatArg, Parsed, ProtoKind, opt},
};

/// The original tuple the options describe (for -G and expectations).
pub(super) fn orig_tuple(p: &Parsed) -> Option<Tuple> {
    let (src, dst) = (p.orig_src?.addr, p.orig_dst?.addr);
    Some(tuple(p, src, dst, p.l4.sport, p.l4.dport))
}

pub(super) fn tuple(
    p: &Parsed,
    src: IpAddr,
    dst: IpAddr,
    sport: Option<u16>,
    dport: Option<u16>,
) -> Tuple {
    let num = p.proto.unwrap_or(0);
    match ProtoKind::of(num) {
        ProtoKind::Icmp | ProtoKind::Icmpv6 => Tuple::icmp(
            src,
            dst,
            p.l4.icmp_type.unwrap_or(0),
            p.l4.icmp_code.unwrap_or(0),
            p.l4.icmp_id.unwrap_or(0),
        ),
        ProtoKind::Ports(_) | ProtoKind::Gre => {
            Tuple::ports(num, src, dst, sport.unwrap_or(0), dport.unwrap_or(0))
        }
        ProtoKind::Other => {
            let mut t = Tuple::ports(num, src, dst, 0, 0);
            t.src_port = None;
            t.dst_port = None;
            t
        }
    }
}

/// Whether the command would send SCTP's or DCCP's protocol info, which ct-netlink
/// does not encode.
pub(super) fn sets_sctp_dccp_info(p: &Parsed) -> bool {
    let l4 = &p.l4;
    l4.sctp_state.is_some()
        || l4.dccp_state.is_some()
        || l4.vtag_orig.is_some()
        || l4.vtag_reply.is_some()
        || l4.dccp_role.is_some()
}

/// -I / -A: the entry to create (reply set up from the original or the reverse).
pub(super) fn new_entry(p: &Parsed) -> Result<NewEntry, Fail> {
    let orig = p
        .orig_src
        .zip(p.orig_dst)
        .map(|(s, d)| tuple(p, s.addr, d.addr, p.l4.sport, p.l4.dport));
    let reply = p
        .reply_src
        .zip(p.reply_dst)
        .map(|(s, d)| tuple(p, s, d, p.l4.reply_sport, p.l4.reply_dport));
    let (mut orig, reply) = match (orig, reply) {
        (Some(o), r) => (o, r),
        (None, Some(r)) => (r.inverted(), Some(r)),
        (None, None) => {
            return Err(Fail::Param(
                "you have to specify `--src' and `--dst'".into(),
            ));
        }
    };
    // Directional zones go into their own tuple only (conntrack's reply set-up does
    // not copy the original's zone).
    let mut reply = reply.unwrap_or_else(|| orig.inverted());
    orig.zone = p.orig_zone;
    reply.zone = p.reply_zone;
    let mut n = NewEntry::new(orig, p.timeout.unwrap_or(0));
    n.reply = Some(reply);
    n.status = (p.options & opt::STATUS != 0).then_some(p.status);
    n.mark = p.mark.map(|(m, _)| m);
    n.zone = p.zone;
    n.tcp_state = p.l4.state.map(TcpState);
    // libnetfilter_conntrack sends the NAT port only for TCP and UDP.
    let with_port = matches!(p.proto, Some(proto::TCP | proto::UDP));
    let range = |nat: Option<NatArg>| {
        nat.and_then(|a| {
            Some(NatRange {
                addr: a.addr?,
                port: a.port.filter(|_| with_port),
            })
        })
    };
    if p.options & opt::ADD_LABEL != 0 {
        let bits = p.label_modify.clone().unwrap_or_default();
        n.labels = Some(labels::bytes_of(&bits, 0));
    }
    n.src_nat = range(p.src_nat);
    n.dst_nat = range(p.dst_nat);
    Ok(n)
}

/// The change -U makes to `e`, or None when it would change nothing (conntrack then
/// skips the entry and does not count it).
pub(super) fn update_for(p: &Parsed, e: &Entry) -> Option<Update> {
    let mut u = Update::new(e.orig.clone());
    u.zone = e.zone;
    let mut changed = false;
    if let Some(t) = p.timeout {
        u.timeout = Some(t);
        changed |= e.timeout != Some(t);
    }
    if let Some((value, mask)) = p.mark {
        let old = e.mark.unwrap_or(0);
        let new = (old & !mask) ^ value;
        u.mark = Some(new);
        changed |= e.mark != Some(new);
    }
    if p.options & opt::STATUS != 0 {
        let new = e.status.0 | p.status;
        u.status = Some(new & !(Status::DYING));
        changed |= new != e.status.0;
    }
    if let Some(s) = p.l4.state
        && e.proto == proto::TCP
    {
        u.tcp_state = Some(TcpState(s));
        changed |= e.tcp.as_ref().is_none_or(|t| t.state.0 != s);
    }
    if p.options & (opt::ADD_LABEL | opt::DEL_LABEL) != 0 {
        let modify = p.label_modify.clone().unwrap_or_default();
        let add = p.options & opt::ADD_LABEL != 0;
        match e.labels.as_deref() {
            // conntrack sends labels and a mask as long as the kernel's, which makes
            // every entry with labels count as updated, even when nothing changes.
            Some(have) => {
                let mut bits = labels::bits_of(have);
                if add {
                    bits.extend(modify);
                } else if p.label_modify.is_some() {
                    bits.retain(|b| !modify.contains(b));
                } else {
                    bits.clear();
                }
                u.labels = Some(labels::bytes_of(&bits, have.len()));
                changed = true;
            }
            None if add => {
                u.labels = Some(labels::bytes_of(&modify, 0));
                changed = true;
            }
            None => {}
        }
    }
    changed.then_some(u)
}

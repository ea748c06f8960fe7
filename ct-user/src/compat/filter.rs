//! Which entries a command line selects, compared in userspace the way conntrack's
//! filter callbacks compare them (its kernel-side filters give the same answers).

use std::net::IpAddr;

use ct_netlink::{Entry, proto};

use super::{
    Fail, labels,
    output::{is_dnat, is_dpat, is_snat, is_spat},
    parse::{AddrArg, Cmd, NatArg, Parsed, TableArg, opt},
};

/// `-l`: the entry has every label asked for.
pub(super) fn labels_match(p: &Parsed, e: &Entry) -> bool {
    p.label_filter.as_ref().is_none_or(|want| {
        e.labels
            .as_deref()
            .is_some_and(|have| want.is_subset(&labels::bits_of(have)))
    })
}

/// The masked address test of `-s ADDR/BITS` and `--mask-src`: `addr & mask == net &
/// mask` (masks need not be contiguous).
pub(super) fn in_network(addr: IpAddr, net: IpAddr, mask: IpAddr) -> bool {
    match (addr, net, mask) {
        (IpAddr::V4(a), IpAddr::V4(n), IpAddr::V4(m)) => {
            let m = u32::from(m);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n), IpAddr::V6(m)) => {
            let m = u128::from(m);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// One address of the original tuple against -s/-d and their mask.
pub(super) fn addr_matches(
    p: &Parsed,
    e: &Entry,
    want: Option<AddrArg>,
    mask: Option<IpAddr>,
    have: IpAddr,
) -> bool {
    match (want, mask) {
        (Some(a), Some(m)) => p.family == Some(e.family) && in_network(have, a.addr, m),
        (Some(a), None) => a.addr == have,
        (None, _) => true,
    }
}

/// conntrack's nfct_filter_init: a mask needs its address (checked when the command
/// runs, after the option checks).
pub(super) fn check_masks(p: &Parsed) -> Result<(), Fail> {
    if p.options & opt::MASK_SRC != 0 && p.options & opt::ORIG_SRC == 0 {
        return Err(Fail::Param("Can't use --mask-src without --src".into()));
    }
    if p.options & opt::MASK_DST != 0 && p.options & opt::ORIG_DST == 0 {
        return Err(Fail::Param("Can't use --mask-dst without --dst".into()));
    }
    Ok(())
}

pub(super) fn eq<T: PartialEq>(want: Option<T>, have: Option<T>) -> bool {
    want.is_none() || want == have
}

/// conntrack's filter_nat for -n/-g/-j given as filters.
pub(super) fn nat_matches(p: &Parsed, e: &Entry) -> bool {
    let check = |nat: Option<NatArg>, addr_hit: bool, port_hit: bool, any: bool| -> bool {
        let Some(n) = nat else { return false };
        match (n.addr, n.port) {
            (None, None) => any,
            (Some(_), None) => addr_hit,
            (None, Some(_)) => port_hit,
            (Some(_), Some(_)) => addr_hit && port_hit,
        }
    };
    let snat_arg = p.src_nat.or(p.any_nat);
    let dnat_arg = p.dst_nat.or(p.any_nat);
    let has_src = check(
        snat_arg,
        snat_arg
            .and_then(|n| n.addr)
            .is_some_and(|a| is_snat(e) && a == e.reply.dst),
        snat_arg
            .and_then(|n| n.port)
            .is_some_and(|port| is_spat(e) && Some(port) == e.reply.dst_port),
        is_snat(e) || is_spat(e),
    );
    let has_dst = check(
        dnat_arg,
        dnat_arg
            .and_then(|n| n.addr)
            .is_some_and(|a| is_dnat(e) && a == e.reply.src),
        dnat_arg
            .and_then(|n| n.port)
            .is_some_and(|port| is_dpat(e) && Some(port) == e.reply.src_port),
        is_dnat(e) || is_dpat(e),
    );
    if p.options & opt::ANY_NAT != 0 {
        has_src || has_dst
    } else if p.options & opt::SRC_NAT != 0 && p.options & opt::DST_NAT != 0 {
        has_src && has_dst
    } else if p.options & opt::SRC_NAT != 0 {
        has_src
    } else if p.options & opt::DST_NAT != 0 {
        has_dst
    } else {
        true
    }
}

/// Whether the tuple's port fields take part in filtering: libnetfilter_conntrack's
/// comparison has no GRE keys, so conntrack's GRE key options never filter.
pub(super) fn ports_filter(e: &Entry) -> bool {
    e.proto != proto::GRE
}

/// The tuple part of conntrack's template comparison (original direction).
pub(super) fn orig_matches(p: &Parsed, e: &Entry) -> bool {
    let ports = ports_filter(e);
    addr_matches(p, e, p.orig_src, p.mask_src, e.orig.src)
        && addr_matches(p, e, p.orig_dst, p.mask_dst, e.orig.dst)
        && eq(p.proto, Some(e.proto))
        && (!ports || eq(p.l4.sport, e.orig.src_port))
        && (!ports || eq(p.l4.dport, e.orig.dst_port))
        && eq(p.l4.icmp_type, e.orig.icmp_type)
        && eq(p.l4.icmp_code, e.orig.icmp_code)
        && eq(p.l4.icmp_id, e.orig.icmp_id)
}

/// The reply-direction part.
pub(super) fn reply_matches(p: &Parsed, e: &Entry) -> bool {
    eq(p.reply_src, Some(e.reply.src))
        && eq(p.reply_dst, Some(e.reply.dst))
        && eq(p.proto, Some(e.proto))
        && (!ports_filter(e) || eq(p.l4.reply_sport, e.reply.src_port))
        && (!ports_filter(e) || eq(p.l4.reply_dport, e.reply.dst_port))
}

/// Whether `-u` goes to the kernel's dump filter (`-L` of the main table), as conntrack
/// sends it.
pub(super) fn kernel_filters_status(p: &Parsed) -> bool {
    p.cmd == Some(Cmd::List) && p.table == TableArg::Conntrack && p.options & opt::STATUS != 0
}

/// -L, -D and -E filters (conntrack's nfct_filter).
pub(super) fn matches(p: &Parsed, e: &Entry) -> bool {
    let mark_ok = p
        .mark
        .is_none_or(|(v, mask)| e.mark.is_some_and(|m| m & mask == v));
    // -L of the other tables applies (status, mask) here; everything else requires the
    // named bits, as conntrack's own filter does, and -L of the main table also hands
    // the mask to the kernel (which 5.17+ applies and older kernels ignore).
    let status_ok = p.options & opt::STATUS == 0 || {
        let mask = if p.cmd == Some(Cmd::List) && !kernel_filters_status(p) {
            p.status_mask | p.status
        } else {
            p.status
        };
        e.status.0 & mask == p.status
    };
    let state_ok =
        p.l4.state
            .is_none_or(|s| e.tcp.as_ref().is_some_and(|t| t.state.0 == s))
            && p.l4
                .sctp_state
                .is_none_or(|s| e.sctp.as_ref().is_some_and(|i| i.state.0 == s))
            && p.l4
                .dccp_state
                .is_none_or(|s| e.dccp.as_ref().is_some_and(|i| i.state.0 == s));
    nat_matches(p, e)
        && labels_match(p, e)
        && mark_ok
        && orig_matches(p, e)
        && reply_matches(p, e)
        && status_ok
        && state_ok
        && eq(p.zone, Some(e.zone.unwrap_or(0)))
        && eq(p.orig_zone, Some(e.orig.zone.unwrap_or(0)))
        && eq(p.reply_zone, Some(e.reply.zone.unwrap_or(0)))
        // An entry without a secmark (a kernel without CONFIG_NF_CONNTRACK_SECMARK
        // sends none) is not compared, as in libnetfilter_conntrack's nfct_cmp.
        && (e.secmark.is_none() || eq(p.secmark, e.secmark))
        && eq(p.id, e.id)
}

/// -U selects by NAT, masks, id and the tuples only (mark and status are new values).
pub(super) fn update_matches(p: &Parsed, e: &Entry) -> bool {
    nat_matches(p, e)
        && labels_match(p, e)
        && eq(p.id, e.id)
        && (p.options & (opt::ORIG_SRC | opt::ORIG_DST | opt::PROTO) == 0 || orig_matches(p, e))
        && (p.options & (opt::REPL_SRC | opt::REPL_DST | opt::PROTO) == 0 || reply_matches(p, e))
        && p.l4.state.is_none_or(|_| true)
}

//! Tier 2: the conntrack lifecycle from tracepoints alone, for kernels without kprobes or
//! fentry (DESIGN.md hook plan (C), KERNEL.md §4).
//!
//! - `kmem_cache_free` on the `nf_conntrack` slab: the end of every entry, with its fields
//!   still intact. Confirmed entries give `destroy`; the reason comes from expiry, TCP
//!   state, a dying namespace and whether a kworker freed it. Unconfirmed entries freed
//!   without a netfilter drop are merged clash losers (or nothing): a candidate.
//! - `net_dev_queue`: the first time an entry shows up confirmed on egress is its `new`
//!   (or, with IPS_NAT_CLASH, the reply-only insert of a NAT clash).
//! - `kfree_skb` with NETFILTER_DROP: an unconfirmed entry is an insert failure (or a rule
//!   drop); no entry at all is a table-full drop (or a rule or invalid drop).
//!
//! What the tracepoints cannot decide is marked `FLAG_UNVERIFIED`; the agent settles it
//! against the namespace's ctnetlink counters (insert_failed, drop, clash_resolve,
//! early_drop), so a candidate only becomes an event when the kernel counted one.

use aya_ebpf::{
    helpers::bpf_get_current_comm,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use ct_common::{ABSENT, Cause, DestroyReason, Event, EventKind, FLAG_UNVERIFIED, floor, stat};

use crate::{
    emit::{RawRecord, count, emit, raw_layout, reserve_and_discard},
    entry::{Entry, Fields},
    kernel::{
        IP_CT_ESTABLISHED, IP_CT_NEW, IPPROTO_TCP, IPS_CONFIRMED, IPS_DYING, IPS_NAT_CLASH,
        TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_TIME_WAIT, btf_skb_nfct, called_from, ct_status,
        deadline_left, fill_from_ct, net_inum, netfilter_drop, off, read, skb_ct,
    },
};

/// IPS_ASSURED: both directions seen (TCP: the handshake done); never set on NAT-clash
/// entries.
const IPS_ASSURED: u64 = 1 << 2;
/// IPS_SRC_NAT | IPS_DST_NAT: the entry is NATed, so a clash is in the reply direction.
const IPS_NAT_MASK: u64 = (1 << 4) | (1 << 5);
const AF_INET: u8 = 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const AF_INET6: u8 = 10;

/// Slots of the first-seen filter (2 MiB).
const SEEN_SLOTS: u32 = 1 << 18;
/// Slots of the filter for entries without a reply yet (32 KiB: stays in cache).
const RECENT_SLOTS: u32 = 1 << 12;
const CT_NETNS_ENTRIES: u32 = 4096;

/// A `ct_common::floor`, set by the loader for the benchmark (`events --floor`).
#[unsafe(no_mangle)]
static FLOOR: u32 = floor::NONE;

/// The `nf_conntrack` slab cache, learned from its name on first sight.
#[map]
static CT_CACHE: Array<u64> = Array::with_max_entries(1, 0);

/// Caches seen not to be `nf_conntrack`, per CPU, direct-mapped by address: until the
/// first conntrack entry is freed, every slab free would otherwise read its cache's name.
#[map]
static NOT_CT_CACHES: PerCpuArray<u64> = PerCpuArray::with_max_entries(NOT_CT_SLOTS, 0);
const NOT_CT_SLOTS: u32 = 16;

/// Entries already reported as `new`, direct-mapped by address: one array slot per hash,
/// cleared when its entry is freed (so a recycled address is new again). A collision
/// evicts, and two CPUs can report one entry at once; both only repeat a `new`, which the
/// agent drops (it knows the live entries). An LRU hash would be exact but costs an
/// insert per new entry on the packet path.
#[map]
static SEEN: Array<u64> = Array::with_max_entries(SEEN_SLOTS, 0);

/// [`SEEN`]'s small twin, looked at first: it stays in cache. Packets of entries without
/// a reply (`IP_CT_NEW`) look only here, since a flood of new flows would miss the cache
/// on every SEEN lookup (140 ns a flow, measured); an entry's next packets, replies
/// included, mostly find it here too.
#[map]
static RECENT: Array<u64> = Array::with_max_entries(RECENT_SLOTS, 0);

/// Namespaces (by inode) where conntrack holds entries: learned from every entry seen,
/// and seeded by the agent at start. A drop without an entry elsewhere is a rule's drop
/// in a namespace without conntrack, never a table-full drop, so it is not reported.
#[map]
static CT_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(CT_NETNS_ENTRIES, 0);

/// The last namespace [`note_netns`] recorded on this CPU.
#[map]
static LAST_NETNS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The entry of the last netfilter drop on this CPU: its free right after is not a merge.
#[map]
static LAST_DROP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// A raw tracepoint, not tp_btf: before ~6.2 the verifier refuses tp_btf reads of this
// tracepoint's `const void *ptr` ("type UNKNOWN is not a struct").
#[raw_tracepoint(tracepoint = "kmem_cache_free")]
pub fn t2_ct_free(ctx: RawTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    // Args: (call_site, ptr, s) — `s` is the cache, or its name before 6.2; 5.10 has
    // only (call_site, ptr), and the call site tells (`s` is then never read: the
    // verifier follows the constant branch, and the attach checks the arguments read).
    let ptr: u64 = ctx.arg(1);
    if ptr == 0 {
        return 0;
    }
    let ct = if off(|l| &l.kmem_free_arg_is_name) == ABSENT {
        called_from(ctx.arg(0), |c| &c.ct_free)
    } else {
        is_ct_cache(ctx.arg(2))
    };
    if !ct {
        return 0;
    }
    forget(ptr);
    // Status first: unconfirmed frees (every new packet a rule drops) reserve no record.
    let status = ct_status(ptr);
    if status & IPS_CONFIRMED == 0 {
        freed_unconfirmed(ptr);
    } else if !raw_layout() {
        destroyed(Fields(ptr), status);
    } else if let Some(rec) = RawRecord::reserve(ptr, EventKind::Destroy) {
        destroyed(rec, status);
    }
    0
}

/// An entry freed unconfirmed without a drop: a clash loser merged into the winner, or an
/// entry whose packet died elsewhere. The clash_resolve counter decides.
#[inline(always)]
fn freed_unconfirmed(ct: u64) {
    if take_last_drop(ct) {
        return;
    }
    emit(EventKind::ClashResolved, Cause::Merged as u8, |e| {
        fill_from_ct(e, ct);
        e.flags |= FLAG_UNVERIFIED;
    });
}

#[btf_tracepoint(function = "net_dev_queue")]
pub fn t2_dev_queue(ctx: BtfTracePointContext) -> u32 {
    if empty() {
        return 0;
    }
    let nfct = btf_skb_nfct(ctx.arg(0));
    let ct = nfct & !7;
    // Original direction after a reply: the entry left before and was reported then (or
    // is older than ctscope, and the agent's dump has it). Spares the first-seen lookup
    // for most packets.
    if ct == 0 || nfct & 7 == IP_CT_ESTABLISHED {
        return 0;
    }
    let hash = seen_hash(ct);
    let Some(recent) = RECENT.get_ptr_mut(hash & (RECENT_SLOTS - 1)) else {
        return 0;
    };
    // SAFETY (every slot below): slots of our own arrays; racing writers only cause a
    // repeated `new`.
    // An entry reported moments ago (its first packet, then its replies): the small
    // array is likely in cache, and a hit spares both the entry's status read and SEEN.
    if unsafe { *recent } == ct {
        return 0;
    }
    // A reply-direction (or related) packet of an assured entry: the entry's first
    // packets, before it was assured, left before this one and reported it. One read of
    // the entry, likely in cache, spares the first-seen lookup, likely not (measured:
    // most reply packets of short TCP flows).
    if nfct & 7 != IP_CT_NEW && ct_status(ct) & IPS_ASSURED != 0 {
        return 0;
    }
    let Some(seen) = SEEN.get_ptr_mut(hash & (SEEN_SLOTS - 1)) else {
        return 0;
    };
    // No reply yet (`IP_CT_NEW`): mostly an entry's very first packet, which RECENT
    // answered; SEEN, a likely cache miss, is then only written.
    if (nfct & 7 != IP_CT_NEW && unsafe { *seen } == ct) || !report_first_egress(ct) {
        return 0;
    }
    unsafe {
        *recent = ct;
        *seen = ct;
    }
    0
}

/// Reports entry `ct`, seen leaving and not known to have left before; false if it is
/// not confirmed yet (nothing reported).
#[inline(always)]
fn report_first_egress(ct: u64) -> bool {
    match bench_floor() {
        floor::FILTER => return true,
        floor::RING => {
            reserve_and_discard();
            return true;
        }
        _ => {}
    }
    if !raw_layout() {
        return first_egress(Fields(ct));
    }
    match RawRecord::reserve(ct, EventKind::New) {
        Some(rec) => first_egress(rec),
        // A full ring buffer counts as reported: the loss is counted, the agent reseeds.
        None => true,
    }
}

/// [`report_first_egress`] for an entry read through `entry`.
#[inline(always)]
fn first_egress(entry: impl Entry) -> bool {
    let status: u64 = entry.field(off(|l| &l.ct_status)).unwrap_or(0);
    if status & IPS_CONFIRMED == 0 {
        entry.discard();
        return false;
    }
    let netns = net_inum(entry.field(off(|l| &l.ct_net)).unwrap_or(0));
    note_netns(netns);
    if status & IPS_NAT_CLASH != 0 {
        // Unverified only so the agent looks up the winner and counts it as a clash.
        let cause = Cause::NatClashReplyOnly as u8;
        entry.send(EventKind::ClashResolved, cause, netns, FLAG_UNVERIFIED);
    } else {
        entry.send(EventKind::New, 0, netns, 0);
    }
    true
}

#[inline(always)]
fn bench_floor() -> u32 {
    // SAFETY: volatile read of a loader-set u32 global.
    unsafe { core::ptr::read_volatile(&FLOOR) }
}

#[inline(always)]
fn empty() -> bool {
    bench_floor() == floor::EMPTY
}

/// The first-seen hash of entry `ct` (objects are 256-byte aligned or so: drop low bits);
/// its low bits pick the slot in [`SEEN`] and [`RECENT`].
#[inline(always)]
fn seen_hash(ct: u64) -> u32 {
    ((ct >> 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 46) as u32
}

/// Clears `ct`'s first-seen slots that hold `ct`: the address may come back as a new entry.
#[inline(always)]
fn forget(ct: u64) {
    let hash = seen_hash(ct);
    clear_if(SEEN.get_ptr_mut(hash & (SEEN_SLOTS - 1)), ct);
    clear_if(RECENT.get_ptr_mut(hash & (RECENT_SLOTS - 1)), ct);
}

#[inline(always)]
fn clear_if(slot: Option<*mut u64>, ct: u64) {
    if let Some(slot) = slot {
        // SAFETY: a slot of our own array.
        unsafe {
            if *slot == ct {
                *slot = 0;
            }
        }
    }
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn t2_nf_drop(ctx: BtfTracePointContext) -> u32 {
    if empty() {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    if !netfilter_drop(|i| ctx.arg(i)) {
        return 0;
    }
    let ct = skb_ct(skb);
    // Tier 2 counts here what tier 1's `kfree_skb` program counts (it is not attached).
    count(if ct != 0 {
        stat::NF_DROPS_WITH_CT
    } else {
        stat::NF_DROPS_NO_CT
    });
    if ct == 0 {
        // No entry: table full (or an invalid packet a rule dropped).
        let netns = net_inum(skb_net(skb));
        // SAFETY: a lookup in our own map; the value is not kept.
        if unsafe { CT_NETNS.get(netns) }.is_none() {
            return 0;
        }
        emit(EventKind::TableFull, Cause::TableFull as u8, |e| {
            e.netns = netns;
            packet_tuple(skb, e);
            e.flags |= FLAG_UNVERIFIED;
        });
        return 0;
    }
    let status = ct_status(ct);
    if status & IPS_CONFIRMED != 0 {
        return 0; // A rule dropped a packet of an entry already in the table.
    }
    if let Some(slot) = LAST_DROP.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot = ct };
    }
    let cause = if status & IPS_DYING != 0 {
        Cause::Dying
    } else if status & IPS_NAT_MASK != 0 {
        Cause::NatPortClash
    } else {
        Cause::SameFlowRace
    };
    emit(EventKind::InsertFailed, cause as u8, |e| {
        fill_from_ct(e, ct);
        e.flags |= FLAG_UNVERIFIED;
    });
    0
}

/// Remembers namespace `inum` as one where conntrack runs. A per-CPU copy of the last one
/// noted spares the hash lookup for runs of entries from one namespace.
#[inline(always)]
fn note_netns(inum: u32) {
    let Some(last) = LAST_NETNS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
    if inum == 0 || unsafe { *last } == inum {
        return;
    }
    // SAFETY: a lookup in our own map; the value is not kept.
    if unsafe { CT_NETNS.get(inum) }.is_none() {
        let _ = CT_NETNS.insert(inum, 1, 0);
    }
    // SAFETY: as above.
    unsafe { *last = inum };
}

/// True for the `nf_conntrack` slab; the cache pointer is remembered once seen.
#[inline(always)]
fn is_ct_cache(s: u64) -> bool {
    let Some(slot) = CT_CACHE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: our own one-element array; a racing writer stores the same value.
    let known = unsafe { *slot };
    // Every slab free on the machine comes here: the learned pointer decides first.
    if known != 0 {
        return s == known;
    }
    let by_name = off(|l| &l.kmem_free_arg_is_name);
    if by_name == 1 {
        return is_ct_cache_name(s);
    }
    if by_name != 0 {
        return false;
    }
    // Caches are 64-byte aligned at least: the bits above pick the slot.
    let not_ct = NOT_CT_CACHES.get_ptr_mut((s >> 6) as u32 & (NOT_CT_SLOTS - 1));
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
    if not_ct.is_some_and(|miss| unsafe { *miss } == s) {
        return false;
    }
    let name: u64 = read(s, off(|l| &l.kmem_cache_name)).unwrap_or(0);
    if !is_ct_cache_name(name) {
        if let Some(miss) = not_ct {
            // SAFETY: as above.
            unsafe { *miss = s };
        }
        return false;
    }
    // SAFETY: as above.
    unsafe { *slot = s };
    true
}

/// Compares the C string at `name` with "nf_conntrack" (not "nf_conntrack_expect").
#[inline(always)]
fn is_ct_cache_name(name: u64) -> bool {
    read::<[u8; 13]>(name, 0).is_some_and(|n| &n == b"nf_conntrack\0")
}

/// Reports a confirmed entry's end. Early-drop and ctnetlink deletions look alike from
/// here (a non-worker task, not expired); they go out `Unknown` and unverified, and the
/// agent tells them apart with the early_drop counter.
#[inline(always)]
fn destroyed(entry: impl Entry, status: u64) {
    let net: u64 = entry.field(off(|l| &l.ct_net)).unwrap_or(0);
    let reason = destroy_reason(
        &Signals::of(&entry, status),
        freed_by_kworker(),
        netns_dying(net),
    );
    let netns = net_inum(net);
    note_netns(netns);
    entry.send(
        EventKind::Destroy,
        reason as u8,
        netns,
        unverified_if_unknown(reason),
    );
}

#[inline(always)]
fn freed_by_kworker() -> bool {
    bpf_get_current_comm().is_ok_and(|c| c.starts_with(b"kworker/"))
}

#[inline(always)]
fn unverified_if_unknown(reason: DestroyReason) -> u8 {
    if reason == DestroyReason::Unknown {
        FLAG_UNVERIFIED
    } else {
        0
    }
}

/// What the destroy reason depends on, read from the entry.
struct Signals {
    left: i32,
    l4proto: u8,
    tcp_state: u8,
}

impl Signals {
    /// Read from an entry with status `status` (confirmed: its timeout is a deadline).
    #[inline(always)]
    fn of(entry: &impl Entry, status: u64) -> Self {
        let l4proto: u8 = entry.field(proto_offset()).unwrap_or(0);
        let left = match entry.field::<u32>(off(|l| &l.ct_timeout)) {
            None => i32::MIN,
            Some(deadline) => deadline_left(deadline, status),
        };
        Signals {
            left,
            l4proto,
            tcp_state: if l4proto == IPPROTO_TCP {
                entry.field(off(|l| &l.ct_tcp_state)).unwrap_or(0)
            } else {
                0
            },
        }
    }
}

/// Offset of the original tuple's protocol number in `struct nf_conn`.
#[inline(always)]
fn proto_offset() -> u32 {
    off(|l| &l.ct_tuplehash)
        .wrapping_add(off(|l| &l.tuplehash_tuple))
        .wrapping_add(off(|l| &l.tuple_dst_protonum))
}

#[inline(always)]
fn destroy_reason(sig: &Signals, kworker: bool, netns_dying: bool) -> DestroyReason {
    let expired = sig.left != i32::MIN && sig.left <= 0;
    let closed = sig.l4proto == IPPROTO_TCP
        && (sig.tcp_state == TCP_CONNTRACK_CLOSE || sig.tcp_state == TCP_CONNTRACK_TIME_WAIT);
    if netns_dying {
        DestroyReason::NetnsExit
    } else if expired && kworker {
        DestroyReason::Timeout
    } else if expired {
        DestroyReason::TimeoutLookup
    } else if closed {
        DestroyReason::TcpClose
    } else if kworker {
        DestroyReason::GcEvict
    } else {
        DestroyReason::Unknown
    }
}

/// The namespace's refcount is zero while `cleanup_net` tears it down.
#[inline(always)]
fn netns_dying(net: u64) -> bool {
    off(|l| &l.net_ns_ref) != ABSENT && read::<u32>(net, off(|l| &l.net_ns_ref)) == Some(0)
}

/// Takes this CPU's last-dropped entry if it is `ct`.
#[inline(always)]
fn take_last_drop(ct: u64) -> bool {
    let Some(slot) = LAST_DROP.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
    unsafe {
        if *slot != ct {
            return false;
        }
        *slot = 0;
    }
    true
}

/// The namespace of a packet: its socket's (local output) or its device's.
#[inline(always)]
fn skb_net(skb: u64) -> u64 {
    let sk: u64 = read(skb, off(|l| &l.skb_sk)).unwrap_or(0);
    if let Some(net) = read::<u64>(sk, off(|l| &l.sk_net)).filter(|&n| n != 0) {
        return net;
    }
    let dev: u64 = read(skb, off(|l| &l.skb_dev)).unwrap_or(0);
    read(dev, off(|l| &l.dev_nd_net)).unwrap_or(0)
}

/// Fills the event's tuples from the packet headers (no entry exists to read them from).
#[inline(always)]
fn packet_tuple(skb: u64, e: &mut Event) {
    let head: u64 = read(skb, off(|l| &l.skb_head)).unwrap_or(0);
    let nh: u16 = read(skb, off(|l| &l.skb_network_header)).unwrap_or(0);
    let th: u16 = read(skb, off(|l| &l.skb_transport_header)).unwrap_or(0xffff);
    if head == 0 {
        return;
    }
    let ip = head + nh as u64;
    let Some(b0) = read::<u8>(ip, 0) else { return };
    let ihl = if b0 >> 4 == 4 {
        e.l3proto = AF_INET;
        e.l4proto = read(ip, 9).unwrap_or(0);
        let addrs: [u8; 8] = read(ip, 12).unwrap_or([0; 8]);
        e.orig.src[..4].copy_from_slice(&addrs[..4]);
        e.orig.dst[..4].copy_from_slice(&addrs[4..]);
        (b0 & 0xf) as u64 * 4
    } else if b0 >> 4 == 6 {
        e.l3proto = AF_INET6;
        e.l4proto = read(ip, 6).unwrap_or(0);
        e.orig.src = read(ip, 8).unwrap_or([0; 16]);
        e.orig.dst = read(ip, 24).unwrap_or([0; 16]);
        40
    } else {
        return;
    };
    let l4 = if th != 0xffff {
        head + th as u64
    } else {
        ip + ihl
    };
    let ports: [u16; 2] = read(l4, 0).unwrap_or([0; 2]);
    e.reply.src = e.orig.dst;
    e.reply.dst = e.orig.src;
    if e.l4proto == IPPROTO_ICMP || e.l4proto == IPPROTO_ICMPV6 {
        // Tuples hold the ICMP id as "source" and type/code as "destination"; the reply
        // keeps the id and has the answer's type, as the kernel inverts it.
        let id: u16 = read(l4, 4).unwrap_or(0);
        let [ty, code] = ports[0].to_le_bytes();
        e.orig.sport = id;
        e.orig.dport = ports[0];
        e.reply.sport = id;
        e.reply.dport = u16::from_le_bytes([icmp_answer_type(e.l4proto, ty), code]);
        return;
    }
    e.orig.sport = ports[0];
    e.orig.dport = ports[1];
    e.reply.sport = ports[1];
    e.reply.dport = ports[0];
}

/// The type answering ICMP(v6) query type `ty` (echo, timestamp, information, address
/// mask; ICMPv6 echo and node information), as conntrack's reply tuple has it; other
/// types unchanged (they make no entry).
#[inline(always)]
fn icmp_answer_type(l4proto: u8, ty: u8) -> u8 {
    match (l4proto, ty) {
        (IPPROTO_ICMP, 8) => 0,
        (IPPROTO_ICMP, 13 | 15 | 17) => ty + 1,
        (IPPROTO_ICMPV6, 128 | 139) => ty + 1,
        _ => ty,
    }
}

//! Reads of kernel memory at offsets from the loader-set `LAYOUT` global.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_jiffies64};
use ct_common::{ABSENT, CodeRanges, Event, KernelLayout, Tuple, in_range};

/// Field offsets of the running kernel, written by the loader before load.
#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout::absent();

/// Code addresses of the running kernel (kallsyms), written by the loader before load.
#[unsafe(no_mangle)]
static CODE: CodeRanges = CodeRanges::none();

pub const IPS_CONFIRMED: u64 = 1 << 3;
pub const IPS_DYING: u64 = 1 << 9;
pub const IPS_NAT_CLASH: u64 = 1 << 12;
pub const IPPROTO_TCP: u8 = 6;
pub const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
pub const TCP_CONNTRACK_CLOSE: u8 = 8;
pub const IP_CT_DIR_REPLY: u8 = 1;
/// `enum ip_conntrack_info`: original direction, a reply seen.
pub const IP_CT_ESTABLISHED: u64 = 0;
/// `enum ip_conntrack_info`: original direction, no reply seen yet.
pub const IP_CT_NEW: u64 = 2;

/// Reads one offset from `LAYOUT`. Volatile so the compiler cannot fold the all-absent
/// initial value the object is compiled with.
#[inline(always)]
pub fn off(field: fn(&KernelLayout) -> &u32) -> u32 {
    // SAFETY: LAYOUT is a plain static; a volatile read of one of its u32 fields is sound.
    unsafe { core::ptr::read_volatile(field(&LAYOUT)) }
}

/// Whether `addr` is inside the function `range` picks from `CODE`.
#[inline(always)]
pub fn called_from(addr: u64, range: fn(&CodeRanges) -> &[u64; 2]) -> bool {
    // SAFETY: CODE is a plain static; a volatile read of one of its arrays is sound.
    in_range(addr, unsafe { core::ptr::read_volatile(range(&CODE)) })
}

/// Whether a `kfree_skb` tracepoint hit is a netfilter hook's drop: by its drop reason
/// (`args` index 2) where the kernel has one, else by its location (index 1) inside
/// `nf_hook_slow`. The reason is read only on kernels that have it: the verifier follows
/// the constant branch, so on 5.10 the program never touches a third argument.
#[inline(always)]
pub fn netfilter_drop(arg: impl Fn(usize) -> u64) -> bool {
    let want = off(|l| &l.drop_reason_netfilter);
    if want != ABSENT {
        return arg(2) as u32 == want;
    }
    called_from(arg(1), |c| &c.nf_hook_slow)
}

/// Reads a `T` at `base + offset`; `None` for an absent field, a null base or a fault.
#[inline(always)]
pub fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == ABSENT {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad pointer returns an error.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// `skb->_nfct`: the ct pointer is in the high bits, ctinfo in the low 3.
#[inline(always)]
pub fn skb_ct(skb: u64) -> u64 {
    read::<u64>(skb, off(|l| &l.skb_nfct)).unwrap_or(0) & !7
}

/// `skb->_nfct` loaded straight from a BTF-typed `struct sk_buff *` (a `tp_btf`
/// argument): no helper call, for the hook that runs on every packet of the machine.
#[inline(always)]
pub fn btf_skb_nfct(skb: *const u8) -> u64 {
    let offset = off(|l| &l.skb_nfct);
    if skb.is_null() || offset == ABSENT {
        return 0;
    }
    // SAFETY: `skb` is the verifier's PTR_TO_BTF_ID for `struct sk_buff`, and `offset`
    // comes from frozen .rodata, so the verifier knows it, checks it against sk_buff's
    // BTF and turns the load into a fault-safe probe load.
    unsafe { core::ptr::read_volatile(skb.add(offset as usize) as *const u64) }
}

#[inline(always)]
pub fn ct_status(ct: u64) -> u64 {
    read::<u64>(ct, off(|l| &l.ct_status)).unwrap_or(0)
}

/// Address of the tuple of direction `dir` (0 original, 1 reply) inside `ct`.
#[inline(always)]
fn tuple_addr(ct: u64, dir: u64) -> u64 {
    ct + off(|l| &l.ct_tuplehash) as u64
        + dir * off(|l| &l.tuplehash_size) as u64
        + off(|l| &l.tuplehash_tuple) as u64
}

/// Copies a `struct nf_conntrack_tuple` at `tuple` into `out`; returns (l3num, protonum).
#[inline(always)]
pub fn read_tuple(tuple: u64, out: &mut Tuple) -> (u16, u8) {
    out.src = read(tuple, off(|l| &l.tuple_src_u3)).unwrap_or([0; 16]);
    out.dst = read(tuple, off(|l| &l.tuple_dst_u3)).unwrap_or([0; 16]);
    out.sport = read(tuple, off(|l| &l.tuple_src_port)).unwrap_or(0);
    out.dport = read(tuple, off(|l| &l.tuple_dst_port)).unwrap_or(0);
    let l3 = read(tuple, off(|l| &l.tuple_src_l3num)).unwrap_or(0);
    let l4 = read(tuple, off(|l| &l.tuple_dst_protonum)).unwrap_or(0);
    (l3, l4)
}

/// The `struct nf_conn` that owns tuple hash `h` (`nf_ct_tuplehash_to_ctrack`).
#[inline(always)]
pub fn ct_of_tuplehash(h: u64) -> (u64, u8) {
    let dir_off = off(|l| &l.tuplehash_tuple).wrapping_add(off(|l| &l.tuple_dst_dir));
    let dir: u8 = read(h, dir_off).unwrap_or(0) & 1;
    let ct = h - dir as u64 * off(|l| &l.tuplehash_size) as u64 - off(|l| &l.ct_tuplehash) as u64;
    (ct, dir)
}

/// Inode of the `struct net` at `net`.
#[inline(always)]
pub fn net_inum(net: u64) -> u32 {
    read(net, off(|l| &l.net_ns_inum)).unwrap_or(0)
}

/// Jiffies left before `ct` expires (confirmed entries hold an absolute deadline).
#[inline(always)]
pub fn timeout_left(ct: u64, status: u64) -> i32 {
    match read::<u32>(ct, off(|l| &l.ct_timeout)) {
        Some(deadline) => deadline_left(deadline, status),
        None => i32::MIN,
    }
}

/// Jiffies left of an entry's `timeout` field `deadline`, given its status.
#[inline(always)]
pub fn deadline_left(deadline: u32, status: u64) -> i32 {
    if status & IPS_CONFIRMED == 0 {
        // Unconfirmed entries hold a relative timeout until confirm adds "now".
        return deadline as i32;
    }
    // SAFETY: bpf_jiffies64 takes no arguments and has no preconditions.
    let now = unsafe { bpf_jiffies64() } as u32;
    deadline.wrapping_sub(now) as i32
}

/// Fills every per-entry field of `e` from `ct`.
#[inline(always)]
pub fn fill_from_ct(e: &mut Event, ct: u64) {
    let status = ct_status(ct);
    e.ct = ct;
    e.status = status as u32;
    let (l3, l4) = read_tuple(tuple_addr(ct, 0), &mut e.orig);
    read_tuple(tuple_addr(ct, 1), &mut e.reply);
    e.l3proto = l3 as u8;
    e.l4proto = l4;
    e.mark = read(ct, off(|l| &l.ct_mark)).unwrap_or(0);
    e.zone = read(ct, off(|l| &l.ct_zone_id)).unwrap_or(0);
    let net: u64 = read(ct, off(|l| &l.ct_net)).unwrap_or(0);
    e.netns = net_inum(net);
    e.timeout_jiffies = timeout_left(ct, status);
    if l4 == IPPROTO_TCP {
        e.tcp_state = read(ct, off(|l| &l.ct_tcp_state)).unwrap_or(0);
    }
}

/// Fills the winner fields of a clash event from the winner entry `winner`.
#[inline(always)]
pub fn fill_winner(e: &mut Event, winner: u64) {
    e.winner_ct = winner;
    read_tuple(tuple_addr(winner, 0), &mut e.winner_orig);
    read_tuple(tuple_addr(winner, 1), &mut e.winner_reply);
    e.flags |= ct_common::FLAG_HAS_WINNER;
}

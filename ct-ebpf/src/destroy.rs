//! `nf_ct_delete` (every confirmed entry's removal) and `nf_conntrack_free` (every end).
//!
//! The reason is decided at `nf_ct_delete` entry from the netlink portid, the context
//! flags raised by the gc / early_drop / cleanup probes, expiry and TCP state
//! (KERNEL.md §3), without kernel stacks.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use ct_common::{DestroyReason, EventKind, stat};

use crate::{
    context::{C_EARLY_DROP, C_GC, C_ITERATE, C_NETNS_EXIT, current},
    emit::{count, emit},
    kernel::{
        IPPROTO_TCP, IPS_CONFIRMED, IPS_DYING, TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_TIME_WAIT,
        ct_status, fill_from_ct,
    },
};

/// Set to 1 by the loader when `ct_delete_enter` is on `nf_ct_delete`'s `.part` clone
/// (5.10): the compiler inlined the head, `test_and_set_bit(IPS_DYING_BIT)`, into every
/// caller, so the clone runs only for the first delete, with DYING already set.
#[unsafe(no_mangle)]
static DELETE_AFTER_DYING: u32 = 0;

#[kprobe]
pub fn ct_delete_enter(ctx: ProbeContext) -> u32 {
    let Some(ct) = ctx.arg::<u64>(0) else {
        return 0;
    };
    on_delete(ct, ctx.arg::<u64>(1).unwrap_or(0) as u32)
}

#[fentry]
pub fn fe_ct_delete_enter(ctx: FEntryContext) -> u32 {
    on_delete(ctx.arg::<u64>(0), ctx.arg::<u64>(1) as u32)
}

/// `nf_ct_delete(ct, portid, report)` entry.
#[inline(always)]
fn on_delete(ct: u64, portid: u32) -> u32 {
    let status = ct_status(ct);
    // SAFETY: volatile read of a loader-set u32 global.
    let after_dying = unsafe { core::ptr::read_volatile(&DELETE_AFTER_DYING) } != 0;
    // Already dying: a second delete of the same entry (it returns false); unconfirmed:
    // never in the table. Neither is a removal from the table.
    if (status & IPS_DYING != 0 && !after_dying) || status & IPS_CONFIRMED == 0 {
        return 0;
    }
    let flags = current();
    let kind = if flags[C_EARLY_DROP] != 0 {
        EventKind::EarlyDrop
    } else {
        EventKind::Destroy
    };
    emit(kind, 0, |e| {
        fill_from_ct(e, ct);
        e.cause = reason(portid, &flags, e.timeout_jiffies, e.l4proto, e.tcp_state) as u8;
    });
    0
}

#[inline(always)]
fn reason(portid: u32, flags: &[u8; 8], left: i32, l4: u8, tcp_state: u8) -> DestroyReason {
    let expired = left != i32::MIN && left <= 0;
    if portid != 0 {
        DestroyReason::Ctnetlink
    } else if flags[C_EARLY_DROP] != 0 {
        DestroyReason::EarlyDrop
    } else if flags[C_NETNS_EXIT] != 0 {
        DestroyReason::NetnsExit
    } else if flags[C_GC] != 0 {
        if expired {
            DestroyReason::Timeout
        } else {
            DestroyReason::GcEvict
        }
    } else if expired {
        DestroyReason::TimeoutLookup
    } else if l4 == IPPROTO_TCP
        && (tcp_state == TCP_CONNTRACK_CLOSE || tcp_state == TCP_CONNTRACK_TIME_WAIT)
    {
        DestroyReason::TcpClose
    } else if flags[C_ITERATE] != 0 {
        DestroyReason::Cleanup
    } else {
        DestroyReason::Unknown
    }
}

#[kprobe]
pub fn ct_free_enter(_ctx: ProbeContext) -> u32 {
    count(stat::FREES);
    0
}

#[fentry]
pub fn fe_ct_free_enter(_ctx: FEntryContext) -> u32 {
    count(stat::FREES);
    0
}

//! `__nf_conntrack_confirm` and `nf_ct_resolve_clash`: the outcome of every new entry.
//!
//! Entry saves the skb, the unconfirmed ct and its status; `nf_ct_resolve_clash`, which
//! only runs inside confirm, records the winner's tuple hash in that frame; the return
//! value then decides: NF_ACCEPT with the entry now CONFIRMED is a `new`, NF_ACCEPT after
//! a clash is a resolved clash (merged if the skb now points elsewhere, else the NAT-clash
//! reply-only insert), NF_DROP is an insert_failed whose cause follows KERNEL.md §2.
//!
//! Each hook is a kprobe/kretprobe and an fentry/fexit twin (`fe_`/`fx_`) around one
//! body; the loader attaches whichever this kernel takes.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use ct_common::{Cause, EventKind};

use crate::{
    emit::emit,
    frames::{F_CONFIRM, Frame, pop, push, top},
    kernel::{
        IP_CT_DIR_REPLY, IPS_CONFIRMED, IPS_DYING, IPS_NAT_CLASH, ct_of_tuplehash, ct_status,
        fill_from_ct, fill_winner, off, skb_ct,
    },
};

const NF_DROP: i32 = 0;

#[kprobe]
pub fn confirm_enter(ctx: ProbeContext) -> u32 {
    on_confirm(ctx.arg::<u64>(0).unwrap_or(0))
}

#[fentry]
pub fn fe_confirm_enter(ctx: FEntryContext) -> u32 {
    on_confirm(ctx.arg::<u64>(0))
}

/// `__nf_conntrack_confirm(skb)` entry.
#[inline(always)]
fn on_confirm(skb: u64) -> u32 {
    // Always push, even without a ct: every return pops, and an unbalanced stack would
    // hand a nested call its parent's frame.
    let ct = skb_ct(skb);
    push(
        F_CONFIRM,
        Frame {
            a: [skb, ct, 0, 0],
            status: if ct != 0 { ct_status(ct) } else { 0 },
            aux: 0,
        },
    );
    0
}

#[kprobe]
pub fn resolve_clash_enter(ctx: ProbeContext) -> u32 {
    // Read both possible registers and pick the value: indexing pt_regs with a runtime
    // value would make a computed ctx pointer, which the verifier refuses.
    let (arg1, arg3) = (ctx.arg::<u64>(1), ctx.arg::<u64>(3));
    let h = match off(|l| &l.resolve_clash_h_arg) {
        1 => arg1,
        3 => arg3,
        _ => None,
    };
    h.map_or(0, on_resolve_clash)
}

/// The 5.7+ signature `(skb, h, reply_hash)` only: the loader attaches this twin where
/// BTF gives the function three parameters (the verifier refuses reads past the last).
#[fentry]
pub fn fe_resolve_clash_enter(ctx: FEntryContext) -> u32 {
    on_resolve_clash(ctx.arg::<u64>(1))
}

/// `nf_ct_resolve_clash` entry: `h` is the winner's tuple hash.
#[inline(always)]
fn on_resolve_clash(h: u64) -> u32 {
    if let Some(frame) = top(F_CONFIRM) {
        frame.aux = h;
    }
    0
}

#[kretprobe]
pub fn confirm_exit(ctx: RetProbeContext) -> u32 {
    on_confirm_return(ctx.ret())
}

/// An fexit context holds the arguments, then the return value: read at index 1 here,
/// where the loader checked BTF gives the function one parameter. Not through
/// `bpf_get_func_ret`: kernels 5.17–6.7 can mis-track that helper's result and prune the
/// branch that reports `new` (seen on Debian's 6.1: no `new` at all).
#[fexit]
pub fn fx_confirm_exit(ctx: FExitContext) -> u32 {
    on_confirm_return(ctx.arg::<i32>(1))
}

/// `__nf_conntrack_confirm` return: NF_ACCEPT or NF_DROP.
#[inline(always)]
fn on_confirm_return(ret: i32) -> u32 {
    let Some(frame) = pop(F_CONFIRM) else {
        return 0;
    };
    let [skb, ct, ..] = frame.a;
    if ct == 0 {
        return 0;
    }
    if frame.aux != 0 {
        clash(ret, skb, ct, frame.aux);
    } else if ret == NF_DROP {
        let cause = if frame.status & IPS_DYING != 0 {
            Cause::Dying
        } else if frame.status & IPS_CONFIRMED != 0 {
            Cause::AlreadyConfirmed
        } else {
            Cause::ChainTooLong
        };
        emit(EventKind::InsertFailed, cause as u8, |e| {
            fill_from_ct(e, ct)
        });
    } else if frame.status & IPS_CONFIRMED == 0 && ct_status(ct) & IPS_CONFIRMED != 0 {
        emit(EventKind::New, 0, |e| fill_from_ct(e, ct));
    }
    0
}

/// Reports a clash seen by `nf_ct_resolve_clash` inside this confirm.
#[inline(always)]
fn clash(ret: i32, skb: u64, loser: u64, winner_h: u64) {
    let (winner, dir) = ct_of_tuplehash(winner_h);
    if ret == NF_DROP {
        let cause = if dir == IP_CT_DIR_REPLY {
            Cause::NatPortClash
        } else {
            Cause::SameFlowRace
        };
        emit(EventKind::InsertFailed, cause as u8, |e| {
            fill_from_ct(e, loser);
            fill_winner(e, winner);
        });
        return;
    }
    if skb_ct(skb) != loser {
        // Merged: the loser was put and may already be recycled; its tuples equal the
        // winner's in the original direction, so report the winner's entry.
        emit(EventKind::ClashResolved, Cause::Merged as u8, |e| {
            fill_from_ct(e, winner);
            e.ct = loser;
            fill_winner(e, winner);
        });
    } else if ct_status(loser) & IPS_NAT_CLASH != 0 {
        emit(
            EventKind::ClashResolved,
            Cause::NatClashReplyOnly as u8,
            |e| {
                fill_from_ct(e, loser);
                fill_winner(e, winner);
            },
        );
    } else {
        // Resolved without merge or NAT_CLASH: not a path the kernel has today.
        emit(EventKind::ClashResolved, Cause::Unknown as u8, |e| {
            fill_from_ct(e, loser);
            fill_winner(e, winner);
        });
    }
}

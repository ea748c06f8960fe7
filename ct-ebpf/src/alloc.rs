//! `__nf_conntrack_alloc` (table full) and `early_drop` (evictions to make room).
//!
//! Over `nf_conntrack_max`, alloc calls `early_drop()`; if that frees nothing it logs
//! "table full" and returns ERR_PTR(-ENOMEM). The entry probe saves net, zone and the
//! tuples' addresses (they live in the caller's frame, still valid at return); early_drop
//! marks the alloc frame, so an error return after early_drop ran is a table-full drop
//! and one without it is a plain allocation failure (not reported as table full).

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use ct_common::{Cause, EventKind};

use crate::{
    context::adjust_early_drop,
    emit::emit,
    frames::{F_ALLOC, Frame, pop, push, top},
    kernel::{net_inum, read, read_tuple},
};

/// Largest errno encoded by ERR_PTR: IS_ERR(p) is p >= -4095 as unsigned.
const MAX_ERRNO: u64 = 4095;
const EARLY_DROP_RAN: u64 = 1;

/// Set to 1 by the loader when the early_drop probe is attached. Without it an error
/// return cannot be told from a slab allocation failure, so every error counts as full.
#[unsafe(no_mangle)]
static EARLY_DROP_ATTACHED: u32 = 0;

#[kprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    on_alloc([arg(0), arg(1), arg(2), arg(3)])
}

#[fentry]
pub fn fe_alloc_enter(ctx: FEntryContext) -> u32 {
    let arg = |n| ctx.arg::<u64>(n);
    on_alloc([arg(0), arg(1), arg(2), arg(3)])
}

/// `__nf_conntrack_alloc(net, zone, orig, repl, ...)` entry.
#[inline(always)]
fn on_alloc(args: [u64; 4]) -> u32 {
    push(
        F_ALLOC,
        Frame {
            a: args,
            status: 0,
            aux: 0,
        },
    );
    0
}

#[kretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    on_alloc_return(ctx.ret())
}

/// The return value follows the six arguments in the context (see `confirm::fx_confirm_exit`).
#[fexit]
pub fn fx_alloc_exit(ctx: FExitContext) -> u32 {
    on_alloc_return(ctx.arg::<u64>(6))
}

/// `__nf_conntrack_alloc` return: the entry, or ERR_PTR.
#[inline(always)]
fn on_alloc_return(ret: u64) -> u32 {
    let Some(frame) = pop(F_ALLOC) else { return 0 };
    if ret < 0u64.wrapping_sub(MAX_ERRNO) {
        return 0;
    }
    // SAFETY: volatile read of a loader-set u32 global.
    let tell_apart = unsafe { core::ptr::read_volatile(&EARLY_DROP_ATTACHED) } != 0;
    if tell_apart && frame.aux & EARLY_DROP_RAN == 0 {
        return 0;
    }
    let [net, zone, orig, reply] = frame.a;
    emit(EventKind::TableFull, Cause::TableFull as u8, |e| {
        e.netns = net_inum(net);
        // struct nf_conntrack_zone starts with `u16 id`.
        e.zone = read(zone, 0).unwrap_or(0);
        let (l3, l4) = read_tuple(orig, &mut e.orig);
        read_tuple(reply, &mut e.reply);
        e.l3proto = l3 as u8;
        e.l4proto = l4;
    });
    0
}

#[kprobe]
pub fn early_drop_enter(_ctx: ProbeContext) -> u32 {
    on_early_drop()
}

#[fentry]
pub fn fe_early_drop_enter(_ctx: FEntryContext) -> u32 {
    on_early_drop()
}

#[inline(always)]
fn on_early_drop() -> u32 {
    if let Some(frame) = top(F_ALLOC) {
        frame.aux |= EARLY_DROP_RAN;
    }
    adjust_early_drop(true);
    0
}

#[kretprobe]
pub fn early_drop_exit(_ctx: RetProbeContext) -> u32 {
    adjust_early_drop(false);
    0
}

#[fexit]
pub fn fx_early_drop_exit(_ctx: FExitContext) -> u32 {
    adjust_early_drop(false);
    0
}

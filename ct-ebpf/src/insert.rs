//! `nf_conntrack_hash_check_insert`: entries created through ctnetlink (or BPF kfuncs),
//! which never pass `__nf_conntrack_confirm`.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use ct_common::{EventKind, FLAG_FROM_CTNETLINK};

use crate::{
    emit::emit,
    frames::{F_HASH_CHECK_INSERT, Frame, pop, push},
    kernel::fill_from_ct,
};

#[kprobe]
pub fn hash_insert_enter(ctx: ProbeContext) -> u32 {
    on_hash_insert(ctx.arg::<u64>(0).unwrap_or(0))
}

#[fentry]
pub fn fe_hash_insert_enter(ctx: FEntryContext) -> u32 {
    on_hash_insert(ctx.arg::<u64>(0))
}

/// `nf_conntrack_hash_check_insert(ct)` entry.
#[inline(always)]
fn on_hash_insert(ct: u64) -> u32 {
    // Pushed unconditionally to keep entry/return balanced; a null ct is skipped at return.
    push(
        F_HASH_CHECK_INSERT,
        Frame {
            a: [ct, 0, 0, 0],
            status: 0,
            aux: 0,
        },
    );
    0
}

#[kretprobe]
pub fn hash_insert_exit(ctx: RetProbeContext) -> u32 {
    on_hash_insert_return(ctx.ret())
}

/// The return value follows the one argument in the context (see `confirm::fx_confirm_exit`).
#[fexit]
pub fn fx_hash_insert_exit(ctx: FExitContext) -> u32 {
    on_hash_insert_return(ctx.arg::<i32>(1))
}

/// `nf_conntrack_hash_check_insert` return: 0 when inserted.
#[inline(always)]
fn on_hash_insert_return(ret: i32) -> u32 {
    let Some(frame) = pop(F_HASH_CHECK_INSERT) else {
        return 0;
    };
    if ret == 0 && frame.a[0] != 0 {
        emit(EventKind::New, 0, |e| {
            fill_from_ct(e, frame.a[0]);
            e.flags |= FLAG_FROM_CTNETLINK;
        });
    }
    0
}

//! "Inside function X" flags per task, for attributing nf_ct_delete to its caller
//! without kernel stacks: entry probes raise a counter, return probes lower it.

use aya_ebpf::{
    helpers::generated::bpf_get_current_task,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};

pub const C_GC: usize = 0;
pub const C_EARLY_DROP: usize = 1;
pub const C_NETNS_EXIT: usize = 2;
pub const C_ITERATE: usize = 3;

/// Nesting counters per task, one byte per context.
#[map]
static CONTEXT: LruHashMap<u64, [u8; 8]> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn task() -> u64 {
    // SAFETY: no preconditions; returns the current task_struct address.
    unsafe { bpf_get_current_task() }
}

#[inline(always)]
fn adjust(which: usize, up: bool) {
    let t = task();
    if let Some(c) = CONTEXT.get_ptr_mut(t) {
        // SAFETY: pointer from a successful map lookup, valid for this program run.
        let c = unsafe { &mut *c };
        let v = &mut c[which & 7];
        *v = if up {
            v.saturating_add(1)
        } else {
            v.saturating_sub(1)
        };
    } else if up {
        let mut c = [0u8; 8];
        c[which & 7] = 1;
        let _ = CONTEXT.insert(t, c, 0);
    }
}

/// Raised by the early_drop probes in `alloc`, which also mark the alloc frame.
#[inline(always)]
pub fn adjust_early_drop(up: bool) {
    adjust(C_EARLY_DROP, up);
}

/// The current task's context counters (all zero when none is open).
#[inline(always)]
pub fn current() -> [u8; 8] {
    // SAFETY: value copied out immediately.
    unsafe { CONTEXT.get(task()).copied().unwrap_or([0; 8]) }
}

/// Entry and return probes raising and lowering context `$which`, as kprobe/kretprobe
/// and as fentry/fexit twins.
macro_rules! context_probe {
    ($enter:ident, $exit:ident, $fe:ident, $fx:ident, $which:expr) => {
        #[kprobe]
        pub fn $enter(_ctx: ProbeContext) -> u32 {
            adjust($which, true);
            0
        }
        #[kretprobe]
        pub fn $exit(_ctx: RetProbeContext) -> u32 {
            adjust($which, false);
            0
        }
        #[fentry]
        pub fn $fe(_ctx: FEntryContext) -> u32 {
            adjust($which, true);
            0
        }
        #[fexit]
        pub fn $fx(_ctx: FExitContext) -> u32 {
            adjust($which, false);
            0
        }
    };
}

context_probe!(
    gc_worker_enter,
    gc_worker_exit,
    fe_gc_worker_enter,
    fx_gc_worker_exit,
    C_GC
);
context_probe!(
    netns_cleanup_enter,
    netns_cleanup_exit,
    fe_netns_cleanup_enter,
    fx_netns_cleanup_exit,
    C_NETNS_EXIT
);
context_probe!(
    iterate_cleanup_enter,
    iterate_cleanup_exit,
    fe_iterate_cleanup_enter,
    fx_iterate_cleanup_exit,
    C_ITERATE
);

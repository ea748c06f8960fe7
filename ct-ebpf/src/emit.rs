//! The ring buffer and the per-CPU counters, including loss by event kind.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use ct_common::{Event, EventKind, stat};

/// Events to userspace. The loader resizes it (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Per-CPU counters, indexed by `ct_common::stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Reserves an event of `kind`, lets `fill` write it and submits it. A full ring buffer
/// is counted as a loss of that kind, never silent.
#[inline(always)]
pub fn emit(kind: EventKind, cause: u8, fill: impl FnOnce(&mut Event)) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::LOST_BASE + kind as u32);
        return;
    };
    let e = entry.write(Event::zeroed());
    // SAFETY: helpers without preconditions.
    e.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    e.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    e.kind = kind as u8;
    e.cause = cause;
    fill(e);
    entry.submit(0);
}

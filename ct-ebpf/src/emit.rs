//! The ring buffer and the per-CPU counters, including loss by event kind.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_buf,
        generated::bpf_jiffies64,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use ct_common::{ABSENT, Event, EventKind, FLAG_RAW_CT, RAW_CT_BYTES, RawCtEvent, RawHead, stat};

use crate::kernel::{fill_from_ct, off};

/// Events to userspace. The loader resizes it (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// The reader is woken when this much comes to be waiting; below it, it polls on a short
/// timer. A wakeup costs an irq_work, i.e. a self-IPI: on a virtual machine, an APIC
/// write that exits to the hypervisor.
const WAKEUP_BYTES: u64 = 64 * 1024;
/// Ring buffer record header (`BPF_RINGBUF_HDR_SZ`); records are 8-byte aligned.
const RECORD_HEADER: u64 = 8;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

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
    entry.submit(wakeup(size_of::<Event>()));
}

/// Like [`emit`] for an event about entry `ct` in namespace `netns`, but the entry's
/// fields travel as one bulk copy of the `struct nf_conn` for the agent to parse
/// ([`RawCtEvent`]). Falls back to [`emit`] with fields parsed here when the layout allows
/// no copy.
#[inline(always)]
pub fn emit_raw(kind: EventKind, cause: u8, ct: u64, netns: u32, flags: u8) {
    let n = off(|l| &l.ct_raw_bytes);
    if n == ABSENT || n as usize > RAW_CT_BYTES {
        emit(kind, cause, |e| {
            fill_from_ct(e, ct);
            e.flags |= flags;
        });
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<RawCtEvent>(0) else {
        count(stat::LOST_BASE + kind as u32);
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` points at the reserved record, exclusively ours until submit; the head
    // is written whole, `raw` only through the helper (bounded by the check above), and
    // the bytes past `n` are never read by the agent.
    unsafe {
        let mut head = RawHead {
            ts_ns: bpf_ktime_get_boot_ns(),
            ct,
            jiffies: bpf_jiffies64(),
            netns,
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            kind: kind as u8,
            cause,
            flags: flags | FLAG_RAW_CT,
            _pad: [0; 5],
        };
        let raw = &mut (*r).raw;
        if bpf_probe_read_kernel_buf(ct as *const u8, &mut raw[..n as usize]).is_err() {
            head.flags &= !FLAG_RAW_CT;
        }
        core::ptr::write(&raw mut (*r).head, head);
    }
    entry.submit(wakeup(size_of::<RawCtEvent>()));
}

/// Submit flags for a record of `size` bytes: wake the reader only when this record
/// takes the backlog across [`WAKEUP_BYTES`]. Waking on every record above it would send
/// one self-IPI per event while the woken reader is still being scheduled. A crossing
/// missed in a race with another CPU only waits for the reader's poll timer.
#[inline(always)]
fn wakeup(size: usize) -> u64 {
    let footprint = (size as u64 + RECORD_HEADER + 7) & !7;
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if waiting >= WAKEUP_BYTES && waiting < WAKEUP_BYTES + footprint {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

//! The ring buffer and the per-CPU counters, including loss by event kind.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_buf,
        generated::bpf_jiffies64,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use ct_common::{ABSENT, Event, EventKind, FLAG_RAW_CT, RAW_CT_BYTES, RawCtEvent, RawHead, stat};

use crate::kernel::off;

/// Events to userspace. The loader resizes it (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// The least backlog that wakes the reader (see [`wakeup`]).
const WAKEUP_MIN_BYTES: u64 = 16 * 1024;
/// Ring buffer record header (`BPF_RINGBUF_HDR_SZ`); records are 8-byte aligned.
const RECORD_HEADER: u64 = 8;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
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

/// The benchmark's `ring` floor: one record the size of a raw entry copy, reserved and
/// discarded unwritten, which is what the ring buffer costs an event by itself.
#[inline(always)]
pub fn reserve_and_discard() {
    if let Some(entry) = EVENTS.reserve::<RawCtEvent>(0) {
        entry.discard(BPF_RB_NO_WAKEUP);
    }
}

/// True when this kernel's `struct nf_conn` fits a raw record ([`RawRecord`]).
#[inline(always)]
pub fn raw_layout() -> bool {
    let n = off(|l| &l.ct_raw_bytes);
    n != ABSENT && n as usize <= RAW_CT_BYTES
}

/// A reserved ring-buffer record holding a copy of an entry, not yet sent: its fields
/// can be read from the copy (one bulk read instead of one helper call per field), and
/// the record sent or dropped once they decide. Only when [`raw_layout`] holds.
pub struct RawRecord {
    entry: RingBufEntry<RawCtEvent>,
    copied: bool,
}

impl RawRecord {
    /// Reserves a record and copies entry `ct` into it. A full ring buffer is counted as
    /// a lost event of `kind`. `None` without [`raw_layout`], which callers check first.
    #[inline(always)]
    pub fn reserve(ct: u64, kind: EventKind) -> Option<Self> {
        let n = off(|l| &l.ct_raw_bytes) as usize;
        if n > RAW_CT_BYTES {
            return None;
        }
        let Some(mut entry) = EVENTS.reserve::<RawCtEvent>(0) else {
            count(stat::LOST_BASE + kind as u32);
            return None;
        };
        let r = entry.as_mut_ptr();
        // SAFETY: `r` points at the reserved record, exclusively ours until submit or
        // discard; `raw` is written only through the helper, bounded by the check above.
        let copied = unsafe {
            (*r).head.ct = ct;
            bpf_probe_read_kernel_buf(ct as *const u8, &mut (&mut (*r).raw)[..n]).is_ok()
        };
        Some(RawRecord { entry, copied })
    }

    /// The `T` at `offset` in the copied entry; `None` for an absent field, one beyond
    /// the copy, or a failed copy.
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u32) -> Option<T> {
        let n = off(|l| &l.ct_raw_bytes) as usize;
        let at = offset as usize;
        let end = at.checked_add(size_of::<T>())?;
        if !self.copied || offset == ABSENT || end > n || end > RAW_CT_BYTES {
            return None;
        }
        // SAFETY: `at + size_of::<T>()` is within the copied bytes of our reserved record
        // (checked above); the read is unaligned-safe.
        unsafe {
            let raw = &(*self.entry.as_ptr()).raw;
            Some(core::ptr::read_unaligned(raw.as_ptr().add(at).cast::<T>()))
        }
    }

    /// Sends the record as an event of `kind` about namespace `netns`.
    #[inline(always)]
    pub fn send(mut self, kind: EventKind, cause: u8, netns: u32, flags: u8) {
        let raw_flag = if self.copied { FLAG_RAW_CT } else { 0 };
        let r = self.entry.as_mut_ptr();
        // SAFETY: the reserved record is ours until submit; the head is written whole.
        unsafe {
            let head = RawHead {
                ts_ns: bpf_ktime_get_boot_ns(),
                ct: (*r).head.ct,
                jiffies: bpf_jiffies64(),
                netns,
                pid: (bpf_get_current_pid_tgid() >> 32) as u32,
                kind: kind as u8,
                cause,
                flags: flags | raw_flag,
                _pad: [0; 5],
            };
            core::ptr::write(&raw mut (*r).head, head);
        }
        self.entry.submit(wakeup(size_of::<RawCtEvent>()));
    }

    /// Drops the record unsent. Never wakes the reader: with flags 0 the kernel wakes it
    /// whenever the discarded record sat at its read position, i.e. on every discard of
    /// an idle ring (3.8 µs a record on this project's VM hosts, measured).
    #[inline(always)]
    pub fn discard(self) {
        self.entry.discard(BPF_RB_NO_WAKEUP);
    }
}

/// Submit flags for a record of `size` bytes: wake the reader only when this record
/// takes the backlog across a quarter of the ring. Below that the reader polls on a timer
/// ([`WAKEUP_MIN_BYTES`] is the floor for small rings). Each wakeup is an irq_work, i.e. a
/// self-IPI: on a virtual machine, an APIC write that exits to the hypervisor. A crossing
/// missed in a race with another CPU only waits for the reader's poll timer.
#[inline(always)]
fn wakeup(size: usize) -> u64 {
    let footprint = (size as u64 + RECORD_HEADER + 7) & !7;
    let threshold = (EVENTS.query(BPF_RB_RING_SIZE) / 4).max(WAKEUP_MIN_BYTES);
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if waiting >= threshold && waiting < threshold + footprint {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

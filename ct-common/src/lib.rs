//! The ABI shared by ctscope's BPF programs (`ct-ebpf`) and its agent (`ct-user`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the kernel side and the
//! user side agree byte for byte; compile-time asserts pin the sizes. With the `user`
//! feature the records implement `aya::Pod`, so they can be read from the ring buffer and
//! written into BPF globals.
#![no_std]

pub mod event;
pub mod layout;
pub mod raw;

pub use event::{
    Cause, DestroyReason, Event, EventKind, FLAG_FROM_CTNETLINK, FLAG_HAS_WINNER, FLAG_RAW_CT,
    FLAG_UNVERIFIED, Tuple,
};
pub use layout::{ABSENT, CodeRanges, KernelLayout, in_range};
pub use raw::{RAW_CT_BYTES, RawCtEvent, RawHead};

/// Benchmark floors (`ctscope events --floor`, `cargo xtask bench`): how far tier 2 goes,
/// set by the loader in the BPF global `FLOOR`. The verifier sees the value as a constant
/// and drops the branches of the others, so a normal load pays nothing for them.
pub mod floor {
    /// Normal operation.
    pub const NONE: u32 = 0;
    /// Every tier-2 program returns at once: what the hooks cost by themselves.
    pub const EMPTY: u32 = 1;
    /// New-flow reports stop after the first-seen filter.
    pub const FILTER: u32 = 2;
    /// Each entry the filter passes reserves a ring record and discards it unwritten: the
    /// ring buffer's own cost per event.
    pub const RING: u32 = 3;
}

/// Indices into the per-CPU `STATS` array the BPF side keeps. The first `EventKind::COUNT`
/// slots count ring-buffer reserve failures (lost events) by kind; the rest count probe hits.
pub mod stat {
    /// Lost events of kind `k` are counted at index `LOST_BASE + k as u32`.
    pub const LOST_BASE: u32 = 0;
    /// `nf_conntrack_free` calls: every entry's end, confirmed or not.
    pub const FREES: u32 = 16;
    /// `kfree_skb` with reason NETFILTER_DROP and a conntrack entry attached.
    pub const NF_DROPS_WITH_CT: u32 = 17;
    /// `kfree_skb` with reason NETFILTER_DROP and no conntrack entry (table full, rules).
    pub const NF_DROPS_NO_CT: u32 = 18;
    /// Entry/return state that did not fit in the per-task call stack (nesting too deep).
    pub const STACK_OVERFLOW: u32 = 19;
    /// Returns whose entry frame was missing (probe attached mid-call, LRU eviction).
    pub const STACK_MISS: u32 = 20;
    /// Size of the array.
    pub const COUNT: u32 = 32;
}

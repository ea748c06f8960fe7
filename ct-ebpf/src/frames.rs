//! Entry/return pairing for kprobe + kretprobe.
//!
//! A kretprobe sees only the return value, so the entry probe saves what the return needs
//! in a per-task stack. Keyed by the task pointer, not by CPU (process context can be
//! preempted and migrate) and not by pid (every CPU's idle task is pid 0, and softirqs run
//! on top of it); a stack because a softirq can nest the same function on the same task.

use aya_ebpf::{helpers::generated::bpf_get_current_task, macros::map, maps::LruHashMap};
use ct_common::stat;

use crate::emit::count;

/// Functions with paired entry/return probes.
pub const F_CONFIRM: u32 = 1;
pub const F_ALLOC: u32 = 2;
pub const F_HASH_CHECK_INSERT: u32 = 3;

const DEPTH: u32 = 4;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Frame {
    /// Function-specific saved values (skb, ct, net, tuple pointers...).
    pub a: [u64; 4],
    /// Status of the entry at function entry.
    pub status: u64,
    /// Set by nested probes: the clash winner's tuple hash, early_drop ran, etc.
    pub aux: u64,
}

#[repr(C)]
pub struct Stack {
    depth: u32,
    _pad: u32,
    frames: [Frame; DEPTH as usize],
}

#[repr(C)]
pub struct Key {
    task: u64,
    func: u32,
    _pad: u32,
}

/// LRU so that frames orphaned by a missed return (probe detached mid-call) age out.
#[map]
static FRAMES: LruHashMap<Key, Stack> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn key(func: u32) -> Key {
    // SAFETY: no preconditions; returns the current task_struct address.
    let task = unsafe { bpf_get_current_task() };
    Key {
        task,
        func,
        _pad: 0,
    }
}

/// Saves `frame` for the matching return of `func` on this task.
#[inline(always)]
pub fn push(func: u32, frame: Frame) {
    let k = key(func);
    let stack = match FRAMES.get_ptr_mut(&k) {
        Some(s) => s,
        None => {
            let empty = Stack {
                depth: 0,
                _pad: 0,
                frames: [frame; DEPTH as usize],
            };
            if FRAMES.insert(&k, &empty, 0).is_err() {
                return;
            }
            let Some(s) = FRAMES.get_ptr_mut(&k) else {
                return;
            };
            s
        }
    };
    // SAFETY: pointer from a successful map lookup, valid for this program run.
    let stack = unsafe { &mut *stack };
    let d = stack.depth;
    if d >= DEPTH {
        count(stat::STACK_OVERFLOW);
        return;
    }
    stack.frames[(d & (DEPTH - 1)) as usize] = frame;
    stack.depth = d + 1;
}

/// Removes and returns the innermost frame of `func` on this task.
#[inline(always)]
pub fn pop(func: u32) -> Option<Frame> {
    let k = key(func);
    let Some(stack) = FRAMES.get_ptr_mut(&k) else {
        count(stat::STACK_MISS);
        return None;
    };
    // SAFETY: pointer from a successful map lookup, valid for this program run.
    let stack = unsafe { &mut *stack };
    let d = stack.depth;
    if d == 0 || d > DEPTH {
        count(stat::STACK_MISS);
        return None;
    }
    stack.depth = d - 1;
    Some(stack.frames[((d - 1) & (DEPTH - 1)) as usize])
}

/// The innermost open frame of `func` on this task, for nested probes to annotate.
#[inline(always)]
pub fn top(func: u32) -> Option<&'static mut Frame> {
    let stack = FRAMES.get_ptr_mut(key(func))?;
    // SAFETY: pointer from a successful map lookup, valid for this program run.
    let stack = unsafe { &mut *stack };
    let d = stack.depth;
    if d == 0 || d > DEPTH {
        return None;
    }
    Some(&mut stack.frames[((d - 1) & (DEPTH - 1)) as usize])
}

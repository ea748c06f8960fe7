//! A no-op fentry program: `ctscope probe` loads it to learn whether this kernel accepts
//! fentry/fexit at all (some refuse it with EPERM), the pwru way: try the real thing.

use aya_ebpf::{macros::fentry, programs::FEntryContext};

#[fentry(function = "ktime_get")]
pub fn fentry_feature(_ctx: FEntryContext) -> u32 {
    0
}

//! Tier 2 reports an entry's `new` the first time it sees it leave on egress; its BPF
//! first-seen filter is direct-mapped (cheap on the packet path) and can repeat one after a
//! hash collision or when two CPUs send an entry's first packets at once. The agent knows
//! which entries live, by kernel address, and drops the repeats here.

use rustc_hash::FxHashSet;

use ct_common::{Cause, EventKind};

use crate::event::CtEvent;

/// Room for this many live entries before the set first grows.
const INITIAL: usize = 1 << 16;

#[derive(Debug)]
pub struct LiveEntries {
    /// Kernel addresses: FxHash, as SipHash showed up in profiles at 100k events/s.
    live: FxHashSet<u64>,
    /// Repeated `new` reports dropped so far.
    pub repeats: u64,
}

impl Default for LiveEntries {
    fn default() -> Self {
        LiveEntries {
            live: FxHashSet::with_capacity_and_hasher(INITIAL, Default::default()),
            repeats: 0,
        }
    }
}

impl LiveEntries {
    /// False for a repeated `new` of an entry already live; tracks births and deaths.
    pub fn admit(&mut self, ev: &CtEvent) -> bool {
        let birth = ev.kind == EventKind::New
            || (ev.kind == EventKind::ClashResolved && ev.cause == Some(Cause::NatClashReplyOnly));
        if birth {
            let first = self.live.insert(ev.ct);
            self.repeats += u64::from(!first);
            return first;
        }
        if matches!(ev.kind, EventKind::Destroy | EventKind::EarlyDrop) {
            self.live.remove(&ev.ct);
        }
        true
    }

    /// After lost events the set may hold dead addresses that come back as new entries:
    /// forget everything rather than hide them.
    pub fn reset(&mut self) {
        self.live.clear();
    }
}

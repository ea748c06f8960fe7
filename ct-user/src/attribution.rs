//! insert_failed and drop attribution: a namespace's kernel counters since the agent
//! started watching it, beside the events that explain them, and what is left over.
//!
//! What explains what (KERNEL.md §2): `insert_failed` is every failed confirmation (and
//! before 5.10 every clash, resolved or not); `drop` is a table-full drop or a clash the
//! kernel could not resolve (plus l4 and seqadj drops, which no event reports);
//! `early_drop` counts entries evicted to make room; `clash_resolve` (5.10+) counts
//! merged clashes and NAT-clash reply-only entries.

use std::collections::BTreeMap;

use ct_common::{Cause, DestroyReason, EventKind};
use ct_netlink::CpuStats;
use serde::Serialize;

use crate::event::CtEvent;

/// What the events of one namespace explained, by cause or reason.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Attributed {
    /// By cause name: JSON objects list them alphabetically.
    pub insert_failed: BTreeMap<&'static str, u64>,
    pub table_full: u64,
    pub early_drop: u64,
    pub clash_resolved: BTreeMap<&'static str, u64>,
}

impl Attributed {
    pub fn count(&mut self, ev: &CtEvent) {
        let cause = ev.cause.unwrap_or(Cause::Unknown).name();
        match ev.kind {
            EventKind::InsertFailed => *self.insert_failed.entry(cause).or_default() += 1,
            EventKind::ClashResolved => *self.clash_resolved.entry(cause).or_default() += 1,
            EventKind::TableFull => self.table_full += 1,
            EventKind::EarlyDrop => self.early_drop += 1,
            EventKind::Destroy if ev.reason == Some(DestroyReason::EarlyDrop) => {
                self.early_drop += 1
            }
            EventKind::New | EventKind::Destroy => {}
        }
    }

    fn insert_failed_total(&self) -> u64 {
        self.insert_failed.values().sum()
    }

    /// Insert failures the kernel also counted as `drop`: clashes it could not resolve.
    fn dropped_clashes(&self) -> u64 {
        [Cause::NatPortClash, Cause::SameFlowRace]
            .iter()
            .filter_map(|c| self.insert_failed.get(c.name()))
            .sum()
    }
}

/// The kernel's counters, summed over CPUs; `None` where this kernel lacks one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Kernel {
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clash_resolve: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaintoolong: Option<u64>,
    pub invalid: u64,
    pub error: u64,
    pub search_restart: u64,
}

fn sum(cpus: &[CpuStats], f: impl Fn(&CpuStats) -> Option<u32>) -> Option<u64> {
    cpus.iter()
        .filter_map(|c| f(c).map(u64::from))
        .reduce(|a, b| a + b)
}

impl Kernel {
    pub fn from_cpus(cpus: &[CpuStats]) -> Self {
        let total = |f: fn(&CpuStats) -> Option<u32>| sum(cpus, f).unwrap_or(0);
        Kernel {
            insert_failed: total(|c| c.insert_failed),
            drop: total(|c| c.drop),
            early_drop: total(|c| c.early_drop),
            clash_resolve: sum(cpus, |c| c.clash_resolve),
            chaintoolong: sum(cpus, |c| c.chaintoolong),
            invalid: total(|c| c.invalid),
            error: total(|c| c.error),
            search_restart: total(|c| c.search_restart),
        }
    }

    /// Increments since `base` (counters are per-CPU u32s that can wrap; wraps read as 0).
    pub fn since(self, base: Kernel) -> Kernel {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let od = |a: Option<u64>, b: Option<u64>| a.map(|a| d(a, b.unwrap_or(0)));
        Kernel {
            insert_failed: d(self.insert_failed, base.insert_failed),
            drop: d(self.drop, base.drop),
            early_drop: d(self.early_drop, base.early_drop),
            clash_resolve: od(self.clash_resolve, base.clash_resolve),
            chaintoolong: od(self.chaintoolong, base.chaintoolong),
            invalid: d(self.invalid, base.invalid),
            error: d(self.error, base.error),
            search_restart: d(self.search_restart, base.search_restart),
        }
    }
}

/// Kernel increments no event explained (negative: more events than increments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unexplained {
    pub insert_failed: i64,
    pub drop: i64,
    pub early_drop: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clash_resolve: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaintoolong: Option<i64>,
}

impl Unexplained {
    pub fn is_zero(&self) -> bool {
        *self
            == Unexplained {
                clash_resolve: self.clash_resolve.map(|_| 0),
                chaintoolong: self.chaintoolong.map(|_| 0),
                ..Unexplained::default()
            }
    }
}

/// `delta` (the kernel's increments while the agent watched) minus what `a` explains.
pub fn unexplained(delta: Kernel, a: &Attributed) -> Unexplained {
    let left = |kernel: u64, events: u64| kernel as i64 - events as i64;
    let clashes: u64 = a.clash_resolved.values().sum();
    // Before 5.10 there is no clash_resolve counter and insert_failed counts every clash.
    let pre_5_10 = delta.clash_resolve.is_none();
    let insert_failed_events = a.insert_failed_total() + if pre_5_10 { clashes } else { 0 };
    Unexplained {
        insert_failed: left(delta.insert_failed, insert_failed_events),
        drop: left(delta.drop, a.table_full + a.dropped_clashes()),
        early_drop: left(delta.early_drop, a.early_drop),
        clash_resolve: delta.clash_resolve.map(|k| left(k, clashes)),
        chaintoolong: delta.chaintoolong.map(|k| {
            left(
                k,
                a.insert_failed
                    .get(Cause::ChainTooLong.name())
                    .copied()
                    .unwrap_or(0),
            )
        }),
    }
}

/// What `stats` adds with an agent running (README "ctscope stats").
#[derive(Clone, Debug, Serialize)]
pub struct AgentStats {
    /// Unix time the agent started watching the namespace.
    pub watched_since: f64,
    /// Entries in the agent's copy of the table.
    pub table_entries: usize,
    /// The kernel's increments since `watched_since`.
    pub kernel: Kernel,
    pub attributed: Attributed,
    pub unexplained: Unexplained,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributed(insert_failed: &[(&'static str, u64)], table_full: u64) -> Attributed {
        Attributed {
            insert_failed: insert_failed.iter().copied().collect(),
            table_full,
            ..Attributed::default()
        }
    }

    fn modern(insert_failed: u64, drop: u64) -> Kernel {
        Kernel {
            insert_failed,
            drop,
            clash_resolve: Some(0),
            chaintoolong: Some(0),
            ..Kernel::default()
        }
    }

    #[test]
    fn a_snat_clash_explains_insert_failed_and_drop() {
        let a = attributed(&[("nat_port_clash", 1)], 0);
        let u = unexplained(modern(1, 1), &a);
        assert!(u.is_zero(), "{u:?}");
    }

    #[test]
    fn table_full_explains_drop_only() {
        let a = attributed(&[], 12);
        assert!(unexplained(modern(0, 12), &a).is_zero());
        let u = unexplained(modern(0, 13), &a);
        assert_eq!(u.drop, 1, "one drop no event explains");
    }

    #[test]
    fn dying_and_chain_too_long_do_not_count_as_drops() {
        let a = attributed(&[("dying", 1), ("chain_too_long", 2)], 0);
        let mut k = modern(3, 0);
        k.chaintoolong = Some(2);
        assert!(unexplained(k, &a).is_zero());
    }

    #[test]
    fn before_5_10_resolved_clashes_are_insert_failures() {
        let mut a = attributed(&[], 0);
        a.clash_resolved.insert("merged", 5);
        let old = Kernel {
            insert_failed: 5,
            ..Kernel::default()
        };
        let u = unexplained(old, &a);
        assert!(u.is_zero(), "{u:?}");
        assert_eq!(u.clash_resolve, None);
        // On 5.10+ the same events explain clash_resolve, not insert_failed.
        let mut new = modern(0, 0);
        new.clash_resolve = Some(5);
        assert!(unexplained(new, &a).is_zero());
    }

    #[test]
    fn more_events_than_increments_shows_negative() {
        let a = attributed(&[("nat_port_clash", 2)], 0);
        assert_eq!(unexplained(modern(1, 1), &a).insert_failed, -1);
    }

    #[test]
    fn since_subtracts_and_keeps_missing_counters_missing() {
        let now = Kernel {
            insert_failed: 7,
            clash_resolve: Some(4),
            ..Kernel::default()
        };
        let base = Kernel {
            insert_failed: 2,
            clash_resolve: Some(1),
            ..Kernel::default()
        };
        let d = now.since(base);
        assert_eq!(d.insert_failed, 5);
        assert_eq!(d.clash_resolve, Some(3));
        assert_eq!(d.chaintoolong, None);
    }

    #[test]
    fn from_cpus_sums_and_notices_absent_counters() {
        let cpu = |n, f| CpuStats {
            cpu: n,
            insert_failed: Some(f),
            drop: Some(1),
            ..CpuStats::default()
        };
        let k = Kernel::from_cpus(&[cpu(0, 2), cpu(1, 3)]);
        assert_eq!(k.insert_failed, 5);
        assert_eq!(k.drop, 2);
        assert_eq!(k.clash_resolve, None);
    }
}

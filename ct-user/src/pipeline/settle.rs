//! Tier 2: settles what the tracepoints cannot decide alone against the kernel's own
//! per-namespace counters (ctnetlink `GET_STATS_CPU`), and finds clash winners through
//! ctnetlink lookups.
//!
//! The BPF side marks such events unverified: a netfilter drop of an unconfirmed entry
//! (insert_failed, or a rule), a drop without an entry (table full, or a rule), an
//! unconfirmed entry freed without a drop (merged clash loser, or nothing), and a destroy
//! outside the gc worker that is neither expired nor a TCP close (early_drop, or a
//! ctnetlink delete). Each namespace keeps how much of each counter events have already
//! explained; a candidate becomes an event only while the counter has unexplained
//! increments left, so the events of a kind never outnumber the kernel's count. Credit
//! left over carries to the next round: an increment whose event has not been read yet
//! is not lost.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use ct_common::{Cause, DestroyReason, EventKind};
use ct_netlink::{Conntrack, Entry, Tuple};

use crate::{
    event::{CtEvent, Side, Winner},
    sys::netns,
};

/// The counters candidates are settled against, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub insert_failed: u64,
    pub drop: u64,
    pub clash_resolve: u64,
    pub early_drop: u64,
}

impl Counters {
    fn saturating_sub(self, o: Counters) -> Counters {
        Counters {
            insert_failed: self.insert_failed.saturating_sub(o.insert_failed),
            drop: self.drop.saturating_sub(o.drop),
            clash_resolve: self.clash_resolve.saturating_sub(o.clash_resolve),
            early_drop: self.early_drop.saturating_sub(o.early_drop),
        }
    }
}

/// Takes one unit of `avail`, recording it in `used`; false if none is left.
fn take(avail: &mut u64, used: &mut u64) -> bool {
    if *avail == 0 {
        return false;
    }
    *avail -= 1;
    *used += 1;
    true
}

/// One namespace: where to reach it, what events have explained so far, and the
/// candidates waiting for the next round. No socket stays open between rounds: a
/// netlink socket pins its namespace, which would never exit while ctscope runs.
struct Namespace {
    path: Option<PathBuf>,
    /// Which namespace the counters belong to: inodes are recycled, cookies are not.
    cookie: Option<u64>,
    explained: Counters,
    pending: Vec<CtEvent>,
}

/// Candidates that did not become events, by kind (rule drops and the like).
#[derive(Clone, Copy, Debug, Default)]
pub struct Discarded {
    pub drops_by_rules: u64,
    pub unconfirmed_frees: u64,
}

pub struct Settler {
    namespaces: HashMap<u32, Namespace>,
    pub discarded: Discarded,
    /// Namespaces that held entries at start (the BPF side learns later ones itself).
    pub with_entries: Vec<u32>,
}

impl Settler {
    /// Reads every namespace's counters now: increments before this point are not ours
    /// to explain. Namespaces created later start from zero, as their counters do.
    pub async fn new() -> Self {
        let mut namespaces = HashMap::new();
        let mut with_entries = Vec::new();
        for ns in netns::enterable() {
            let mut conn = Conntrack::open_in_netns(&ns.path).ok();
            let explained = read_counters(&mut conn).await.unwrap_or_default();
            if let Some(c) = conn.as_mut()
                && c.count().await.is_ok_and(|n| n > 0)
            {
                with_entries.push(ns.inode);
            }
            let state = Namespace {
                path: Some(ns.path),
                cookie: conn.as_ref().and_then(|c| c.netns_cookie().ok()),
                explained,
                pending: Vec::new(),
            };
            namespaces.insert(ns.inode, state);
        }
        Settler {
            namespaces,
            discarded: Discarded::default(),
            with_entries,
        }
    }

    /// True if `ev` needs settling before it can be reported.
    pub fn needs(ev: &CtEvent) -> bool {
        ev.unverified
    }

    pub fn push(&mut self, ev: CtEvent) {
        self.namespace(ev.netns).pending.push(ev);
    }

    pub fn has_pending(&self) -> bool {
        self.namespaces.values().any(|n| !n.pending.is_empty())
    }

    /// Settles every pending candidate; returns the events to report, oldest first.
    pub async fn settle(&mut self) -> Vec<CtEvent> {
        let mut out = Vec::new();
        let inodes: Vec<u32> = self
            .namespaces
            .iter()
            .filter(|(_, n)| !n.pending.is_empty())
            .map(|(&i, _)| i)
            .collect();
        for inode in inodes {
            self.settle_namespace(inode, &mut out).await;
        }
        out.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        out
    }

    async fn settle_namespace(&mut self, inode: u32, out: &mut Vec<CtEvent>) {
        let ns = self.namespace(inode);
        let pending = std::mem::take(&mut ns.pending);
        let mut conn = open(inode, &mut ns.path);
        let cookie = conn.as_ref().and_then(|c| c.netns_cookie().ok());
        if cookie.is_some() && cookie != ns.cookie {
            // Another namespace with a recycled inode: its counters started at zero.
            ns.cookie = cookie;
            ns.explained = Counters::default();
        }
        let Some(now) = read_counters(&mut conn).await else {
            // The namespace is gone or has no ctnetlink: report what the tracepoints saw.
            log::debug!(
                "netns {inode}: counters unreadable, {} candidates unchecked",
                pending.len()
            );
            out.extend(pending.into_iter().map(unchecked));
            return;
        };
        let mut avail = now.saturating_sub(ns.explained);
        let mut discarded = Discarded::default();
        for mut ev in pending {
            let keep = credit(&mut ev, &mut avail, &mut ns.explained);
            if !keep {
                match ev.kind {
                    EventKind::ClashResolved => discarded.unconfirmed_frees += 1,
                    _ => discarded.drops_by_rules += 1,
                }
                continue;
            }
            ev.unverified = false;
            if matches!(ev.kind, EventKind::InsertFailed | EventKind::ClashResolved)
                && ev.cause != Some(Cause::Dying)
            {
                find_winner(&mut conn, &mut ev).await;
            }
            out.push(ev);
        }
        self.discarded.drops_by_rules += discarded.drops_by_rules;
        self.discarded.unconfirmed_frees += discarded.unconfirmed_frees;
    }

    fn namespace(&mut self, inode: u32) -> &mut Namespace {
        self.namespaces.entry(inode).or_insert_with(|| Namespace {
            path: None,
            cookie: None,
            explained: Counters::default(),
            pending: Vec::new(),
        })
    }
}

/// Decides candidate `ev` against the counter increments no event has claimed yet
/// (`avail`), moving what it claims into `used`; false if the kernel counted nothing for
/// it (a rule's drop, an unconfirmed entry that was not a clash loser). A destroy always
/// stays: early_drop if that counter has room, else a ctnetlink delete.
fn credit(ev: &mut CtEvent, avail: &mut Counters, used: &mut Counters) -> bool {
    match ev.kind {
        EventKind::InsertFailed => {
            let ok = take(&mut avail.insert_failed, &mut used.insert_failed);
            if ok && ev.cause != Some(Cause::Dying) {
                // A clash drop also counts in `drop`.
                take(&mut avail.drop, &mut used.drop);
            }
            ok
        }
        EventKind::TableFull => take(&mut avail.drop, &mut used.drop),
        // A NAT-clash insert is certain (the entry carries IPS_NAT_CLASH); it only takes
        // its share of the counter.
        EventKind::ClashResolved => {
            take(&mut avail.clash_resolve, &mut used.clash_resolve)
                || ev.cause == Some(Cause::NatClashReplyOnly)
        }
        EventKind::Destroy => {
            if take(&mut avail.early_drop, &mut used.early_drop) {
                ev.kind = EventKind::EarlyDrop;
                ev.reason = Some(DestroyReason::EarlyDrop);
            } else {
                ev.reason = Some(DestroyReason::Ctnetlink);
            }
            true
        }
        EventKind::New | EventKind::EarlyDrop => true,
    }
}

/// A ctnetlink socket in namespace `inode`, looking its path up again when the one known
/// no longer leads there (the process that held it exited).
fn open(inode: u32, path: &mut Option<PathBuf>) -> Option<Conntrack> {
    if let Some(conn) = path.as_ref().and_then(|p| open_checked(inode, p)) {
        return Some(conn);
    }
    *path = netns::path_of(inode);
    open_checked(inode, path.as_ref()?)
}

fn open_checked(inode: u32, path: &Path) -> Option<Conntrack> {
    let same = std::fs::metadata(path).is_ok_and(|m| m.ino() == u64::from(inode));
    same.then(|| Conntrack::open_in_netns(path).ok()).flatten()
}

/// A candidate that could not be checked: reported, but marked so.
fn unchecked(mut ev: CtEvent) -> CtEvent {
    if ev.kind == EventKind::Destroy {
        ev.reason = Some(DestroyReason::Unknown);
    }
    ev
}

async fn read_counters(conn: &mut Option<Conntrack>) -> Option<Counters> {
    let stats = conn.as_mut()?.stats_cpu().await.ok()?;
    let sum = |f: fn(&ct_netlink::CpuStats) -> Option<u32>| -> u64 {
        stats.iter().filter_map(f).map(u64::from).sum()
    };
    Some(Counters {
        insert_failed: sum(|s| s.insert_failed),
        drop: sum(|s| s.drop),
        clash_resolve: sum(|s| s.clash_resolve),
        early_drop: sum(|s| s.early_drop),
    })
}

/// Looks the clash winner up in the table: by reply tuple (a NAT mapping already taken),
/// then by original tuple (the same flow confirmed first). The direction it is found in
/// decides the insert_failed cause.
async fn find_winner(conn: &mut Option<Conntrack>, ev: &mut CtEvent) {
    let Some(conn) = conn.as_mut() else { return };
    let zone = (ev.zone != 0).then_some(ev.zone);
    let reply = tuple(&ev.reply, ev.protonum);
    let orig = tuple(&ev.orig, ev.protonum);
    let by_reply = match ev.kind {
        EventKind::InsertFailed => conn.get_by_reply(&reply, zone).await.ok().flatten(),
        _ => None,
    };
    let found = match by_reply {
        Some(e) if !same_tuple(&e.orig, &orig) => {
            ev.cause = Some(Cause::NatPortClash);
            Some(e)
        }
        _ => {
            let e = conn.get(&orig, zone).await.ok().flatten();
            if e.is_some() && ev.kind == EventKind::InsertFailed {
                ev.cause = Some(Cause::SameFlowRace);
            }
            e
        }
    };
    if let Some(e) = found {
        ev.winner = Some(winner(&e));
    }
}

fn tuple(side: &Side, proto: u8) -> Tuple {
    let mut t = Tuple::ports(
        proto,
        side.src,
        side.dst,
        side.sport.unwrap_or(0),
        side.dport.unwrap_or(0),
    );
    if side.sport.is_none() {
        t.src_port = None;
        t.dst_port = None;
    }
    t.icmp_type = side.icmp_type;
    t.icmp_code = side.code;
    t.icmp_id = side.id;
    t
}

fn winner(e: &Entry) -> Winner {
    Winner {
        orig: Side::from(&e.orig),
        reply: Side::from(&e.reply),
    }
}

/// Same addresses, protocol and ports (entries also carry directional zones).
fn same_tuple(a: &Tuple, b: &Tuple) -> bool {
    (a.src, a.dst, a.proto, a.src_port, a.dst_port)
        == (b.src, b.dst, b.proto, b.src_port, b.dst_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(kind: EventKind, cause: Option<Cause>) -> CtEvent {
        let mut raw = ct_common::Event::zeroed();
        raw.kind = EventKind::New as u8;
        let mut ev = crate::event::decode(&raw, &crate::clock::Clock::new(250)).unwrap();
        ev.kind = kind;
        ev.cause = cause;
        ev.unverified = true;
        ev
    }

    fn counters(insert_failed: u64, drop: u64, clash_resolve: u64, early_drop: u64) -> Counters {
        Counters {
            insert_failed,
            drop,
            clash_resolve,
            early_drop,
        }
    }

    #[test]
    fn a_kind_never_outnumbers_its_counter() {
        let mut avail = counters(1, 3, 0, 0);
        let mut used = Counters::default();
        let mut kept = 0;
        for _ in 0..3 {
            let mut ev = candidate(EventKind::InsertFailed, Some(Cause::NatPortClash));
            kept += usize::from(credit(&mut ev, &mut avail, &mut used));
        }
        assert_eq!(kept, 1, "one insert_failed counted, one event");
        // The clash took one drop with it; two are left for table-full candidates.
        assert_eq!(used, counters(1, 1, 0, 0));
        let mut full = 0;
        for _ in 0..5 {
            let mut ev = candidate(EventKind::TableFull, Some(Cause::TableFull));
            full += usize::from(credit(&mut ev, &mut avail, &mut used));
        }
        assert_eq!(full, 2);
        assert_eq!(avail, Counters::default());
    }

    #[test]
    fn dying_takes_no_drop_and_nat_clash_is_kept_without_credit() {
        let mut avail = counters(1, 1, 0, 0);
        let mut used = Counters::default();
        let mut ev = candidate(EventKind::InsertFailed, Some(Cause::Dying));
        assert!(credit(&mut ev, &mut avail, &mut used));
        assert_eq!(avail, counters(0, 1, 0, 0));
        let mut merged = candidate(EventKind::ClashResolved, Some(Cause::Merged));
        assert!(!credit(&mut merged, &mut avail, &mut used));
        let mut reply_only = candidate(EventKind::ClashResolved, Some(Cause::NatClashReplyOnly));
        assert!(credit(&mut reply_only, &mut avail, &mut used));
    }

    #[test]
    fn destroys_split_into_early_drop_and_ctnetlink() {
        let mut avail = counters(0, 0, 0, 1);
        let mut used = Counters::default();
        let mut first = candidate(EventKind::Destroy, None);
        let mut second = candidate(EventKind::Destroy, None);
        assert!(credit(&mut first, &mut avail, &mut used));
        assert!(credit(&mut second, &mut avail, &mut used));
        assert_eq!(
            (first.kind, first.reason),
            (EventKind::EarlyDrop, Some(DestroyReason::EarlyDrop))
        );
        assert_eq!(
            (second.kind, second.reason),
            (EventKind::Destroy, Some(DestroyReason::Ctnetlink))
        );
    }
}

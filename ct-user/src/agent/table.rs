//! The agent's copy of the conntrack table, for every namespace at once: seeded and
//! refreshed from ctnetlink dumps, kept current between dumps by the event stream.
//!
//! Events carry births and deaths, not every later change (status bits, TCP state, a
//! timeout refreshed by traffic), so each row says when and from where its fields were
//! read; dumps refresh them (`ctscope watch --resync`).

use std::collections::{HashMap, VecDeque};

use ct_common::{Cause, EventKind};
use ct_netlink::{Entry, Status, TcpInfo, Tuple};
use serde::Serialize;

use super::stored::Stored;
use crate::clock::Stamp;
use crate::event::{CtEvent, Side};

/// Rows are found by namespace, zone and original tuple: the kernel's own identity of a
/// confirmed entry (its hash key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: u32,
    pub zone: u16,
    pub orig: Tuple,
}

impl Key {
    pub fn of_entry(netns: u32, e: &Entry) -> Self {
        Key {
            netns,
            zone: e.zone.unwrap_or(0),
            orig: Tuple {
                zone: None,
                ..e.orig.clone()
            },
        }
    }

    fn of_event(ev: &CtEvent, orig: &Side) -> Self {
        Key {
            netns: ev.netns,
            zone: ev.zone,
            orig: tuple(orig, ev.protonum),
        }
    }
}

/// A ct-netlink tuple from an event's side.
pub fn tuple(s: &Side, proto: u8) -> Tuple {
    Tuple {
        src: s.src,
        dst: s.dst,
        proto,
        src_port: s.sport,
        dst_port: s.dport,
        icmp_type: s.icmp_type,
        icmp_code: s.code,
        icmp_id: s.id,
        zone: None,
    }
}

/// Where a row's fields were last read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fields {
    /// A ctnetlink dump: every field as `conntrack -L` shows it.
    Dump,
    /// The entry's `new` event: tuples, status, TCP state, mark, zone and timeout.
    Event,
}

/// Something that happened to an entry besides its birth.
#[derive(Clone, Debug, Serialize)]
pub struct Note {
    pub ts: f64,
    pub what: NoteWhat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

/// What happened beside a row's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteWhat {
    /// A loser was dropped against it.
    WonInsertFailed,
    /// A loser was merged into it.
    WonClash,
    /// A reply-only entry was made beside it.
    NatClashReplyOnly,
}

/// How many notes a row keeps (the oldest go first).
const NOTES_KEPT: usize = 8;

#[derive(Clone, Debug)]
pub struct Row {
    /// Fields as last read (without the original tuple: the key has it); the timeout is
    /// the time left at `fields_at`.
    stored: Stored,
    pub netns: u32,
    /// When the fields were read.
    pub fields_at: Stamp,
    pub fields: Fields,
    /// Unix time the agent first knew the entry.
    pub first_seen: f64,
    /// True when `first_seen` is the entry's birth (its `new` event, or kernel
    /// timestamps), false when the entry predates the agent's knowledge of it.
    pub birth_known: bool,
    pub notes: Vec<Note>,
    /// The kernel address of the entry instance whose `new` event made the row, 0 when
    /// a dump made it. A tuple outlives its instances (`conntrack -D` and the flow's next
    /// packet, an early drop and a retry), so deaths are matched to instances.
    pub ct: u64,
}

/// A row with its key, as the table hands them out.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub key: &'a Key,
    pub row: &'a Row,
}

impl std::ops::Deref for RowRef<'_> {
    type Target = Row;
    fn deref(&self) -> &Row {
        self.row
    }
}

impl RowRef<'_> {
    /// The entry as last read.
    pub fn entry(&self) -> Entry {
        self.row.entry(self.key)
    }

    /// The entry with its timeout counted down to `now`.
    pub fn entry_at(&self, now: Stamp) -> Entry {
        Entry {
            timeout: self.remaining(now),
            ..self.entry()
        }
    }
}

impl Row {
    /// The entry as last read; `key` is this row's.
    pub fn entry(&self, key: &Key) -> Entry {
        self.stored.entry(&key.orig)
    }

    /// Seconds left at `now`, as the kernel would print them. Both the kernel and the
    /// stored value round down, so the stored value is on average half a second short.
    pub fn remaining(&self, now: Stamp) -> Option<u32> {
        let t = f64::from(self.stored.timeout()?);
        let elapsed = now.kernel - self.fields_at.kernel;
        Some((t + 0.5 - elapsed).max(0.0).floor() as u32)
    }

    /// Whether a `destroy` or `early_drop` is about this row's instance: the addresses
    /// agree (or one is unknown), and the row was read no later than the death. Addresses
    /// are reused once freed: a row read after the death is a later instance.
    fn died_as(&self, ev: &CtEvent) -> bool {
        let same = self.ct == 0 || ev.ct == 0 || self.ct == ev.ct;
        same && self.fields_at.wall <= ev.ts
    }

    /// Whether a `new` event is of a later instance than the one this row was born of.
    fn is_older_instance_than(&self, ev: &CtEvent) -> bool {
        self.birth_known && self.ct != 0 && ev.ct != 0 && self.ct != ev.ct
    }

    fn note(&mut self, ts: f64, what: NoteWhat, cause: Option<Cause>) {
        if self.notes.len() == NOTES_KEPT {
            self.notes.remove(0);
        }
        self.notes.push(Note { ts, what, cause });
    }
}

/// What a dump changed: entries the events had not brought in, entries the events had
/// not taken out, and entries whose fields were refreshed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Merge {
    pub added: u64,
    pub removed: u64,
    pub refreshed: u64,
}

#[derive(Debug, Default)]
pub struct Table {
    rows: HashMap<Key, Row>,
    /// Rows a dump no longer had, kept a while for their `destroy`: a dump skips expired
    /// entries the gc worker has not reaped yet, so their event comes after the dump.
    gone: HashMap<Key, Row>,
    /// `gone`'s keys, oldest first.
    gone_order: VecDeque<Key>,
}

/// How many rows removed by dumps wait for their `destroy` (the oldest go first).
const GONE_KEPT: usize = 1 << 16;

impl Table {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.rows.iter().map(|(key, row)| RowRef { key, row })
    }

    /// Rows of one namespace.
    pub fn count(&self, netns: u32) -> usize {
        self.rows.keys().filter(|k| k.netns == netns).count()
    }

    /// Rows per namespace, in one pass.
    pub fn counts(&self) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for k in self.rows.keys() {
            *counts.entry(k.netns).or_default() += 1;
        }
        counts
    }

    /// Replaces one namespace's rows by a dump (each entry with the time it was read),
    /// keeping what the agent knows beyond the dump (first seen, notes). Must run before
    /// any event that came after the dump started is applied: events already applied
    /// are either in the dump or gone from the kernel.
    pub fn merge_dump(&mut self, netns: u32, entries: Vec<(Entry, Stamp)>) -> Merge {
        let mut old: HashMap<Key, Row> = HashMap::new();
        let kept = std::mem::take(&mut self.rows);
        for (k, row) in kept {
            if k.netns == netns {
                old.insert(k, row);
            } else {
                self.rows.insert(k, row);
            }
        }
        let mut merge = Merge::default();
        for (entry, at) in entries {
            if entry.status.contains(Status::NAT_CLASH) {
                continue;
            }
            let key = Key::of_entry(netns, &entry);
            let row = match old.remove(&key) {
                Some(mut row) => {
                    merge.refreshed += 1;
                    row.stored = Stored::new(entry);
                    row.fields_at = at;
                    row.fields = Fields::Dump;
                    row
                }
                None => {
                    merge.added += 1;
                    from_dump(netns, entry, at)
                }
            };
            self.rows.insert(key, row);
        }
        merge.removed = old.len() as u64;
        old.into_iter().for_each(|(k, row)| self.bury(k, row));
        merge
    }

    fn bury(&mut self, key: Key, row: Row) {
        if self.gone_order.len() == GONE_KEPT
            && let Some(oldest) = self.gone_order.pop_front()
        {
            self.gone.remove(&oldest);
        }
        self.gone_order.push_back(key.clone());
        self.gone.insert(key, row);
    }

    /// Drops every row of a namespace that is gone.
    pub fn forget(&mut self, netns: u32) {
        self.rows.retain(|k, _| k.netns != netns);
        self.gone.retain(|k, _| k.netns != netns);
    }

    /// Applies one event (`at`: its time); returns the row a `destroy` or `early_drop`
    /// removed.
    pub fn apply(&mut self, ev: &CtEvent, at: Stamp) -> Option<(Key, Row)> {
        let key = Key::of_event(ev, &ev.orig);
        match ev.kind {
            EventKind::New => {
                self.born(key, ev, at);
                None
            }
            EventKind::Destroy | EventKind::EarlyDrop => self.died(&key, ev),
            EventKind::ClashResolved => {
                // The loser shares the winner's original tuple: merged into it, or made a
                // hidden reply-only entry beside it.
                let what = match ev.cause {
                    Some(Cause::NatClashReplyOnly) => NoteWhat::NatClashReplyOnly,
                    _ => NoteWhat::WonClash,
                };
                if let Some(row) = self.rows.get_mut(&key) {
                    row.note(ev.ts, what, ev.cause);
                }
                None
            }
            EventKind::InsertFailed => {
                if let Some(w) = &ev.winner {
                    let key = Key::of_event(ev, &w.orig);
                    if let Some(row) = self.rows.get_mut(&key) {
                        row.note(ev.ts, NoteWhat::WonInsertFailed, ev.cause);
                    }
                }
                None
            }
            EventKind::TableFull => None,
        }
    }

    /// Removes the row of the instance a `destroy`/`early_drop` is about: the live row,
    /// or one set aside (by a dump, or by a later instance of the same tuple).
    fn died(&mut self, key: &Key, ev: &CtEvent) -> Option<(Key, Row)> {
        if self.rows.get(key).is_some_and(|r| r.died_as(ev)) {
            return self.rows.remove_entry(key);
        }
        if self.gone.get(key).is_some_and(|r| r.died_as(ev)) {
            return self.gone.remove_entry(key);
        }
        None
    }

    fn born(&mut self, key: Key, ev: &CtEvent, at: Stamp) {
        let netns = ev.netns;
        let fresh = from_event(ev);
        if self
            .rows
            .get(&key)
            .is_some_and(|r| r.is_older_instance_than(ev))
            && let Some(older) = self.rows.remove(&key)
        {
            // Its destroy may still come (held while the counters settle): set aside, so
            // the destroy finds it and its lifetime is counted.
            self.bury(key.clone(), older);
        }
        match self.rows.get_mut(&key) {
            // A dump read after the event already has fresher fields; the event still
            // dates the birth.
            Some(row) if row.fields_at.wall > ev.ts => {
                if !row.birth_known {
                    row.first_seen = ev.ts;
                    row.birth_known = true;
                }
            }
            Some(row) => {
                row.stored = Stored::new(fresh);
                row.fields_at = at;
                row.fields = Fields::Event;
                row.ct = ev.ct;
            }
            None => {
                self.rows.insert(
                    key,
                    Row {
                        stored: Stored::new(fresh),
                        netns,
                        fields_at: at,
                        fields: Fields::Event,
                        first_seen: ev.ts,
                        birth_known: true,
                        notes: Vec::new(),
                        ct: ev.ct,
                    },
                );
            }
        }
    }

    /// The row whose original or reply tuple is `t` in this namespace and zone.
    pub fn get(&self, netns: u32, zone: u16, t: &Tuple) -> Option<RowRef<'_>> {
        let key = Key {
            netns,
            zone,
            orig: Tuple {
                zone: None,
                ..t.clone()
            },
        };
        if let Some((key, row)) = self.rows.get_key_value(&key) {
            return Some(RowRef { key, row });
        }
        self.rows().find(|r| {
            r.key.netns == netns
                && r.key.zone == zone
                && Tuple {
                    zone: None,
                    ..r.row.stored.reply().clone()
                } == key.orig
        })
    }
}

fn from_dump(netns: u32, entry: Entry, at: Stamp) -> Row {
    // With nf_conntrack_timestamp on, the kernel dates the birth itself.
    let start = entry.timestamp.map(|t| t.start as f64 / 1e9);
    Row {
        stored: Stored::new(entry),
        netns,
        fields_at: at,
        fields: Fields::Dump,
        first_seen: start.unwrap_or(at.wall),
        birth_known: start.is_some(),
        notes: Vec::new(),
        ct: 0,
    }
}

/// What a `new` event tells about the entry, in ct-netlink's shape.
fn from_event(ev: &CtEvent) -> Entry {
    let mut e = Entry::new(tuple(&ev.orig, ev.protonum), tuple(&ev.reply, ev.protonum));
    e.status = ev.status;
    e.timeout = ev.timeout.map(|t| t.clamp(0, i64::from(u32::MAX)) as u32);
    e.mark = Some(ev.mark);
    e.zone = (ev.zone != 0).then_some(ev.zone);
    // The table's own reference; a dump says otherwise while packets hold the entry.
    e.use_count = Some(1);
    e.tcp = ev.tcp_state.map(|state| TcpInfo {
        state,
        wscale_orig: None,
        wscale_reply: None,
        flags_orig: None,
        flags_reply: None,
    });
    e
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::event::{Proto, Winner};

    fn side(sport: u16, dport: u16) -> Side {
        Side {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            sport: Some(sport),
            dport: Some(dport),
            icmp_type: None,
            code: None,
            id: None,
        }
    }

    fn reversed(s: &Side) -> Side {
        Side {
            src: s.dst,
            dst: s.src,
            sport: s.dport,
            dport: s.sport,
            ..s.clone()
        }
    }

    fn event(kind: EventKind, sport: u16, ts: f64) -> CtEvent {
        let orig = side(sport, 53);
        CtEvent {
            ts,
            kind,
            cause: None,
            reason: None,
            via: None,
            proto: Proto::Name("udp"),
            protonum: 17,
            family: "ipv4",
            reply: reversed(&orig),
            orig,
            status: Status(Status::CONFIRMED),
            tcp_state: None,
            mark: 0,
            zone: 0,
            netns: 7,
            timeout: Some(30),
            pid: 0,
            winner: None,
            nat: Vec::new(),
            from_ctnetlink: false,
            ct: 1,
            unverified: false,
        }
    }

    /// A dump of these entries, all read at `at`.
    fn at(entries: Vec<Entry>, at: f64) -> Vec<(Entry, Stamp)> {
        entries.into_iter().map(|e| (e, Stamp::at(at))).collect()
    }

    fn dumped(sport: u16, timeout: u32) -> Entry {
        let orig = tuple(&side(sport, 53), 17);
        let mut e = Entry::new(orig.clone(), orig.inverted());
        e.timeout = Some(timeout);
        e.status = Status(Status::CONFIRMED | Status::SEEN_REPLY);
        e
    }

    #[test]
    fn new_then_destroy_leaves_nothing_and_returns_the_row() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        assert_eq!(t.count(7), 1);
        let (_, gone) = t
            .apply(&event(EventKind::Destroy, 1000, 12.0), Stamp::at(12.0))
            .expect("the row");
        assert_eq!(gone.first_seen, 10.0);
        assert!(gone.birth_known);
        assert!(t.is_empty());
    }

    /// An event of the instance at kernel address `ct`.
    fn event_of(kind: EventKind, sport: u16, ts: f64, ct: u64) -> CtEvent {
        CtEvent {
            ct,
            ..event(kind, sport, ts)
        }
    }

    #[test]
    fn a_late_destroy_of_a_deleted_instance_spares_its_successor() {
        // `conntrack -D`, then the flow's next packet: the old destroy arrives last.
        let mut t = Table::default();
        t.apply(&event_of(EventKind::New, 1000, 10.0, 0xa0), Stamp::at(10.0));
        t.apply(&event_of(EventKind::New, 1000, 20.1, 0xb0), Stamp::at(20.1));
        let (_, old) = t
            .apply(
                &event_of(EventKind::Destroy, 1000, 20.0, 0xa0),
                Stamp::at(20.2),
            )
            .expect("the old instance's row, set aside");
        assert_eq!(old.first_seen, 10.0, "its lifetime is still counted");
        assert_eq!(t.count(7), 1, "the new instance stays");
        assert!(
            t.apply(
                &event_of(EventKind::Destroy, 1000, 30.0, 0xb0),
                Stamp::at(30.0)
            )
            .is_some()
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_reused_address_is_told_apart_by_time() {
        // The slab gave the new instance the freed one's address.
        let mut t = Table::default();
        t.apply(&event_of(EventKind::New, 1000, 10.0, 0xa0), Stamp::at(10.0));
        t.apply(&event_of(EventKind::New, 1000, 20.1, 0xa0), Stamp::at(20.1));
        assert!(
            t.apply(
                &event_of(EventKind::Destroy, 1000, 20.0, 0xa0),
                Stamp::at(20.2)
            )
            .is_none(),
            "a death before the row was read is an earlier instance's"
        );
        assert_eq!(t.count(7), 1);
    }

    #[test]
    fn a_dump_after_the_death_keeps_the_row_it_read() {
        let mut t = Table::default();
        t.apply(&event_of(EventKind::New, 1000, 10.0, 0xa0), Stamp::at(10.0));
        t.merge_dump(7, at(vec![dumped(1000, 25)], 20.5));
        assert!(
            t.apply(
                &event_of(EventKind::Destroy, 1000, 20.0, 0xa0),
                Stamp::at(20.6)
            )
            .is_none()
        );
        assert_eq!(
            t.count(7),
            1,
            "the dump saw the entry alive after that death"
        );
    }

    #[test]
    fn dump_replaces_a_namespace_and_keeps_what_it_knew() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        t.apply(&event(EventKind::New, 1001, 10.0), Stamp::at(10.0));
        let m = t.merge_dump(7, at(vec![dumped(1000, 25), dumped(1002, 30)], 15.0));
        assert_eq!(
            m,
            Merge {
                added: 1,
                removed: 1,
                refreshed: 1
            }
        );
        let key = tuple(&side(1000, 53), 17);
        let row = t.get(7, 0, &key).expect("kept");
        assert_eq!(row.first_seen, 10.0, "first seen survives the refresh");
        assert_eq!(row.fields, Fields::Dump);
        assert!(row.entry().status.contains(Status::SEEN_REPLY));
        assert!(t.get(7, 0, &tuple(&side(1001, 53), 17)).is_none());
        let added = t.get(7, 0, &tuple(&side(1002, 53), 17)).expect("added");
        assert!(!added.birth_known);
    }

    #[test]
    fn a_destroy_after_a_dump_dropped_the_row_still_returns_it() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        // Expired: the dump skips it before the gc worker reaps it.
        t.merge_dump(7, Vec::new());
        assert!(t.is_empty());
        let (_, row) = t
            .apply(&event(EventKind::Destroy, 1000, 45.0), Stamp::at(45.0))
            .expect("the row the dump dropped");
        assert_eq!(row.first_seen, 10.0);
        assert!(
            t.apply(&event(EventKind::Destroy, 1000, 46.0), Stamp::at(46.0))
                .is_none()
        );
    }

    #[test]
    fn an_older_new_does_not_overwrite_a_fresher_dump() {
        let mut t = Table::default();
        t.merge_dump(7, at(vec![dumped(1000, 25)], 15.0));
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        let row = t.get(7, 0, &tuple(&side(1000, 53), 17)).unwrap();
        assert_eq!(row.entry().timeout, Some(25));
        assert_eq!(row.first_seen, 10.0);
        assert!(row.birth_known);
    }

    #[test]
    fn dumps_of_other_namespaces_leave_this_one_alone() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        t.merge_dump(8, at(vec![dumped(1000, 25)], 15.0));
        assert_eq!(t.count(7), 1);
        assert_eq!(t.count(8), 1);
        t.forget(8);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn remaining_counts_down_from_when_the_fields_were_read() {
        let mut t = Table::default();
        t.merge_dump(7, at(vec![dumped(1000, 30)], 100.0));
        let row = t.get(7, 0, &tuple(&side(1000, 53), 17)).unwrap();
        assert_eq!(row.remaining(Stamp::at(100.2)), Some(30));
        assert_eq!(row.remaining(Stamp::at(110.6)), Some(19));
        assert_eq!(row.remaining(Stamp::at(200.0)), Some(0));
        // The kernel's clock counts, not the wall clock (they drift apart in slow VMs).
        let drifted = Stamp {
            wall: 122.0,
            kernel: 120.0,
        };
        assert_eq!(row.remaining(drifted), Some(10));
    }

    #[test]
    fn clashes_and_insert_failures_are_noted_on_the_winner() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        let mut merged = event(EventKind::ClashResolved, 1000, 11.0);
        merged.cause = Some(Cause::Merged);
        t.apply(&merged, Stamp::at(11.0));
        let mut failed = event(EventKind::InsertFailed, 2000, 12.0);
        failed.cause = Some(Cause::NatPortClash);
        let w = side(1000, 53);
        failed.winner = Some(Winner {
            reply: reversed(&w),
            orig: w,
        });
        t.apply(&failed, Stamp::at(12.0));
        let row = t.get(7, 0, &tuple(&side(1000, 53), 17)).unwrap();
        let whats: Vec<_> = row.notes.iter().map(|n| (n.what, n.cause)).collect();
        assert_eq!(
            whats,
            [
                (NoteWhat::WonClash, Some(Cause::Merged)),
                (NoteWhat::WonInsertFailed, Some(Cause::NatPortClash))
            ]
        );
        assert_eq!(t.len(), 1, "the loser never enters the table");
    }

    #[test]
    fn get_finds_by_reply_tuple_and_skips_hidden_nat_clash_entries() {
        let mut t = Table::default();
        let mut hidden = dumped(1003, 1);
        hidden.status = Status(Status::CONFIRMED | Status::NAT_CLASH);
        t.merge_dump(7, at(vec![dumped(1000, 30), hidden], 1.0));
        assert_eq!(t.len(), 1, "conntrack -L hides NAT-clash entries too");
        let reply = tuple(&reversed(&side(1000, 53)), 17);
        assert!(t.get(7, 0, &reply).is_some());
    }
}

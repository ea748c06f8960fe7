//! The agent's copy of the conntrack table, for every namespace at once: seeded and
//! refreshed from ctnetlink dumps, kept current between dumps by the event stream.
//!
//! Events carry births and deaths, not every later change (status bits, TCP state, a
//! timeout refreshed by traffic), so each row says when and from where its fields were
//! read; dumps refresh them (`ctscope watch --resync`). Rows are kept per namespace and
//! address family in [`Rows`], compactly.

use std::collections::{HashMap, VecDeque};

use ct_common::{Cause, EventKind};
use ct_netlink::{Entry, Status, TcpInfo, Tuple};
use serde::Serialize;

use super::rows::{Addr, CTuple, Fields, Note, NoteWhat, Rows, Slot, SlotKey};
use crate::clock::Stamp;
use crate::diagnose::census::{Census, Counter};
use crate::event::{CtEvent, Side};

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

/// How many notes a row keeps (the oldest go first).
const NOTES_KEPT: usize = 8;

type V4 = [u8; 4];
type V6 = [u8; 16];

/// One namespace's rows.
#[derive(Debug, Default)]
struct Ns {
    v4: Rows<V4>,
    v6: Rows<V6>,
}

impl Ns {
    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// A slot of either family, borrowed.
#[derive(Clone, Copy, Debug)]
enum AnyRef<'a> {
    V4(&'a Slot<V4>),
    V6(&'a Slot<V6>),
}

/// A slot of either family, owned (rows set aside for their `destroy`).
#[derive(Debug)]
enum AnySlot {
    V4(Slot<V4>),
    V6(Box<Slot<V6>>),
}

/// Runs `$e` on the slot inside, whichever its family.
macro_rules! on_slot {
    ($s:expr, $x:ident => $e:expr) => {
        match $s {
            AnyRef::V4($x) => $e,
            AnyRef::V6($x) => $e,
        }
    };
}

impl AnySlot {
    fn as_ref(&self) -> AnyRef<'_> {
        match self {
            AnySlot::V4(s) => AnyRef::V4(s),
            AnySlot::V6(s) => AnyRef::V6(s),
        }
    }
}

/// How each family's rows are found, set aside and borrowed.
trait Family: Addr + 'static {
    fn rows(ns: &Ns) -> &Rows<Self>;
    fn rows_mut(ns: &mut Ns) -> &mut Rows<Self>;
    fn owned(s: Slot<Self>) -> AnySlot;
    fn borrowed(s: &Slot<Self>) -> AnyRef<'_>;
}

impl Family for V4 {
    fn rows(ns: &Ns) -> &Rows<Self> {
        &ns.v4
    }
    fn rows_mut(ns: &mut Ns) -> &mut Rows<Self> {
        &mut ns.v4
    }
    fn owned(s: Slot<Self>) -> AnySlot {
        AnySlot::V4(s)
    }
    fn borrowed(s: &Slot<Self>) -> AnyRef<'_> {
        AnyRef::V4(s)
    }
}

impl Family for V6 {
    fn rows(ns: &Ns) -> &Rows<Self> {
        &ns.v6
    }
    fn rows_mut(ns: &mut Ns) -> &mut Rows<Self> {
        &mut ns.v6
    }
    fn owned(s: Slot<Self>) -> AnySlot {
        AnySlot::V6(Box::new(s))
    }
    fn borrowed(s: &Slot<Self>) -> AnyRef<'_> {
        AnyRef::V6(s)
    }
}

/// A row and its namespace, as the table hands them out.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub netns: u32,
    slot: AnyRef<'a>,
}

impl RowRef<'_> {
    /// The entry as last read.
    pub fn entry(&self) -> Entry {
        on_slot!(self.slot, s => s.entry())
    }

    /// The entry with its timeout counted down to `now`.
    pub fn entry_at(&self, now: Stamp) -> Entry {
        Entry {
            timeout: self.remaining(now),
            ..self.entry()
        }
    }

    /// Seconds left at `now`, as the kernel would print them. Both the kernel and the
    /// stored value round down, so the stored value is on average half a second short.
    pub fn remaining(&self, now: Stamp) -> Option<u32> {
        let (timeout, at) = on_slot!(self.slot, s => (s.timeout(), s.fields_at));
        remaining(timeout?, at, now)
    }

    pub fn first_seen(&self) -> f64 {
        on_slot!(self.slot, s => s.first_seen)
    }

    /// True when `first_seen` is the entry's birth (its `new` event, or kernel
    /// timestamps), false when the entry predates the agent's knowledge of it.
    pub fn birth_known(&self) -> bool {
        on_slot!(self.slot, s => s.birth_known())
    }

    pub fn fields(&self) -> Fields {
        on_slot!(self.slot, s => s.fields())
    }

    /// When the fields were read.
    pub fn fields_at(&self) -> Stamp {
        on_slot!(self.slot, s => s.fields_at)
    }

    pub fn notes(&self) -> &[Note] {
        on_slot!(self.slot, s => s.notes())
    }
}

fn remaining(timeout: u32, at: Stamp, now: Stamp) -> Option<u32> {
    let elapsed = now.kernel - at.kernel;
    Some((f64::from(timeout) + 0.5 - elapsed).max(0.0).floor() as u32)
}

/// A row a `destroy` or `early_drop` removed: what the lifetimes need of it.
#[derive(Clone, Debug)]
pub struct Dead {
    pub entry: Entry,
    pub first_seen: f64,
    pub birth_known: bool,
}

impl Dead {
    fn of(s: AnyRef) -> Self {
        on_slot!(s, s => Dead {
            entry: s.entry(),
            first_seen: s.first_seen,
            birth_known: s.birth_known(),
        })
    }
}

/// Whether a `destroy` or `early_drop` is about this row's instance: the addresses agree
/// (or one is unknown), and the row was read no later than the death. Addresses are
/// reused once freed: a row read after the death is a later instance.
fn died_as<A: Addr>(row: &Slot<A>, ev: &CtEvent) -> bool {
    let same = row.ct == 0 || ev.ct == 0 || row.ct == ev.ct;
    same && row.fields_at.wall <= ev.ts
}

/// Whether a `new` event is of a later instance than the one this row was born of.
fn is_older_instance_than<A: Addr>(row: &Slot<A>, ev: &CtEvent) -> bool {
    row.birth_known() && row.ct != 0 && ev.ct != 0 && row.ct != ev.ct
}

/// What a dump changed: entries the events had not brought in, entries the events had
/// not taken out, and entries whose fields were refreshed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Merge {
    pub added: u64,
    pub removed: u64,
    pub refreshed: u64,
}

/// A copy of some namespaces' rows, to render away from the agent's loop: a listing of a
/// million rows takes seconds, and events, status and other clients must not wait for it.
/// Copying is a few tens of milliseconds per million rows.
#[derive(Debug, Default)]
pub struct RowsCopy {
    ns: Vec<NsCopy>,
}

/// One namespace's rows, copied: its inode, IPv4 and IPv6 rows.
type NsCopy = (u32, Vec<Slot<V4>>, Vec<Slot<V6>>);

impl RowsCopy {
    pub fn len(&self) -> usize {
        self.ns.iter().map(|(_, a, b)| a.len() + b.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rows(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.ns.iter().flat_map(|(netns, v4, v6)| {
            let netns = *netns;
            let v4 = v4.iter().map(move |s| RowRef {
                netns,
                slot: AnyRef::V4(s),
            });
            v4.chain(v6.iter().map(move |s| RowRef {
                netns,
                slot: AnyRef::V6(s),
            }))
        })
    }
}

/// Where a row set aside is found: namespace, zone, original tuple.
type GoneKey = (u32, u16, Tuple);

#[derive(Debug, Default)]
pub struct Table {
    ns: HashMap<u32, Ns>,
    /// Rows a dump no longer had, kept a while for their `destroy`: a dump skips expired
    /// entries the gc worker has not reaped yet, so their event comes after the dump.
    gone: HashMap<GoneKey, AnySlot>,
    /// `gone`'s keys, oldest first.
    gone_order: VecDeque<GoneKey>,
    /// Rows dropped since memory was last handed back to the system.
    dropped: usize,
}

/// How many rows removed by dumps wait for their `destroy` (the oldest go first).
const GONE_KEPT: usize = 1 << 16;

impl Table {
    pub fn len(&self) -> usize {
        self.ns.values().map(Ns::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row.
    pub fn rows(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.ns.keys().flat_map(|&n| self.rows_of(n))
    }

    /// The rows of one namespace.
    pub fn rows_of(&self, netns: u32) -> impl Iterator<Item = RowRef<'_>> {
        let ns = self.ns.get(&netns);
        let v4 = ns
            .into_iter()
            .flat_map(|n| n.v4.iter())
            .map(move |s| RowRef {
                netns,
                slot: AnyRef::V4(s),
            });
        let v6 = ns
            .into_iter()
            .flat_map(|n| n.v6.iter())
            .map(move |s| RowRef {
                netns,
                slot: AnyRef::V6(s),
            });
        v4.chain(v6)
    }

    /// A copy of the rows of one namespace (`Some`), or of all.
    pub fn snapshot(&self, netns: Option<u32>) -> RowsCopy {
        let ns = self
            .ns
            .iter()
            .filter(|(n, _)| netns.is_none_or(|want| want == **n))
            .map(|(&n, ns)| (n, ns.v4.copy(), ns.v6.copy()))
            .collect();
        RowsCopy { ns }
    }

    /// The rows of one namespace (`Some`), or all, in place.
    pub fn scoped_rows(&self, netns: Option<u32>) -> Box<dyn Iterator<Item = RowRef<'_>> + '_> {
        match netns {
            Some(n) => Box::new(self.rows_of(n)),
            None => Box::new(self.rows()),
        }
    }

    /// One namespace's rows counted as a dump of it would be, with their seconds left
    /// at `now`.
    pub fn census(&self, netns: u32, now: Stamp) -> Census {
        let mut counter = Counter::default();
        for row in self.rows_of(netns) {
            counter.add(&row.entry_at(now));
        }
        counter.finish()
    }

    /// Rows of one namespace.
    pub fn count(&self, netns: u32) -> usize {
        self.ns.get(&netns).map_or(0, Ns::len)
    }

    /// Rows per namespace.
    pub fn counts(&self) -> HashMap<u32, usize> {
        self.ns.iter().map(|(&n, ns)| (n, ns.len())).collect()
    }

    /// Replaces one namespace's rows by a dump (each entry with the time it was read),
    /// keeping what the agent knows beyond the dump (first seen, notes). Must run before
    /// any event that came after the dump started is applied: events already applied
    /// are either in the dump or gone from the kernel.
    pub fn merge_dump(&mut self, netns: u32, entries: Vec<(Entry, Stamp)>) -> Merge {
        let ns = self.ns.entry(netns).or_default();
        ns.v4.unsee_all();
        ns.v6.unsee_all();
        let mut merge = Merge::default();
        for (entry, at) in entries {
            if entry.status.contains(Status::NAT_CLASH) {
                continue;
            }
            let refreshed = match entry.orig.src.is_ipv4() {
                true => merge_one::<V4>(ns, entry, at),
                false => merge_one::<V6>(ns, entry, at),
            };
            match refreshed {
                Some(true) => merge.refreshed += 1,
                Some(false) => merge.added += 1,
                None => {}
            }
        }
        let unseen4 = ns.v4.take_unseen();
        let unseen6 = ns.v6.take_unseen();
        merge.removed = (unseen4.len() + unseen6.len()) as u64;
        self.dropped += unseen4.len() + unseen6.len();
        for s in unseen4 {
            self.bury(netns, V4::owned(s));
        }
        for s in unseen6 {
            self.bury(netns, V6::owned(s));
        }
        merge
    }

    fn bury(&mut self, netns: u32, slot: AnySlot) {
        if self.gone_order.len() == GONE_KEPT
            && let Some(oldest) = self.gone_order.pop_front()
        {
            self.gone.remove(&oldest);
        }
        let key = on_slot!(slot.as_ref(), s => (netns, s.key().zone, s.key().orig.tuple()));
        self.gone_order.push_back(key.clone());
        self.gone.insert(key, slot);
    }

    /// Drops every row of a namespace that is gone.
    pub fn forget(&mut self, netns: u32) {
        if let Some(ns) = self.ns.remove(&netns) {
            self.dropped += ns.len();
        }
        self.gone.retain(|k, _| k.0 != netns);
        self.gone_order.retain(|k| k.0 != netns);
    }

    /// Hands free memory back to the system if rows went since the last time: their
    /// storage shrinks as they go, but the allocator keeps what was freed unless asked.
    /// The agent's loop calls it every second, not per row.
    pub fn release_memory(&mut self) {
        if std::mem::take(&mut self.dropped) > 0 {
            crate::sys::memory::trim();
        }
    }

    /// Applies one event (`at`: its time); returns the row a `destroy` or `early_drop`
    /// removed.
    pub fn apply(&mut self, ev: &CtEvent, at: Stamp) -> Option<Dead> {
        match ev.kind {
            EventKind::New => {
                match ev.orig.src.is_ipv4() {
                    true => self.born::<V4>(ev, at),
                    false => self.born::<V6>(ev, at),
                }
                None
            }
            EventKind::Destroy | EventKind::EarlyDrop => {
                let dead = match ev.orig.src.is_ipv4() {
                    true => self.died::<V4>(ev),
                    false => self.died::<V6>(ev),
                };
                if dead.is_some() {
                    self.dropped += 1;
                }
                dead
            }
            EventKind::ClashResolved => {
                // The loser shares the winner's original tuple: merged into it, or made a
                // hidden reply-only entry beside it.
                let what = match ev.cause {
                    Some(Cause::NatClashReplyOnly) => NoteWhat::NatClashReplyOnly,
                    _ => NoteWhat::WonClash,
                };
                self.note(ev, &ev.orig, what);
                None
            }
            EventKind::InsertFailed => {
                if let Some(w) = &ev.winner {
                    self.note(ev, &w.orig, NoteWhat::WonInsertFailed);
                }
                None
            }
            EventKind::TableFull => None,
        }
    }

    fn note(&mut self, ev: &CtEvent, orig: &Side, what: NoteWhat) {
        let note = Note {
            ts: ev.ts,
            what,
            cause: ev.cause,
        };
        match orig.src.is_ipv4() {
            true => self.note_on::<V4>(ev, orig, note),
            false => self.note_on::<V6>(ev, orig, note),
        }
    }

    fn note_on<A: Family>(&mut self, ev: &CtEvent, orig: &Side, note: Note) {
        let Some(key) = key_of::<A>(ev.zone, &tuple(orig, ev.protonum)) else {
            return;
        };
        if let Some(row) = self
            .ns
            .get_mut(&ev.netns)
            .and_then(|ns| A::rows_mut(ns).get_mut(&key))
        {
            row.note(note, NOTES_KEPT);
        }
    }

    /// Removes the row of the instance a `destroy`/`early_drop` is about: the live row,
    /// or one set aside (by a dump, or by a later instance of the same tuple).
    fn died<A: Family>(&mut self, ev: &CtEvent) -> Option<Dead> {
        let orig = tuple(&ev.orig, ev.protonum);
        let key = key_of::<A>(ev.zone, &orig)?;
        if let Some(rows) = self.ns.get_mut(&ev.netns).map(A::rows_mut)
            && rows.get(&key).is_some_and(|r| died_as(r, ev))
        {
            return rows.remove(&key).map(|s| Dead::of(A::borrowed(&s)));
        }
        let gone_key = (ev.netns, ev.zone, orig);
        let set_aside = self
            .gone
            .get(&gone_key)
            .is_some_and(|s| on_slot!(s.as_ref(), r => died_as(r, ev)));
        if set_aside {
            return self.gone.remove(&gone_key).map(|s| Dead::of(s.as_ref()));
        }
        None
    }

    fn born<A: Family>(&mut self, ev: &CtEvent, at: Stamp) {
        let Some(mut fresh) = Slot::<A>::new(from_event(ev), at, Fields::Event) else {
            return;
        };
        fresh.set_birth(ev.ts, true);
        fresh.ct = ev.ct;
        let key = *fresh.key();
        let rows = A::rows_mut(self.ns.entry(ev.netns).or_default());
        if rows
            .get(&key)
            .is_some_and(|r| is_older_instance_than(r, ev))
            && let Some(older) = rows.remove(&key)
        {
            // Its destroy may still come (held while the counters settle): set aside, so
            // the destroy finds it and its lifetime is counted.
            self.bury(ev.netns, A::owned(older));
        }
        let rows = A::rows_mut(self.ns.entry(ev.netns).or_default());
        match rows.get_mut(&key) {
            // A dump read after the event already has fresher fields; the event still
            // dates the birth.
            Some(row) if row.fields_at.wall > ev.ts => {
                if !row.birth_known() {
                    row.set_birth(ev.ts, true);
                }
            }
            Some(row) => {
                row.refresh(fresh);
                row.ct = ev.ct;
            }
            None => rows.insert(fresh),
        }
    }

    /// The row whose original or reply tuple is `t` in this namespace and zone.
    pub fn get(&self, netns: u32, zone: u16, t: &Tuple) -> Option<RowRef<'_>> {
        match t.src.is_ipv4() {
            true => self.get_in::<V4>(netns, zone, t),
            false => self.get_in::<V6>(netns, zone, t),
        }
    }

    fn get_in<A: Family>(&self, netns: u32, zone: u16, t: &Tuple) -> Option<RowRef<'_>> {
        let rows = A::rows(self.ns.get(&netns)?);
        let key = key_of::<A>(zone, t)?;
        let wanted = Tuple {
            zone: None,
            ..t.clone()
        };
        let slot = rows.get(&key).or_else(|| {
            rows.iter()
                .find(|s| s.key().zone == zone && s.reply() == wanted)
        })?;
        Some(RowRef {
            netns,
            slot: A::borrowed(slot),
        })
    }
}

/// A row's key: zone and original tuple (its own zone aside).
fn key_of<A: Addr>(zone: u16, t: &Tuple) -> Option<SlotKey<A>> {
    let orig = CTuple::of(&Tuple {
        zone: None,
        ..t.clone()
    })?;
    Some(SlotKey { zone, orig })
}

/// Merges one dumped entry into its family's rows: `Some(true)` refreshed, `Some(false)`
/// added.
fn merge_one<A: Family>(ns: &mut Ns, entry: Entry, at: Stamp) -> Option<bool> {
    // With nf_conntrack_timestamp on, the kernel dates the birth itself.
    let start = entry.timestamp.map(|t| t.start as f64 / 1e9);
    let mut slot = Slot::<A>::new(entry, at, Fields::Dump)?;
    slot.set_birth(start.unwrap_or(at.wall), start.is_some());
    Some(A::rows_mut(ns).merge(slot))
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

    /// Entries of every kind a row stores: UDP (inline), TCP with its state, IPv6, NAT
    /// bits, a helper (kept whole beside the slot).
    fn assorted() -> Vec<Entry> {
        let mut table: Vec<Entry> = (0..40).map(|p| dumped(p, 100 + u32::from(p))).collect();
        let mut tcp = dumped(41, 431_000);
        tcp.orig.proto = 6;
        tcp.reply.proto = 6;
        tcp.proto = 6;
        tcp.status = Status(Status::CONFIRMED | Status::SEEN_REPLY | Status::SRC_NAT);
        tcp.tcp = Some(TcpInfo {
            state: ct_netlink::TcpState::from_name("ESTABLISHED").unwrap(),
            wscale_orig: None,
            wscale_reply: None,
            flags_orig: None,
            flags_reply: None,
        });
        let mut helped = tcp.clone();
        helped.orig.src_port = Some(42);
        helped.reply.dst_port = Some(42);
        helped.helper = Some("ftp".into());
        let v6 = |ip: &str| ip.parse::<IpAddr>().unwrap();
        let orig = Tuple::ports(17, v6("fd00::1"), v6("fd00::2"), 5000, 53);
        let mut six = Entry::new(orig.clone(), orig.inverted());
        six.family = ct_netlink::Family::Ipv6;
        six.timeout = Some(7);
        table.extend([tcp, helped, six]);
        table
    }

    #[test]
    fn census_counts_the_rows_as_a_dump_of_them_is_counted() {
        let mut t = Table::default();
        let dump = assorted();
        t.merge_dump(7, at(dump.clone(), 10.0));
        t.merge_dump(8, at(vec![dumped(1, 5)], 10.0));
        assert_eq!(t.census(7, Stamp::at(10.0)), Census::of(&dump));
        // An event's row counts too, and every row's seconds left count down.
        t.apply(&event(EventKind::New, 5000, 12.0), Stamp::at(12.0));
        let mut later: Vec<Entry> = dump
            .into_iter()
            .map(|e| Entry {
                timeout: e.timeout.map(|t| t.saturating_sub(10)),
                ..e
            })
            .collect();
        let mut born = dumped(5000, 22);
        born.status = Status(Status::CONFIRMED);
        later.push(born);
        assert_eq!(t.census(7, Stamp::at(20.0)), Census::of(&later));
        assert_eq!(t.census(9, Stamp::at(20.0)), Census::default());
    }

    #[test]
    fn new_then_destroy_leaves_nothing_and_returns_the_row() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        assert_eq!(t.count(7), 1);
        let gone = t
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
        let old = t
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
        assert_eq!(row.first_seen(), 10.0, "first seen survives the refresh");
        assert_eq!(row.fields(), Fields::Dump);
        assert!(row.entry().status.contains(Status::SEEN_REPLY));
        assert!(t.get(7, 0, &tuple(&side(1001, 53), 17)).is_none());
        let added = t.get(7, 0, &tuple(&side(1002, 53), 17)).expect("added");
        assert!(!added.birth_known());
    }

    #[test]
    fn a_destroy_after_a_dump_dropped_the_row_still_returns_it() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        // Expired: the dump skips it before the gc worker reaps it.
        t.merge_dump(7, Vec::new());
        assert!(t.is_empty());
        let row = t
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
        assert_eq!(row.first_seen(), 10.0);
        assert!(row.birth_known());
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
        let whats: Vec<_> = row.notes().iter().map(|n| (n.what, n.cause)).collect();
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

    #[test]
    fn a_snapshot_keeps_the_rows_it_copied() {
        let mut t = Table::default();
        t.apply(&event(EventKind::New, 1000, 10.0), Stamp::at(10.0));
        t.merge_dump(8, at(vec![dumped(1000, 25)], 15.0));
        let all = t.snapshot(None);
        let one = t.snapshot(Some(7));
        t.apply(&event(EventKind::Destroy, 1000, 16.0), Stamp::at(16.0));
        assert_eq!(t.len(), 1);
        assert_eq!(all.len(), 2);
        let rows: Vec<_> = one.rows().map(|r| (r.netns, r.entry().timeout)).collect();
        assert_eq!(rows, [(7, Some(30))]);
    }
}

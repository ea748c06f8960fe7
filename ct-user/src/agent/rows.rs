//! How the agent stores the rows of one namespace and address family, compactly: a
//! dense `Vec` of fixed-size slots (addresses as 4- or 16-byte arrays, optional fields
//! behind one presence byte, no per-row allocation) and a hash index of `u32` slot
//! numbers keyed by zone and original tuple. At a million IPv4 entries a slot is ~112
//! bytes and the index ~10 bytes per entry; a `HashMap<Key, Row>` of ct-netlink types
//! took ~300–550. Entries with rarer fields (counters, timestamps, labels, a helper, a
//! security context, SCTP/DCCP state, directional zones) keep a boxed copy of the
//! whole entry beside their slot.

use std::{
    hash::{BuildHasher as _, Hash},
    net::IpAddr,
};

use ct_common::Cause;
use ct_netlink::{Entry, Family, Status, TcpInfo, Tuple};
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::Serialize;

use crate::clock::Stamp;

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

/// An address as stored: 4 or 16 bytes.
pub trait Addr: Copy + Eq + Hash + std::fmt::Debug {
    fn ip(self) -> IpAddr;
    fn of(ip: IpAddr) -> Option<Self>;
}

impl Addr for [u8; 4] {
    fn ip(self) -> IpAddr {
        IpAddr::from(self)
    }
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        }
    }
}

impl Addr for [u8; 16] {
    fn ip(self) -> IpAddr {
        IpAddr::from(self)
    }
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        }
    }
}

/// A tuple without its directional zone: which of the optional layer-4 fields are there
/// (`has`), and their values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CTuple<A> {
    src: A,
    dst: A,
    proto: u8,
    has: u8,
    sport: u16,
    dport: u16,
    icmp_type: u8,
    icmp_code: u8,
    icmp_id: u16,
}

const SPORT: u8 = 1;
const DPORT: u8 = 2;
const TYPE: u8 = 4;
const CODE: u8 = 8;
const ID: u8 = 16;

impl<A: Addr> CTuple<A> {
    /// `None` for a tuple of the other family, or one with a directional zone.
    pub fn of(t: &Tuple) -> Option<Self> {
        if t.zone.is_some() {
            return None;
        }
        let mut has = 0;
        let mut bit = |present: bool, b: u8| has |= if present { b } else { 0 };
        bit(t.src_port.is_some(), SPORT);
        bit(t.dst_port.is_some(), DPORT);
        bit(t.icmp_type.is_some(), TYPE);
        bit(t.icmp_code.is_some(), CODE);
        bit(t.icmp_id.is_some(), ID);
        Some(CTuple {
            src: A::of(t.src)?,
            dst: A::of(t.dst)?,
            proto: t.proto,
            has,
            sport: t.src_port.unwrap_or(0),
            dport: t.dst_port.unwrap_or(0),
            icmp_type: t.icmp_type.unwrap_or(0),
            icmp_code: t.icmp_code.unwrap_or(0),
            icmp_id: t.icmp_id.unwrap_or(0),
        })
    }

    pub fn tuple(&self) -> Tuple {
        let when = |b: u8| self.has & b != 0;
        Tuple {
            src: self.src.ip(),
            dst: self.dst.ip(),
            proto: self.proto,
            src_port: when(SPORT).then_some(self.sport),
            dst_port: when(DPORT).then_some(self.dport),
            icmp_type: when(TYPE).then_some(self.icmp_type),
            icmp_code: when(CODE).then_some(self.icmp_code),
            icmp_id: when(ID).then_some(self.icmp_id),
            zone: None,
        }
    }
}

/// A row's identity in its namespace: the kernel's hash key of a confirmed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotKey<A> {
    pub zone: u16,
    pub orig: CTuple<A>,
}

// Presence bits of a slot's optional fields, and its flags.
const TIMEOUT: u16 = 1;
const MARK: u16 = 2;
const ZONE: u16 = 4;
const USE: u16 = 8;
const ENTRY_ID: u16 = 16;
const BIRTH_KNOWN: u16 = 32;
const FROM_DUMP: u16 = 64;
/// Seen by the dump being merged (cleared after it).
const SEEN: u16 = 128;

/// What is rare per row: notes, and the whole entry when it has rarer fields.
#[derive(Clone, Debug, Default)]
struct Extra {
    notes: Vec<Note>,
    whole: Option<Entry>,
}

/// One row: the entry as last read, and what the agent knows beside it.
#[derive(Clone, Debug)]
pub struct Slot<A> {
    key: SlotKey<A>,
    reply: CTuple<A>,
    status: u32,
    timeout: u32,
    mark: u32,
    use_count: u32,
    id: u32,
    zone: u16,
    flags: u16,
    tcp: Option<TcpInfo>,
    /// When the fields were read.
    pub fields_at: Stamp,
    /// Unix time the agent first knew the entry.
    pub first_seen: f64,
    /// The kernel address of the instance whose `new` event made the row, 0 when a dump
    /// made it.
    pub ct: u64,
    extra: Option<Box<Extra>>,
}

impl<A: Addr> Slot<A> {
    /// The slot of `e` (its original tuple of this family, or `None`).
    pub fn new(e: Entry, fields_at: Stamp, fields: Fields) -> Option<Self> {
        let orig = CTuple::of(&Tuple {
            zone: None,
            ..e.orig.clone()
        })?;
        let reply = CTuple::<A>::of(&e.reply);
        let rare = e.sctp.is_some()
            || e.dccp.is_some()
            || e.counters_orig.is_some()
            || e.counters_reply.is_some()
            || e.timestamp.is_some()
            || e.labels.is_some()
            || e.helper.is_some()
            || e.secctx.is_some()
            || e.secmark.is_some()
            || e.orig.zone.is_some()
            || reply.is_none()
            || e.proto != e.orig.proto
            || e.family != family_of(&e.orig);
        let mut flags = 0;
        let mut opt = |v: Option<u32>, bit: u16| {
            flags |= if v.is_some() { bit } else { 0 };
            v.unwrap_or(0)
        };
        let timeout = opt(e.timeout, TIMEOUT);
        let mark = opt(e.mark, MARK);
        let zone = opt(e.zone.map(u32::from), ZONE) as u16;
        let use_count = opt(e.use_count, USE);
        let id = opt(e.id, ENTRY_ID);
        if fields == Fields::Dump {
            flags |= FROM_DUMP;
        }
        let mut slot = Slot {
            key: SlotKey {
                zone: e.zone.unwrap_or(0),
                orig,
            },
            reply: reply.unwrap_or(orig),
            status: e.status.0,
            timeout,
            mark,
            use_count,
            id,
            zone,
            flags,
            tcp: e.tcp.clone(),
            fields_at,
            first_seen: fields_at.wall,
            ct: 0,
            extra: None,
        };
        if rare {
            slot.extra_mut().whole = Some(e);
        }
        Some(slot)
    }

    pub fn key(&self) -> &SlotKey<A> {
        &self.key
    }

    /// Takes the fields of `fresh` (a newer read of the same entry), keeping what the
    /// agent knows beside them.
    pub fn refresh(&mut self, fresh: Slot<A>) {
        let notes = self.take_notes();
        let keep = self.flags & (BIRTH_KNOWN | SEEN);
        let (first_seen, ct) = (self.first_seen, self.ct);
        *self = fresh;
        self.flags = (self.flags & !(BIRTH_KNOWN | SEEN)) | keep;
        self.first_seen = first_seen;
        self.ct = ct;
        if !notes.is_empty() {
            self.extra_mut().notes = notes;
        }
    }

    fn take_notes(&mut self) -> Vec<Note> {
        self.extra
            .as_mut()
            .map(|x| std::mem::take(&mut x.notes))
            .unwrap_or_default()
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The entry as last read.
    pub fn entry(&self) -> Entry {
        if let Some(whole) = self.extra.as_ref().and_then(|x| x.whole.as_ref()) {
            return whole.clone();
        }
        let has = |b: u16| self.flags & b != 0;
        let orig = self.key.orig.tuple();
        let mut e = Entry::new(orig, self.reply.tuple());
        e.status = Status(self.status);
        e.timeout = has(TIMEOUT).then_some(self.timeout);
        e.mark = has(MARK).then_some(self.mark);
        e.zone = has(ZONE).then_some(self.zone);
        e.use_count = has(USE).then_some(self.use_count);
        e.id = has(ENTRY_ID).then_some(self.id);
        e.tcp = self.tcp.clone();
        e
    }

    pub fn reply(&self) -> Tuple {
        match self.extra.as_ref().and_then(|x| x.whole.as_ref()) {
            Some(w) => Tuple {
                zone: None,
                ..w.reply.clone()
            },
            None => self.reply.tuple(),
        }
    }

    /// The timeout as last read (seconds left at `fields_at`).
    pub fn timeout(&self) -> Option<u32> {
        match self.extra.as_ref().and_then(|x| x.whole.as_ref()) {
            Some(w) => w.timeout,
            None => (self.flags & TIMEOUT != 0).then_some(self.timeout),
        }
    }

    pub fn fields(&self) -> Fields {
        match self.flags & FROM_DUMP {
            0 => Fields::Event,
            _ => Fields::Dump,
        }
    }

    pub fn birth_known(&self) -> bool {
        self.flags & BIRTH_KNOWN != 0
    }

    pub fn set_birth(&mut self, first_seen: f64, known: bool) {
        self.first_seen = first_seen;
        self.flags = match known {
            true => self.flags | BIRTH_KNOWN,
            false => self.flags & !BIRTH_KNOWN,
        };
    }

    pub fn notes(&self) -> &[Note] {
        self.extra.as_ref().map_or(&[], |x| &x.notes)
    }

    /// Adds a note, dropping the oldest past `kept`.
    pub fn note(&mut self, note: Note, kept: usize) {
        let notes = &mut self.extra_mut().notes;
        if notes.len() == kept {
            notes.remove(0);
        }
        notes.push(note);
    }

    fn seen(&self) -> bool {
        self.flags & SEEN != 0
    }

    fn mark_seen(&mut self, seen: bool) {
        self.flags = match seen {
            true => self.flags | SEEN,
            false => self.flags & !SEEN,
        };
    }
}

fn family_of(t: &Tuple) -> Family {
    match t.src {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

fn hash<A: Addr>(key: &SlotKey<A>) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The rows of one namespace and family: dense slots and an index into them.
#[derive(Debug)]
pub struct Rows<A> {
    slots: Vec<Slot<A>>,
    index: HashTable<u32>,
}

impl<A> Default for Rows<A> {
    fn default() -> Self {
        Rows {
            slots: Vec::new(),
            index: HashTable::new(),
        }
    }
}

impl<A: Addr> Rows<A> {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Slot<A>> {
        self.slots.iter()
    }

    /// A copy of the slots (without the index).
    pub fn copy(&self) -> Vec<Slot<A>> {
        self.slots.clone()
    }

    fn hash(&self, key: &SlotKey<A>) -> u64 {
        hash(key)
    }

    fn find(&self, key: &SlotKey<A>) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(self.hash(key), |&i| slots[i as usize].key == *key)
            .map(|&i| i as usize)
    }

    pub fn get(&self, key: &SlotKey<A>) -> Option<&Slot<A>> {
        self.find(key).map(|i| &self.slots[i])
    }

    pub fn get_mut(&mut self, key: &SlotKey<A>) -> Option<&mut Slot<A>> {
        self.find(key).map(|i| &mut self.slots[i])
    }

    /// Adds a slot whose key is not there yet (else replaces that row).
    pub fn insert(&mut self, slot: Slot<A>) {
        if let Some(i) = self.find(&slot.key) {
            self.slots[i] = slot;
            return;
        }
        let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 rows");
        let h = self.hash(&slot.key);
        let slots = &self.slots;
        self.index
            .insert_unique(h, i, |&j| hash(&slots[j as usize].key));
        self.slots.push(slot);
    }

    pub fn remove(&mut self, key: &SlotKey<A>) -> Option<Slot<A>> {
        let i = self.find(key)?;
        Some(self.remove_at(i))
    }

    /// Removes slot `i`; the last slot takes its place (and its index entry follows).
    fn remove_at(&mut self, i: usize) -> Slot<A> {
        let h = self.hash(&self.slots[i].key);
        if let Ok(e) = self.index.find_entry(h, |&j| j as usize == i) {
            e.remove();
        }
        let last = self.slots.len() - 1;
        if i != last {
            let h = self.hash(&self.slots[last].key);
            if let Some(j) = self.index.find_mut(h, |&j| j as usize == last) {
                *j = i as u32;
            }
        }
        let slot = self.slots.swap_remove(i);
        self.shrink();
        slot
    }

    /// Gives memory back once the rows are a quarter of the room they have: a table
    /// that drained must not keep what it held at its peak.
    fn shrink(&mut self) {
        let len = self.slots.len();
        if self.slots.capacity() >= 4 * len.max(256) {
            self.slots.shrink_to(2 * len);
            let slots = &self.slots;
            self.index
                .shrink_to(2 * len, |&j| hash(&slots[j as usize].key));
        }
    }

    /// Marks every row unseen, before a dump is merged.
    pub fn unsee_all(&mut self) {
        self.slots.iter_mut().for_each(|s| s.mark_seen(false));
    }

    /// Merges one dumped slot: refreshes its row (true) or adds it (false); either way
    /// it is seen.
    pub fn merge(&mut self, mut fresh: Slot<A>) -> bool {
        fresh.mark_seen(true);
        match self.get_mut(&fresh.key) {
            Some(row) => {
                row.refresh(fresh);
                row.mark_seen(true);
                true
            }
            None => {
                self.insert(fresh);
                false
            }
        }
    }

    /// Removes the rows the dump did not see, and clears the marks.
    pub fn take_unseen(&mut self) -> Vec<Slot<A>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].seen() {
                self.slots[i].mark_seen(false);
                i += 1;
            } else {
                out.push(self.remove_at(i));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ct_netlink::{Counters, TcpState, proto};

    use super::*;

    type V4 = [u8; 4];

    fn tcp_entry(sport: u16) -> Entry {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let orig = Tuple::ports(proto::TCP, a, b, sport, 80);
        let mut e = Entry::new(orig.clone(), orig.inverted());
        e.status = Status(Status::CONFIRMED | Status::ASSURED);
        e.timeout = Some(431_999);
        e.mark = Some(7);
        e.use_count = Some(1);
        e.id = Some(99);
        e.tcp = Some(TcpInfo {
            state: TcpState::from_name("ESTABLISHED").unwrap(),
            wscale_orig: Some(7),
            wscale_reply: None,
            flags_orig: Some(0x23),
            flags_reply: Some(0x23),
        });
        e
    }

    fn slot(e: Entry) -> Slot<V4> {
        Slot::new(e, Stamp::at(1.0), Fields::Dump).expect("an IPv4 entry")
    }

    #[test]
    fn common_entries_round_trip_inline() {
        let e = tcp_entry(40000);
        let s = slot(e.clone());
        assert!(s.extra.is_none(), "no allocation per common row");
        assert_eq!(s.entry(), e);
        assert_eq!(s.timeout(), Some(431_999));
    }

    #[test]
    fn icmp_and_zones_round_trip() {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let mut orig = Tuple::ports(proto::ICMP, a, b, 0, 0);
        orig.src_port = None;
        orig.dst_port = None;
        orig.icmp_type = Some(8);
        orig.icmp_code = Some(0);
        orig.icmp_id = Some(77);
        let mut e = Entry::new(orig.clone(), orig.inverted());
        e.zone = Some(3);
        e.timeout = Some(29);
        let s = slot(e.clone());
        assert_eq!(s.entry(), e);
        assert_eq!(s.key().zone, 3);
    }

    #[test]
    fn rare_fields_keep_the_whole_entry() {
        let mut e = tcp_entry(40000);
        e.counters_orig = Some(Counters {
            packets: 3,
            bytes: 180,
        });
        assert_eq!(slot(e.clone()).entry(), e);
    }

    #[test]
    fn the_other_family_has_no_slot_here() {
        assert!(Slot::<[u8; 16]>::new(tcp_entry(1), Stamp::at(1.0), Fields::Dump).is_none());
    }

    #[test]
    fn a_slot_is_small() {
        assert!(size_of::<Slot<V4>>() <= 112, "{}", size_of::<Slot<V4>>());
    }

    #[test]
    fn removals_keep_the_index_right_and_give_memory_back() {
        let mut rows = Rows::<V4>::default();
        for p in 0..5000 {
            rows.insert(slot(tcp_entry(p)));
        }
        assert_eq!(rows.len(), 5000);
        for p in (0..5000).filter(|p| p % 7 != 0) {
            let key = *slot(tcp_entry(p)).key();
            assert_eq!(rows.remove(&key).map(|s| s.entry()), Some(tcp_entry(p)));
        }
        for p in 0..5000 {
            let key = *slot(tcp_entry(p)).key();
            assert_eq!(rows.get(&key).is_some(), p % 7 == 0, "port {p}");
        }
        assert!(rows.slots.capacity() < 4 * rows.len().max(256));
    }

    #[test]
    fn a_merge_refreshes_adds_and_returns_the_unseen() {
        let mut rows = Rows::<V4>::default();
        let mut known = slot(tcp_entry(1));
        known.set_birth(0.5, true);
        rows.insert(known);
        rows.insert(slot(tcp_entry(2)));
        rows.unsee_all();
        let mut fresh = tcp_entry(1);
        fresh.timeout = Some(5);
        assert!(rows.merge(slot(fresh)));
        assert!(!rows.merge(slot(tcp_entry(3))));
        let unseen = rows.take_unseen();
        assert_eq!(unseen.len(), 1);
        assert_eq!(unseen[0].entry(), tcp_entry(2));
        let row = rows.get(slot(tcp_entry(1)).key()).unwrap();
        assert_eq!(
            (row.timeout(), row.first_seen, row.birth_known()),
            (Some(5), 0.5, true)
        );
        assert_eq!(rows.len(), 2);
    }
}

//! The agent's state, and how it answers requests from the socket.
//!
//! One task owns it: events, dump merges and requests arrive one at a time through the
//! loop in `cmd/watch.rs`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use ct_common::EventKind;
use ct_netlink::{Conntrack, Entry};
use serde::Serialize;
use tokio::time::Instant;

use super::{
    counts::Counts,
    metrics::{NsSnapshot, Snapshot},
    outbox::{Outbox, Push},
    protocol::{Header, NsCensus, NsLifetimes, PROTOCOL, Request, Scope},
    rows::{Fields, Note},
    server::Incoming,
    table::{Merge, RowRef, Table},
};
use crate::{
    attribution::{AgentStats, Attributed, Kernel, unexplained},
    clock::{Stamp, wall_now},
    event::{CtEvent, Lost, LostAt, LostKind, Record},
    lifetimes::Lifetimes,
    pipeline::filter::Filter,
    render::{
        events::{Format, write_record},
        list,
        stats::NsStats,
        top,
    },
    sys::netns,
};

/// Room a `lost` record needs (its text and JSON lines are under 120 bytes).
const LOST_LINE: usize = 256;

/// Notable events (insert_failed, table_full, early_drop, lost) the live view shows.
const RECENT_KEPT: usize = 12;

/// What one namespace's counters are compared against.
#[derive(Debug, Default)]
struct Watched {
    /// Counters when the agent started watching; zero for namespaces created later
    /// (their counters start at zero and the probes saw all of their life).
    baseline: Kernel,
    since: f64,
    attributed: Attributed,
    counts: Counts,
}

/// When the agent dumps every namespace again (`status`'s `resync`).
#[derive(Debug, Default)]
pub struct Resync {
    /// `--resync` in seconds (0: only after losses).
    pub every: f64,
    /// What the last round without losses cost, and the entries it dumped.
    pub last_round: Duration,
    pub last_round_entries: usize,
    /// When the next round starts; `None` while one is under way or none is due.
    pub next: Option<Instant>,
}

impl Resync {
    fn answer(&self) -> ResyncAnswer {
        ResyncAnswer {
            every: self.every,
            last_round: self.last_round.as_secs_f64(),
            last_round_entries: self.last_round_entries,
            next_in: self
                .next
                .map(|t| t.saturating_duration_since(Instant::now()).as_secs_f64()),
        }
    }
}

#[derive(Serialize)]
struct ResyncAnswer {
    every: f64,
    last_round: f64,
    last_round_entries: usize,
    next_in: Option<f64>,
}

/// Counts of the agent's life.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Events applied, by kind name (JSON lists them alphabetically).
    pub events: BTreeMap<&'static str, u64>,
    /// Events the ring buffer lost (each loss triggers a reseed).
    pub lost: u64,
    /// The same, by kind (metrics only: not in `status`, whose fields the protocol fixes).
    #[serde(skip)]
    pub lost_by_kind: BTreeMap<&'static str, u64>,
    /// Full reseeds after losses.
    pub reseeds: u64,
    /// The most events read from the ring buffer and waiting for the agent at once.
    pub backlog_peak: usize,
    /// Dumps merged (seeds, resyncs and reseeds, per namespace).
    pub dumps: u64,
    /// What dumps corrected, summed.
    pub merged: Merge,
    /// Events subscribers were too slow to take.
    pub subscriber_drops: u64,
}

struct Subscriber {
    filter: Filter,
    format: Format,
    outbox: Outbox,
    /// Events not delivered since the last `lost` record sent to it.
    dropped: u64,
}

impl Subscriber {
    /// Queues the `lost` record it is owed, if any, once its queue has room for it.
    /// `Queued` when nothing is owed any more.
    fn pay_lost(&mut self) -> Push {
        if self.outbox.is_closed() {
            return Push::Closed;
        }
        if self.dropped == 0 {
            return Push::Queued;
        }
        if !self.outbox.has_room(LOST_LINE) {
            return Push::Full; // Checked before rendering: most events meet a full queue.
        }
        let lost = Record::Lost(Lost::new(
            wall_now(),
            LostKind::Other(LostAt::AgentSubscriber),
            self.dropped,
        ));
        let pushed = self.outbox.push(render(self.format, &lost).into());
        if pushed == Push::Queued {
            self.dropped = 0;
        }
        pushed
    }

    /// Queues a record it takes; one that does not fit (or would pass an unpaid `lost`
    /// record) is dropped (`Full`) and owed as `lost`.
    fn offer(&mut self, record: &Record, rendered: &mut Rendered) -> Push {
        let pushed = match self.pay_lost() {
            Push::Queued => self.outbox.push(rendered.get(self.format, record)),
            owed => owed,
        };
        if pushed == Push::Full {
            self.dropped += 1;
        }
        pushed
    }
}

/// One record rendered once per format, shared by every subscriber that takes it.
#[derive(Default)]
struct Rendered([Option<Bytes>; 3]);

impl Rendered {
    fn get(&mut self, format: Format, record: &Record) -> Bytes {
        let slot = match format {
            Format::Json => 0,
            Format::Text { timestamp: false } => 1,
            Format::Text { timestamp: true } => 2,
        };
        self.0[slot]
            .get_or_insert_with(|| render(format, record).into())
            .clone()
    }
}

pub struct Agent {
    pub tier: u8,
    pub tier_sees: &'static str,
    /// What the tier's hooks are: "fentry" or "kprobes" on tier 1, else the tier's label.
    pub hooks: &'static str,
    pub started: f64,
    pub table: Table,
    watched: HashMap<u32, Watched>,
    pub totals: Totals,
    pub resync: Resync,
    pub recent: VecDeque<Record>,
    subscribers: Vec<Subscriber>,
    /// How long the flows that ended while the agent watched had lived, per namespace.
    lifetimes: HashMap<u32, Lifetimes>,
    /// Those of namespaces since forgotten: the metrics' histogram must not go down.
    lifetimes_gone: Lifetimes,
    /// Bytes per row of the last listing, text and JSON: what the next will cost (set
    /// by the thread that renders it).
    row_bytes: Arc<[AtomicUsize; 2]>,
    /// A listing renders on a thread of its own (until it is handed to its client).
    listing: Arc<AtomicBool>,
}

impl Agent {
    /// `baselines`: the counters of the namespaces that exist now, read before the
    /// probes were attached.
    pub fn new(tier: u8, tier_sees: &'static str, baselines: Vec<(u32, Kernel)>) -> Self {
        let started = wall_now();
        let watched = baselines
            .into_iter()
            .map(|(inode, baseline)| {
                let w = Watched {
                    baseline,
                    since: started,
                    ..Watched::default()
                };
                (inode, w)
            })
            .collect();
        Agent {
            tier,
            tier_sees,
            hooks: "",
            started,
            table: Table::default(),
            watched,
            totals: Totals::default(),
            resync: Resync::default(),
            recent: VecDeque::new(),
            subscribers: Vec::new(),
            lifetimes: HashMap::new(),
            lifetimes_gone: Lifetimes::default(),
            row_bytes: Arc::default(),
            listing: Arc::default(),
        }
    }

    /// True once the agent knows the namespace (from its start, a dump or an event).
    pub fn knows(&self, netns: u32) -> bool {
        self.watched.contains_key(&netns)
    }

    fn watched(&mut self, netns: u32) -> &mut Watched {
        let since = wall_now();
        self.watched.entry(netns).or_insert_with(|| Watched {
            since,
            ..Watched::default()
        })
    }

    /// Applies one event to the table, the attribution and the subscribers. `now`: when
    /// its batch was read (one clock read per batch, not per event).
    pub fn apply(&mut self, ev: CtEvent, now: Stamp) {
        *self.totals.events.entry(ev.kind.name()).or_default() += 1;
        let watched = self.watched(ev.netns);
        watched.attributed.count(&ev);
        watched.counts.count(&ev);
        if let Some(dead) = self.table.apply(&ev, Stamp::of_wall(ev.ts, now))
            && dead.birth_known
        {
            // The event has the entry's last status and TCP state; the row, the rest.
            let mut last = dead.entry;
            last.status = ev.status;
            if let (Some(state), Some(tcp)) = (ev.tcp_state, last.tcp.as_mut()) {
                tcp.state = state;
            }
            let lived = ev.ts - dead.first_seen;
            self.lifetimes
                .entry(ev.netns)
                .or_default()
                .record(&last, lived);
        }
        let notable = matches!(
            ev.kind,
            EventKind::InsertFailed | EventKind::TableFull | EventKind::EarlyDrop
        );
        if self.subscribers.is_empty() && !notable {
            return; // Most events: nobody to tell, nothing to keep.
        }
        let record = Record::Conntrack(Box::new(ev));
        self.publish(&record);
        if notable {
            self.remember(record);
        }
    }

    /// Ring-buffer losses: counted, told to subscribers; the caller reseeds.
    pub fn lost(&mut self, records: Vec<Record>) {
        for r in records {
            if let Record::Lost(l) = &r {
                self.totals.lost += l.count;
                *self
                    .totals
                    .lost_by_kind
                    .entry(l.lost_kind.name())
                    .or_default() += l.count;
            }
            self.publish(&r);
            self.remember(r);
        }
    }

    fn remember(&mut self, r: Record) {
        if self.recent.len() == RECENT_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }

    /// A namespace's dump: replaces its rows (see `Table::merge_dump`).
    pub fn merge(&mut self, netns: u32, entries: Vec<(Entry, Stamp)>) {
        self.watched(netns);
        let m = self.table.merge_dump(netns, entries);
        self.totals.dumps += 1;
        self.totals.merged.added += m.added;
        self.totals.merged.removed += m.removed;
        self.totals.merged.refreshed += m.refreshed;
    }

    /// A namespace that vanished: its rows, counters and lifetimes go.
    pub fn forget(&mut self, netns: u32) {
        self.table.forget(netns);
        self.watched.remove(&netns);
        if let Some(l) = self.lifetimes.remove(&netns) {
            self.lifetimes_gone.merge(&l);
        }
    }

    /// What the metrics endpoint serves, copied: small maps per namespace, so the loop
    /// spends microseconds per namespace on it.
    pub fn metrics(&self) -> Snapshot {
        let mut lifetimes = self.lifetimes_gone.clone();
        for l in self.lifetimes.values() {
            lifetimes.merge(l);
        }
        let namespaces = self
            .watched
            .iter()
            .map(|(&netns, w)| NsSnapshot {
                netns,
                baseline: w.baseline,
                attributed: w.attributed.clone(),
                counts: w.counts.clone(),
            })
            .collect();
        Snapshot {
            tier: self.tier,
            namespaces,
            lifetimes,
            lost: self.totals.lost_by_kind.clone(),
            reseeds: self.totals.reseeds,
            dumps: self.totals.dumps,
            subscriber_drops: self.totals.subscriber_drops,
        }
    }

    /// Namespaces the agent knows.
    pub fn namespaces(&self) -> Vec<u32> {
        self.watched.keys().copied().collect()
    }

    /// Sends a record to every subscriber whose filter takes it, rendered once per
    /// format; a full queue counts a drop (reported to that subscriber as `lost` once it
    /// has room), a closed one goes.
    fn publish(&mut self, record: &Record) {
        let mut rendered = Rendered::default();
        let mut drops = 0;
        self.subscribers.retain_mut(|s| {
            if let Record::Conntrack(ev) = record
                && !s.filter.matches(ev)
            {
                return s.pay_lost() != Push::Closed;
            }
            match s.offer(record, &mut rendered) {
                Push::Queued => true,
                Push::Full => {
                    drops += 1;
                    true
                }
                Push::Closed => false,
            }
        });
        self.totals.subscriber_drops += drops;
    }

    /// Forgets subscribers that went away, and queues the `lost` records the others are
    /// owed once they have room, whatever they filter. The watch loop calls it every
    /// second, and `status` before counting.
    pub fn tend_subscribers(&mut self) {
        self.subscribers
            .retain_mut(|s| s.pay_lost() != Push::Closed);
    }

    /// The watch loop's second: subscribers tended, and memory the table no longer
    /// needs handed back.
    pub fn tend(&mut self) {
        self.tend_subscribers();
        self.table.release_memory();
    }

    /// Answers one request. Errors go into the answer's header.
    pub async fn answer(&mut self, inc: Incoming) {
        let Incoming { request, reply } = inc;
        if let Request::Events {
            filter,
            json,
            timestamp,
        } = request
        {
            if self.tier == 3 {
                let e = "the agent runs on tier 3 (no BPF): run `ctscope events --no-agent`";
                reply.answer(Header::line(Some(e.into())));
                return;
            }
            let format = if json {
                Format::Json
            } else {
                Format::Text { timestamp }
            };
            if reply.push(Header::line(None).into()) == Push::Queued {
                self.subscribers.push(Subscriber {
                    filter,
                    format,
                    outbox: reply,
                    dropped: 0,
                });
            }
            return;
        }
        let body = match request {
            Request::List {
                scope,
                filter,
                json,
            } => return self.list(scope, filter, json, reply),
            Request::Get {
                netns,
                zone,
                tuple,
                json,
            } => self.get(netns, zone.unwrap_or(0), &tuple, json),
            Request::Top { scope, by, n, json } => Ok(self.top(scope, by, n, json)),
            Request::Stats { scope, json } => self.stats(scope, json).await,
            Request::Status {} => {
                self.tend_subscribers();
                Ok(self.status())
            }
            Request::Lifetimes { netns } => Ok(self.lifetimes(&netns)),
            Request::Census { netns } => Ok(self.census(&netns)),
            Request::Events { .. } => unreachable!("handled above"),
        };
        let answer = match body {
            Ok(mut body) => {
                let mut all = Header::line(None);
                all.append(&mut body);
                all
            }
            Err(e) => Header::line(Some(e)),
        };
        reply.answer(answer);
    }

    /// Answers a listing from a copy of the rows, rendered on a thread of its own so
    /// the loop goes on meanwhile. Refused (the answer budget's error) when it would be
    /// longer than the room the budget has: before it is built when the last listing's
    /// row size says so, else as soon as it grows past it. Stalled clients must not also
    /// cost the agent's time.
    fn list(&mut self, scope: Scope, filter: ct_netlink::TupleFilter, json: bool, reply: Outbox) {
        let room = reply.room();
        let sizes = self.row_bytes.clone();
        let row_bytes = sizes[usize::from(json)].load(Ordering::Relaxed);
        if filter.is_empty() && room < usize::MAX {
            let rows = match scope {
                Scope::All => self.table.len(),
                Scope::Netns(n) => self.table.count(n),
            };
            if rows * row_bytes > room {
                return reply.refuse();
            }
        }
        let now = Stamp::now();
        let netns = match scope {
            Scope::All => None,
            Scope::Netns(n) => Some(n),
        };
        let answer = move |listing: Option<(Vec<u8>, Option<usize>)>| match listing {
            Some((mut body, per_row)) => {
                if let Some(per_row) = per_row {
                    sizes[usize::from(json)].store(per_row, Ordering::Relaxed);
                }
                let mut all = Header::line(None);
                all.append(&mut body);
                reply.answer(all);
            }
            None => reply.refuse(),
        };
        if self.listing.swap(true, Ordering::AcqRel) {
            // One listing renders on its own thread at a time: concurrent ones, each a
            // copy and a body not yet charged to the answer budget, would grow the agent
            // past it. The others render here, in turn, as before.
            let rows = self.table.scoped_rows(netns);
            return answer(render_list(rows, &filter, scope.tags(), json, now, room));
        }
        let snapshot = self.table.snapshot(netns);
        let listing = self.listing.clone();
        tokio::task::spawn_blocking(move || {
            let rows = snapshot.rows();
            answer(render_list(rows, &filter, scope.tags(), json, now, room));
            // Charged to the budget now: the next listing may render beside the loop.
            listing.store(false, Ordering::Release);
        });
    }

    fn top(&self, scope: Scope, by: top::TopBy, n: usize, json: bool) -> Vec<u8> {
        let mut counter = top::Counter::new(by);
        for row in self.table.rows().filter(|r| scope.covers(r.netns)) {
            counter.add(&row.entry(), u64::from(row.netns));
        }
        top::render(&counter.top(n), json)
    }

    fn get(
        &self,
        netns: u32,
        zone: u16,
        tuple: &ct_netlink::Tuple,
        json: bool,
    ) -> Result<Vec<u8>, String> {
        let now = Stamp::now();
        let row = self
            .table
            .get(netns, zone, tuple)
            .ok_or("no conntrack entry has this original tuple")?;
        let mut out = Vec::new();
        let _ = write_row(&mut out, &row, &row.entry_at(now), false, json, now.wall);
        Ok(out)
    }

    /// Per namespace: the kernel's counters now (read through ctnetlink), beside what
    /// the events explained since the agent started watching it.
    async fn stats(&self, scope: Scope, json: bool) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut found = false;
        for ns in netns::enterable()
            .into_iter()
            .filter(|n| scope.covers(n.inode))
        {
            let Some(w) = self.watched.get(&ns.inode) else {
                continue;
            };
            let Ok(mut ct) = Conntrack::open_in_netns(&ns.path) else {
                continue;
            };
            let (Ok(cpus), Ok(global)) = (ct.stats_cpu().await, ct.stats_global().await) else {
                continue;
            };
            found = true;
            let delta = Kernel::from_cpus(&cpus).since(w.baseline);
            let view = AgentStats {
                watched_since: w.since,
                table_entries: self.table.count(ns.inode),
                kernel: delta,
                unexplained: unexplained(delta, &w.attributed),
                attributed: w.attributed.clone(),
            };
            let stats = NsStats::new(cpus, global, scope.tags().then_some(&ns)).with_agent(view);
            if json {
                let _ = serde_json::to_writer(&mut out, &stats);
                out.push(b'\n');
            } else {
                out.extend_from_slice(stats.text().as_bytes());
            }
        }
        if !found {
            return Err("the agent watches no such network namespace".into());
        }
        Ok(out)
    }

    fn lifetimes(&self, netns: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &n in netns {
            let ns = NsLifetimes {
                netns: n,
                lifetimes: self.lifetimes.get(&n).cloned().unwrap_or_default(),
            };
            let _ = serde_json::to_writer(&mut out, &ns);
            out.push(b'\n');
        }
        out
    }

    /// Each namespace's rows counted as `diagnose` and `timeouts` count a dump, their
    /// seconds left counted down to now. Counted in the loop: under 0.1 s per million
    /// rows, less than copying them aside for a thread (as `list` does) would hold it.
    fn census(&self, netns: &[u32]) -> Vec<u8> {
        let now = Stamp::now();
        let mut out = Vec::new();
        for &n in netns {
            let ns = NsCensus {
                netns: n,
                census: self.knows(n).then(|| self.table.census(n, now)),
            };
            let _ = serde_json::to_writer(&mut out, &ns);
            out.push(b'\n');
        }
        out
    }

    fn status(&self) -> Vec<u8> {
        let counts = self.table.counts();
        let per_netns: BTreeMap<u32, usize> = self
            .watched
            .keys()
            .map(|&n| (n, counts.get(&n).copied().unwrap_or(0)))
            .collect();
        let status = Status {
            protocol: PROTOCOL,
            tier: self.tier,
            tier_sees: self.tier_sees,
            hooks: self.hooks,
            started: self.started,
            entries: self.table.len(),
            per_netns,
            totals: &self.totals,
            subscribers: self.subscribers.len(),
            resync: self.resync.answer(),
        };
        let mut out = serde_json::to_vec(&status).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// The `status` answer.
#[derive(Serialize)]
struct Status<'a> {
    /// The socket protocol's version (docs/PROTOCOL.md).
    protocol: u64,
    tier: u8,
    tier_sees: &'static str,
    hooks: &'static str,
    started: f64,
    entries: usize,
    per_netns: BTreeMap<u32, usize>,
    totals: &'a Totals,
    subscribers: usize,
    resync: ResyncAnswer,
}

/// An entry as the agent lists it: `list --json`'s fields, plus what only the agent knows.
#[derive(Serialize)]
struct AgentRow<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    netns: u32,
    first_seen: f64,
    birth_known: bool,
    fields_from: Fields,
    fields_at: Stamp,
    #[serde(skip_serializing_if = "<[Note]>::is_empty")]
    notes: &'a [Note],
}

/// The listing of a snapshot's rows that `filter` takes, and its bytes per row; `None`
/// once it grows past `room`.
fn render_list<'a>(
    rows: impl Iterator<Item = RowRef<'a>>,
    filter: &ct_netlink::TupleFilter,
    tags: bool,
    json: bool,
    now: Stamp,
    room: usize,
) -> Option<(Vec<u8>, Option<usize>)> {
    let mut out = Vec::new();
    let mut count = 0;
    for row in rows {
        let entry = row.entry_at(now);
        if !filter.matches(&entry) {
            continue;
        }
        let _ = write_row(&mut out, &row, &entry, tags, json, now.wall);
        count += 1;
        if out.len() > room {
            return None;
        }
    }
    let per_row = out.len().checked_div(count);
    Some((out, per_row))
}

fn write_row(
    out: &mut Vec<u8>,
    row: &RowRef,
    entry: &Entry,
    tag: bool,
    json: bool,
    now: f64,
) -> std::io::Result<()> {
    if json {
        let r = AgentRow {
            entry,
            netns: row.netns,
            first_seen: row.first_seen(),
            birth_known: row.birth_known(),
            fields_from: row.fields(),
            fields_at: row.fields_at(),
            notes: row.notes(),
        };
        serde_json::to_writer(&mut *out, &r)?;
        out.push(b'\n');
        return Ok(());
    }
    list::write_text(out, entry, tag.then_some(row.netns), now as u64)
}

fn render(format: Format, record: &Record) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    let _ = write_record(&mut v, format, record);
    v
}

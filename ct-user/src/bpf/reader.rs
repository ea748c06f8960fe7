//! Reads the ring buffer on a thread of its own and turns the per-CPU loss counters into
//! `lost` records, so a full buffer is always reported, never silent.
//!
//! The thread only drains and decodes: whatever the consumer is busy with (the agent
//! merging a dump of half a million entries, a slow stdout), the kernel's ring keeps room
//! and the events wait in memory instead. Past [`BACKLOG_EVENTS`] waiting, the thread stops
//! draining, the ring fills and the BPF side counts what it cannot write: the loss is
//! still counted and reported, and memory stays bounded.

use std::{
    io, ptr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use ct_common::{Event, EventKind, KernelLayout, RawCtEvent, stat};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    time::{MissedTickBehavior, interval},
};

use crate::{
    bpf::loader::Probes,
    clock::Clock,
    event::{CtEvent, Lost, LostAt, LostKind, Record, decode},
};

/// The BPF side wakes the reader only for a backlog; below that the reader polls.
const RING_POLL: Duration = Duration::from_millis(10);

/// Decoded events that may wait for the consumer (320 B each: 160 MiB at most). At
/// 100 000 events/s that is five seconds of a consumer that does nothing else, on top of
/// what the kernel's ring holds.
pub const BACKLOG_EVENTS: usize = 1 << 19;

/// Events one read takes at most beyond its first batch: the consumer's buffer stays
/// small (it keeps its capacity), and the rest waits for the next read.
pub const TAKE_MAX: usize = 16_384;

/// How long the thread waits before it looks again when the backlog is full.
const FULL_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("BPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("opening BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("starting the ring buffer's reader thread: {0}")]
    Io(#[from] io::Error),
}

/// The consumer's end: batches of decoded events from the thread, and the loss counters.
pub struct EventReader {
    batches: mpsc::UnboundedReceiver<Vec<CtEvent>>,
    /// Events sent by the thread and not yet taken here.
    backlog: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
    /// The most events waiting at once, as a read found them.
    peak: usize,
    stats: PerCpuArray<MapData, u64>,
    lost_seen: [u64; EventKind::COUNT],
}

impl EventReader {
    pub fn new(probes: &mut Probes, clock: Clock) -> Result<Self, ReaderError> {
        let ring = take(probes, "EVENTS")?;
        let ring = RingBuf::try_from(ring).map_err(|source| ReaderError::Map {
            name: "EVENTS",
            source,
        })?;
        let stats = take(probes, "STATS")?;
        let stats = PerCpuArray::try_from(stats).map_err(|source| ReaderError::Map {
            name: "STATS",
            source,
        })?;
        let (tx, batches) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let pump = Pump {
            ring,
            clock,
            layout: probes.layout,
            tx,
            backlog: backlog.clone(),
        };
        let thread = thread::Builder::new()
            .name("ctscope-ring".into())
            .spawn(move || pump.run(stopped))?;
        let mut reader = Self {
            batches,
            backlog,
            stop: Some(stop),
            thread: Some(thread),
            peak: 0,
            stats,
            lost_seen: [0; EventKind::COUNT],
        };
        // Losses before we started reading are not ours to report.
        reader.lost_seen = reader.lost_totals();
        Ok(reader)
    }

    /// Waits for events, then appends the decoded events waiting to `batch` (the first
    /// batch, then more up to [`TAKE_MAX`]). Cancel-safe. An error when the reader thread
    /// has ended (it says why).
    pub async fn read(&mut self, batch: &mut Vec<CtEvent>) -> io::Result<()> {
        let Some(first) = self.batches.recv().await else {
            return Err(self.ended());
        };
        self.peak = self.peak.max(self.backlog());
        self.took(first, batch);
        while batch.len() < TAKE_MAX
            && let Ok(more) = self.batches.try_recv()
        {
            self.took(more, batch);
        }
        Ok(())
    }

    /// At exit: stops the thread after its last drain and takes everything it read.
    pub async fn finish(&mut self, batch: &mut Vec<CtEvent>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        while let Some(more) = self.batches.recv().await {
            self.took(more, batch);
        }
        if let Some(Err(e)) = self.join() {
            log::warn!("reading the last events: {e}");
        }
    }

    /// Events decoded and not yet taken.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// The most events that waited at once (`watch --status`'s `backlog_peak`): how near
    /// the consumer came to [`BACKLOG_EVENTS`].
    pub fn backlog_peak(&self) -> usize {
        self.peak
    }

    fn took(&self, events: Vec<CtEvent>, batch: &mut Vec<CtEvent>) {
        self.backlog.fetch_sub(events.len(), Ordering::Relaxed);
        batch.extend(events);
    }

    fn ended(&mut self) -> io::Error {
        match self.join() {
            Some(Err(e)) => e,
            _ => io::Error::other("the ring buffer's reader thread ended"),
        }
    }

    fn join(&mut self) -> Option<io::Result<()>> {
        let handle = self.thread.take()?;
        Some(
            handle.join().unwrap_or_else(|_| {
                Err(io::Error::other("the ring buffer's reader thread panicked"))
            }),
        )
    }

    /// Losses since the last call, one record per kind that lost events.
    pub fn new_losses(&mut self) -> Vec<Record> {
        let totals = self.lost_totals();
        let mut out = Vec::new();
        for (k, (&now, seen)) in totals.iter().zip(self.lost_seen.iter_mut()).enumerate() {
            if now > *seen {
                let lost_kind = EventKind::from_u8(k as u8)
                    .map_or(LostKind::Other(LostAt::Unknown), LostKind::Ring);
                out.push(Record::Lost(Lost::new(
                    crate::clock::wall_now(),
                    lost_kind,
                    now - *seen,
                )));
                *seen = now;
            }
        }
        out
    }

    /// A counter of `ct_common::stat`, summed over CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn lost_totals(&self) -> [u64; EventKind::COUNT] {
        let mut totals = [0; EventKind::COUNT];
        for (k, total) in totals.iter_mut().enumerate() {
            *total = self.stat(stat::LOST_BASE + k as u32);
        }
        totals
    }
}

/// The thread's half: drains the ring into batches while the backlog has room.
struct Pump {
    ring: RingBuf<MapData>,
    clock: Clock,
    layout: KernelLayout,
    tx: mpsc::UnboundedSender<Vec<CtEvent>>,
    backlog: Arc<AtomicUsize>,
}

impl Pump {
    /// Until `stop` fires or the consumer goes away; the last drain is sent whatever the
    /// backlog, so nothing read is dropped at exit.
    fn run(self, stop: oneshot::Receiver<()>) -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(self.pump(stop))
    }

    async fn pump(self, mut stop: oneshot::Receiver<()>) -> io::Result<()> {
        let Pump {
            ring,
            clock,
            layout,
            tx,
            backlog,
        } = self;
        // SAFETY: the ring buffer's fd is owned by the RingBuf moved into the AsyncFd, so
        // it stays open for exactly as long as the registration.
        let mut ring = unsafe { AsyncFd::register(ring) }?;
        let mut poll = interval(RING_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            let stopping = if backlog.load(Ordering::Relaxed) >= BACKLOG_EVENTS {
                // Full: leave the events in the ring, where the BPF side counts a loss.
                tokio::select! {
                    _ = tokio::time::sleep(FULL_WAIT) => continue,
                    _ = &mut stop => true,
                }
            } else {
                tokio::select! {
                    // Readiness cleared before the drain: a record written after it
                    // wakes the next wait.
                    r = ring.readable_mut() => {
                        r?.clear_ready();
                        false
                    }
                    _ = poll.tick() => false,
                    _ = &mut stop => true,
                }
            };
            drain(ring.get_mut(), &clock, &layout, &mut batch);
            if !batch.is_empty() {
                backlog.fetch_add(batch.len(), Ordering::Relaxed);
                if tx.send(std::mem::take(&mut batch)).is_err() {
                    return Ok(());
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }
}

fn take(probes: &mut Probes, name: &'static str) -> Result<aya::maps::Map, ReaderError> {
    probes
        .ebpf
        .take_map(name)
        .ok_or(ReaderError::MissingMap(name))
}

fn drain(
    ring: &mut RingBuf<MapData>,
    clock: &Clock,
    layout: &KernelLayout,
    batch: &mut Vec<CtEvent>,
) {
    while let Some(item) = ring.next() {
        let Some(raw) = record(&item, layout) else {
            continue;
        };
        if let Some(ev) = decode(&raw, clock) {
            batch.push(ev);
        }
    }
}

/// One ring record as an `Event`: an `Event` as written, or a `RawCtEvent` parsed.
/// `None` for a record too short to be either. Public for the `raw_record` fuzz target.
pub fn record(item: &[u8], layout: &KernelLayout) -> Option<Event> {
    if item.len() >= size_of::<RawCtEvent>() {
        // SAFETY: the BPF side writes whole records (size checked); the ring buffer only
        // guarantees 8-byte alignment, so read unaligned.
        let raw: RawCtEvent = unsafe { ptr::read_unaligned(item.as_ptr().cast()) };
        return Some(raw.parse(layout));
    }
    if item.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: as above, for an `Event`.
    Some(unsafe { ptr::read_unaligned(item.as_ptr().cast()) })
}

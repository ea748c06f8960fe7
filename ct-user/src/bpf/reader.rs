//! Reads the ring buffer asynchronously and turns the per-CPU loss counters into `lost`
//! records, so a full buffer is always reported, never silent.

use std::{io, ptr};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use ct_common::{Event, EventKind, KernelLayout, RawCtEvent, stat};
use tokio::io::unix::AsyncFd;

use crate::{
    bpf::loader::Probes,
    clock::Clock,
    event::{CtEvent, Lost, LostAt, LostKind, Record, decode},
};

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("BPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("opening BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with tokio: {0}")]
    Io(#[from] io::Error),
}

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    lost_seen: [u64; EventKind::COUNT],
    clock: Clock,
    /// Offsets to parse raw entry copies with (the ones the BPF side was given).
    layout: KernelLayout,
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
        // SAFETY: the ring buffer's fd is owned by the RingBuf moved into the AsyncFd, so it
        // stays open for exactly as long as the registration.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| io::Error::other(format!("registering the ring buffer: {e}")))?;
        let mut reader = Self {
            ring,
            stats,
            lost_seen: [0; EventKind::COUNT],
            clock,
            layout: probes.layout,
        };
        // Losses before we started reading are not ours to report.
        reader.lost_seen = reader.lost_totals();
        Ok(reader)
    }

    /// Waits until the ring buffer has data, then appends every decoded event to `batch`.
    pub async fn read(&mut self, batch: &mut Vec<CtEvent>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        drain(guard.get_inner_mut(), &self.clock, &self.layout, batch);
        guard.clear_ready();
        Ok(())
    }

    /// Reads whatever is there without waiting (at shutdown).
    pub fn drain_now(&mut self, batch: &mut Vec<CtEvent>) {
        drain(self.ring.get_mut(), &self.clock, &self.layout, batch);
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

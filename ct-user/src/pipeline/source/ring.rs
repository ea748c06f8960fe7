//! Tiers 1 and 2: the BPF ring buffer → decoded events → tier 2's repeat filter and
//! settling; losses from the BPF side's per-kind counters.

use std::{io, time::Duration};

use tokio::time::Interval;

use super::{Output, Wake, ticker};
use crate::{
    bpf::loader::{self, Probes, Tier},
    bpf::reader::{EventReader, ReaderError},
    clock::Clock,
    event::{CtEvent, Record},
    pipeline::live::LiveEntries,
    pipeline::settle::{Discarded, Settler},
};

/// How long tier-2 candidates wait before they are settled against the counters.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// Tier 2's userspace half: repeated `new`s dropped, candidates settled.
struct Tier2 {
    live: LiveEntries,
    settler: Settler,
}

pub struct Ring {
    reader: EventReader,
    tier2: Option<Tier2>,
    settle: Interval,
    /// Holds the programs attached while the ring is read.
    probes: Probes,
}

impl Ring {
    /// Starts reading the attached probes; on tier 2, reads the namespaces' counters now
    /// (increments before this point are not ours to explain).
    pub async fn start(mut probes: Probes) -> Result<Self, ReaderError> {
        let clock = Clock::new(probes.layout.hz);
        let reader = EventReader::new(&mut probes, clock)?;
        let tier2 = match probes.tier {
            Tier::Tracepoints => {
                let settler = Settler::new().await;
                if let Err(e) = loader::mark_conntrack_netns(&mut probes, &settler.with_entries) {
                    log::warn!("seeding the namespaces with conntrack: {e}");
                }
                Some(Tier2 {
                    live: LiveEntries::default(),
                    settler,
                })
            }
            _ => None,
        };
        Ok(Ring {
            reader,
            tier2,
            settle: ticker(SETTLE_EVERY),
            probes,
        })
    }

    pub fn tier(&self) -> Tier {
        self.probes.tier
    }

    /// The most decoded events that waited for the consumer at once.
    pub fn backlog_peak(&self) -> usize {
        self.reader.backlog_peak()
    }

    /// What the hooks are ("fentry", "kprobes", ...): [`Probes::hooks_label`].
    pub fn hooks_label(&self) -> &'static str {
        self.probes.hooks_label()
    }

    /// Waits for ring data or a settling round. Cancel-safe.
    pub async fn wait(&mut self, raw: &mut Vec<CtEvent>) -> io::Result<Wake> {
        tokio::select! {
            r = self.reader.read(raw) => r.map(|()| Wake::Events),
            _ = self.settle.tick() => Ok(Wake::Settle),
        }
    }

    /// Tier 2: drops repeated `new`s and holds candidates for settling; passes the rest.
    pub fn route(&mut self, raw: &mut Vec<CtEvent>, out: &mut Output) {
        let Some(t) = self.tier2.as_mut() else {
            out.events.append(raw);
            return;
        };
        for ev in raw.drain(..) {
            if !t.live.admit(&ev) {
                continue;
            }
            if Settler::needs(&ev) {
                t.settler.push(ev);
            } else {
                out.events.push(ev);
            }
        }
    }

    /// Tier 2: settles the candidates that waited.
    pub async fn settle(&mut self, out: &mut Output) {
        if let Some(t) = self.tier2.as_mut().filter(|t| t.settler.has_pending()) {
            out.events.extend(t.settler.settle().await);
        }
    }

    /// At exit: whatever the ring holds, and every candidate settled.
    pub async fn finish(&mut self, raw: &mut Vec<CtEvent>, out: &mut Output) {
        self.reader.finish(raw).await;
        self.route(raw, out);
        if let Some(t) = self.tier2.as_mut() {
            out.events.extend(t.settler.settle().await);
            let d: Discarded = t.settler.discarded;
            log::info!(
                "tier 2: {} repeated `new` reports dropped; candidates the kernel did not \
                 count: {} drops (rules), {} unconfirmed frees (not clash losers)",
                t.live.repeats,
                d.drops_by_rules,
                d.unconfirmed_frees
            );
        }
    }

    /// Events the ring could not take since the last call, one record per kind.
    pub fn losses(&mut self) -> Vec<Record> {
        let lost = self.reader.new_losses();
        // Dead addresses may come back as new entries: forget them rather than hide those.
        if let Some(t) = self.tier2.as_mut().filter(|_| !lost.is_empty()) {
            t.live.reset();
        }
        lost
    }
}

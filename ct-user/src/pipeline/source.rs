//! The event pipeline every BPF consumer shares: ring buffer → decoded events → tier 2's
//! repeat filter and settling → `lost` records. `ctscope events` prints what comes out;
//! the agent (`ctscope watch`) applies it to its table.
//!
//! Use it in two steps so a `tokio::select!` around it loses nothing: [`EventSource::wait`]
//! is cancel-safe (it only waits and drains the ring into a private buffer), and
//! [`EventSource::handle`] does the work that must not be cancelled (settling).

use std::{io, time::Duration};

use tokio::time::{Interval, MissedTickBehavior, interval};

use crate::{
    bpf::loader::{self, Probes, Tier},
    bpf::reader::{EventReader, ReaderError},
    clock::Clock,
    event::{CtEvent, Record},
    pipeline::live::LiveEntries,
    pipeline::settle::{Discarded, Settler},
};

/// How often loss counters are checked when no event wakes the reader.
const LOSS_POLL: Duration = Duration::from_millis(200);

/// The BPF side wakes the reader only for a backlog; below that the reader polls.
const RING_POLL: Duration = Duration::from_millis(10);

/// How long tier-2 candidates wait before they are settled against the counters.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// What woke [`EventSource::wait`].
pub enum Wake {
    /// Events were drained from the ring.
    Ring,
    Losses,
    Settle,
}

/// What one [`EventSource::handle`] produced, in order.
#[derive(Default)]
pub struct Output {
    pub events: Vec<CtEvent>,
    /// `lost` records: the ring buffer overflowed; the consumer may have missed events.
    pub lost: Vec<Record>,
}

/// Tier 2's userspace half: repeated `new`s dropped, candidates settled.
struct Tier2 {
    live: LiveEntries,
    settler: Settler,
}

pub struct EventSource {
    reader: EventReader,
    tier2: Option<Tier2>,
    raw: Vec<CtEvent>,
    losses: Interval,
    settle: Interval,
    poll: Interval,
}

fn ticker(period: Duration) -> Interval {
    let mut t = interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

impl EventSource {
    /// Starts reading the attached probes; on tier 2, reads the namespaces' counters now
    /// (increments before this point are not ours to explain).
    pub async fn start(probes: &mut Probes) -> Result<Self, ReaderError> {
        let clock = Clock::new(probes.layout.hz);
        let reader = EventReader::new(probes, clock)?;
        let tier2 = match probes.tier {
            Tier::Tracepoints => {
                let settler = Settler::new().await;
                if let Err(e) = loader::mark_conntrack_netns(probes, &settler.with_entries) {
                    log::warn!("seeding the namespaces with conntrack: {e}");
                }
                Some(Tier2 {
                    live: LiveEntries::default(),
                    settler,
                })
            }
            _ => None,
        };
        Ok(EventSource {
            reader,
            tier2,
            raw: Vec::new(),
            losses: ticker(LOSS_POLL),
            settle: ticker(SETTLE_EVERY),
            poll: ticker(RING_POLL),
        })
    }

    /// Waits for events, a loss check or a settling round. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<Wake> {
        tokio::select! {
            r = self.reader.read(&mut self.raw) => r.map(|()| Wake::Ring),
            _ = self.poll.tick() => {
                self.reader.drain_now(&mut self.raw);
                Ok(Wake::Ring)
            }
            _ = self.losses.tick() => Ok(Wake::Losses),
            _ = self.settle.tick() => Ok(Wake::Settle),
        }
    }

    /// Does what woke [`Self::wait`], appending the results to `out`.
    pub async fn handle(&mut self, wake: Wake, out: &mut Output) {
        match wake {
            Wake::Ring => self.route(out),
            Wake::Losses => self.check_losses(out),
            Wake::Settle => {
                if let Some(t) = self.tier2.as_mut().filter(|t| t.settler.has_pending()) {
                    out.events.extend(t.settler.settle().await);
                }
            }
        }
    }

    /// At exit: drains what is left, settles it and reports losses, so nothing seen is
    /// dropped.
    pub async fn finish(&mut self, out: &mut Output) {
        self.reader.drain_now(&mut self.raw);
        self.route(out);
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
        self.check_losses(out);
    }

    /// Tier 2: drops repeated `new`s and holds candidates for settling; passes the rest.
    fn route(&mut self, out: &mut Output) {
        let Some(t) = self.tier2.as_mut() else {
            out.events.append(&mut self.raw);
            return;
        };
        for ev in self.raw.drain(..) {
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

    fn check_losses(&mut self, out: &mut Output) {
        let lost = self.reader.new_losses();
        if lost.is_empty() {
            return;
        }
        // Dead addresses may come back as new entries: forget them rather than hide those.
        if let Some(t) = self.tier2.as_mut() {
            t.live.reset();
        }
        out.lost.extend(lost);
    }
}

//! The agent's dumps, and the order of dumps and events: every namespace is dumped in the
//! background (at start, every `--resync`, after a loss, when a new namespace shows up),
//! [`MAX_DUMPS`] at a time, and events of a namespace being dumped wait until its dump is
//! merged, so a merge never undoes an event that came after the dump started.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use ct_netlink::{Conntrack, Entry};
use tokio::task::JoinSet;

use super::state::Agent;
use crate::{
    clock::Stamp,
    event::CtEvent,
    pipeline::source::Output,
    sys::{
        caps::{Cap, Caps},
        netns,
    },
};

/// Events applied between yields to the connection tasks: a burst of thousands must
/// not keep clients' writers (and so the readers' events) waiting. ~256 events take
/// well under a millisecond.
const YIELD_EVERY: usize = 256;

/// Namespaces dumped at once. A round over big namespaces takes them in turn: one dump's
/// entries in memory and one merge at a time, rather than every namespace's together
/// (at a million entries in four namespaces, dumped together, the merges held the agent's
/// loop for seconds).
const MAX_DUMPS: usize = 2;

/// A namespace's dump, as it came back: each entry with the time it was read, and the
/// time its task was busy (polled).
pub struct Dumped {
    netns: u32,
    entries: Result<Vec<(Entry, Stamp)>, String>,
    busy: Duration,
}

/// Dumps in flight. Events of a namespace being dumped wait until its dump is merged,
/// so the merge never undoes an event that came after the dump started.
#[derive(Default)]
pub struct Dumps {
    /// Dumps running; the agent's loop joins them.
    pub set: JoinSet<Dumped>,
    /// Which namespace each task dumps (to clean up after a task that failed).
    tasks: HashMap<tokio::task::Id, u32>,
    in_flight: HashSet<u32>,
    /// Waiting for a dump slot, in the order asked.
    queued: VecDeque<(u32, PathBuf)>,
    /// Asked for again while in flight (a loss during the dump): dump once more.
    again: HashSet<u32>,
    held: HashMap<u32, Vec<CtEvent>>,
    /// A full round (every namespace) is under way.
    in_round: bool,
    /// What the round under way has cost: its dump tasks' busy time and the merges. Not
    /// its wall time: the agent's one thread also applies events meanwhile, and a burst
    /// of them must not pass for a costly dump and stretch the next period (the soak saw
    /// a 40 000-entry table left undumped for 54 s).
    round_cost: RoundCost,
    /// Events were lost during the round: each loss dumps every namespace again, so its
    /// cost says how long the losses went on, not what a round costs.
    round_lossy: bool,
    /// The last round without losses.
    last_round: RoundCost,
}

/// What a round of dumps cost, and how many entries it dumped.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundCost {
    pub took: Duration,
    pub entries: usize,
}

impl RoundCost {
    /// What a round would cost with `entries` in the table, at most what this one did.
    /// Decoding and merging cost by the entry, so a round that dumped a burst must not
    /// space out the rounds after the burst has expired (the soak saw deleted namespaces
    /// and ctnetlink inserts go unnoticed for 20 s on a loaded machine). Never more: the
    /// namespaces cost too, and a table that grew is measured by the next round.
    pub fn scaled(&self, entries: usize) -> Duration {
        let ratio = entries.max(1) as f64 / self.entries.max(1) as f64;
        self.took.mul_f64(ratio.min(1.0))
    }
}

impl Dumps {
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.queued.is_empty()
    }

    /// True when the dumps that just ended closed a round (dumps of single namespaces do
    /// not: they must not postpone the next round, or namespaces born more often than
    /// --resync would stop resyncs altogether). A round without losses becomes
    /// [`Self::last_round`].
    pub fn round_ended(&mut self) -> bool {
        if !std::mem::take(&mut self.in_round) {
            return false;
        }
        let cost = std::mem::take(&mut self.round_cost);
        if !std::mem::take(&mut self.round_lossy) {
            self.last_round = cost;
        }
        true
    }

    /// The last round without losses.
    pub fn last_round(&self) -> RoundCost {
        self.last_round
    }

    /// Dumps every namespace there is now; forgets the ones that are gone.
    pub fn round(&mut self, agent: &mut Agent) {
        self.in_round = true;
        let listed = netns::enterable();
        let alive: HashSet<u32> = listed.iter().map(|n| n.inode).collect();
        for gone in agent
            .namespaces()
            .into_iter()
            .filter(|n| !alive.contains(n))
        {
            agent.forget(gone);
        }
        for ns in listed {
            self.start(ns.inode, ns.path);
        }
    }

    fn start(&mut self, netns: u32, path: PathBuf) {
        if self.in_flight.contains(&netns) {
            self.again.insert(netns);
        } else if self.in_flight.len() >= MAX_DUMPS {
            if !self.queued.iter().any(|(n, _)| *n == netns) {
                self.queued.push_back((netns, path));
            }
        } else {
            self.spawn(netns, path);
        }
    }

    fn spawn(&mut self, netns: u32, path: PathBuf) {
        self.in_flight.insert(netns);
        let task = self.set.spawn(async move {
            let (entries, busy) = Polled::new(async move { dump(&path).await }).await;
            Dumped {
                netns,
                entries,
                busy,
            }
        });
        self.tasks.insert(task.id(), netns);
    }

    /// Events and losses from the source: applied, held behind a dump, or (losses)
    /// answered with a reseed of every namespace.
    pub async fn take(&mut self, agent: &mut Agent, out: Output) {
        let now = Stamp::now();
        for (i, ev) in out.events.into_iter().enumerate() {
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            if self.in_flight.contains(&ev.netns) {
                self.held.entry(ev.netns).or_default().push(ev);
                continue;
            }
            // Without CAP_SYS_ADMIN every dump of another namespace would fail.
            if !agent.knows(ev.netns)
                && Caps::current().has(Cap::SysAdmin)
                && let Some(path) = netns::path_of(ev.netns)
            {
                // A namespace born after the round: its rows come from a dump too.
                self.start(ev.netns, path);
            }
            agent.apply(ev, now);
        }
        if !out.lost.is_empty() {
            agent.lost(out.lost);
            agent.totals.reseeds += 1;
            self.round_lossy = true;
            self.round(agent);
        }
    }

    /// A dump task ended; one that failed counts as a failed dump of its namespace, so
    /// the events held behind it are applied.
    pub fn joined(
        &mut self,
        agent: &mut Agent,
        done: Result<(tokio::task::Id, Dumped), tokio::task::JoinError>,
    ) {
        let dumped = match done {
            Ok((id, d)) => {
                self.tasks.remove(&id);
                d
            }
            Err(e) => {
                let Some(netns) = self.tasks.remove(&e.id()) else {
                    return;
                };
                Dumped {
                    netns,
                    entries: Err(format!("the dump task failed: {e}")),
                    busy: Duration::ZERO,
                }
            }
        };
        self.finish(agent, dumped);
    }

    fn finish(&mut self, agent: &mut Agent, d: Dumped) {
        self.in_flight.remove(&d.netns);
        let merging = std::time::Instant::now();
        let mut dumped = 0;
        match d.entries {
            Ok(entries) => {
                dumped = entries.len();
                agent.merge(d.netns, entries);
            }
            Err(e) => {
                // Vanished, or no ctnetlink there: no rows to show, counters kept.
                log::info!("netns {}: dump failed ({e})", d.netns);
                agent.table.forget(d.netns);
            }
        }
        if self.in_round {
            self.round_cost.took += d.busy + merging.elapsed();
            self.round_cost.entries += dumped;
        }
        let now = Stamp::now();
        for ev in self.held.remove(&d.netns).unwrap_or_default() {
            agent.apply(ev, now);
        }
        if self.again.remove(&d.netns)
            && let Some(path) = netns::path_of(d.netns)
        {
            self.queued.push_back((d.netns, path));
        }
        if let Some((netns, path)) = self.queued.pop_front() {
            self.start(netns, path);
        }
    }
}

async fn dump(path: &std::path::Path) -> Result<Vec<(Entry, Stamp)>, String> {
    let mut ct = Conntrack::open_in_netns(path).map_err(|e| e.to_string())?;
    ct.dump_stamped(Stamp::now).await.map_err(|e| e.to_string())
}

/// A future and the time spent polling it: the work it did, not the time it waited.
struct Polled<F> {
    inner: Pin<Box<F>>,
    busy: Duration,
}

impl<F: Future> Polled<F> {
    fn new(inner: F) -> Self {
        Polled {
            inner: Box::pin(inner),
            busy: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for Polled<F> {
    type Output = (F::Output, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let began = std::time::Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        self.busy += began.elapsed();
        polled.map(|out| (out, self.busy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_costs_by_the_entry() {
        let burst = RoundCost {
            took: Duration::from_millis(800),
            entries: 20_000,
        };
        assert_eq!(burst.scaled(200), Duration::from_millis(8));
        assert_eq!(burst.scaled(40_000), Duration::from_millis(800));
        let empty = RoundCost {
            took: Duration::from_millis(3),
            entries: 0,
        };
        assert_eq!(empty.scaled(0), Duration::from_millis(3));
    }

    /// Dumps that cannot open their namespace fail at once: enough to see the order.
    #[tokio::test]
    async fn namespaces_are_dumped_in_turn() {
        let mut agent = Agent::new(2, "", Vec::new());
        let mut dumps = Dumps::default();
        for netns in 1..=5 {
            dumps.start(netns, PathBuf::from(format!("/nonexistent/netns-{netns}")));
        }
        dumps.start(1, PathBuf::from("/nonexistent/netns-1"));
        assert_eq!(dumps.in_flight.len(), MAX_DUMPS);
        assert_eq!(
            dumps.queued.len(),
            5 - MAX_DUMPS,
            "each namespace queued once"
        );
        let mut joined = 0;
        while let Some(done) = dumps.set.join_next_with_id().await {
            dumps.joined(&mut agent, done);
            joined += 1;
            assert!(dumps.in_flight.len() <= MAX_DUMPS);
        }
        assert_eq!(joined, 5, "every namespace dumped once");
        assert!(dumps.idle());
    }

    #[tokio::test]
    async fn waiting_is_not_work() {
        let (out, busy) = Polled::new(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            7
        })
        .await;
        assert_eq!(out, 7);
        assert!(
            busy < Duration::from_millis(50),
            "busy {busy:?} while asleep"
        );
    }
}

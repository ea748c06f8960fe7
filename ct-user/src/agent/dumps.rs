//! The agent's dumps, and the order of dumps and events: every namespace is dumped in the
//! background (at start, every `--resync`, after a loss, when a new namespace shows up),
//! and events of a namespace being dumped wait until its dump is merged, so a merge never
//! undoes an event that came after the dump started.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
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

/// A namespace's dump, as it came back: each entry with the time it was read.
pub struct Dumped {
    netns: u32,
    entries: Result<Vec<(Entry, Stamp)>, String>,
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
    /// Asked for again while in flight (a loss during the dump): dump once more.
    again: HashSet<u32>,
    held: HashMap<u32, Vec<CtEvent>>,
    round_started: Option<std::time::Instant>,
    last_round: Duration,
}

impl Dumps {
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// How long the round that just ended took.
    pub fn round_took(&mut self) -> Duration {
        if let Some(t) = self.round_started.take() {
            self.last_round = t.elapsed();
        }
        self.last_round
    }

    /// Dumps every namespace there is now; forgets the ones that are gone.
    pub fn round(&mut self, agent: &mut Agent) {
        self.round_started
            .get_or_insert_with(std::time::Instant::now);
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
        if !self.in_flight.insert(netns) {
            self.again.insert(netns);
            return;
        }
        let task = self.set.spawn(async move {
            let entries = dump(&path).await;
            Dumped { netns, entries }
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
                }
            }
        };
        self.finish(agent, dumped);
    }

    fn finish(&mut self, agent: &mut Agent, d: Dumped) {
        self.in_flight.remove(&d.netns);
        match d.entries {
            Ok(entries) => agent.merge(d.netns, entries),
            Err(e) => {
                // Vanished, or no ctnetlink there: no rows to show, counters kept.
                log::info!("netns {}: dump failed ({e})", d.netns);
                agent.table.forget(d.netns);
            }
        }
        let now = Stamp::now();
        for ev in self.held.remove(&d.netns).unwrap_or_default() {
            agent.apply(ev, now);
        }
        if self.again.remove(&d.netns)
            && let Some(path) = netns::path_of(d.netns)
        {
            self.start(d.netns, path);
        }
    }
}

async fn dump(path: &std::path::Path) -> Result<Vec<(Entry, Stamp)>, String> {
    let mut ct = Conntrack::open_in_netns(path).map_err(|e| e.to_string())?;
    ct.dump_stamped(Stamp::now).await.map_err(|e| e.to_string())
}

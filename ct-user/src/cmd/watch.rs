//! `ctscope watch`: the agent. Attaches the probes, seeds its table from dumps of every
//! namespace, applies the event stream, refreshes from dumps, reseeds after losses, and
//! answers the CLI on its socket.

use std::{
    collections::{HashMap, HashSet},
    io::IsTerminal as _,
    path::PathBuf,
    time::Duration,
};

use ct_netlink::{Conntrack, Entry};
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinSet,
    time::{Instant, sleep_until},
};

use crate::{
    agent::{
        attribution::Kernel,
        client,
        clock::Stamp,
        outbox::Budget,
        protocol::{Request, socket_path},
        server::Server,
        state::Agent,
        tui::Tui,
        view::View,
    },
    caps::{self, Cap, Caps},
    cli::WatchArgs,
    event::CtEvent,
    loader::{self, LoadError, Tier},
    netns,
    source::{EventSource, Output},
    stdout,
};

/// How often the summary line is printed when stdout is not a terminal.
const VIEW_EVERY: Duration = Duration::from_secs(1);

/// How often the terminal view redraws (and looks for a quit key).
const TUI_EVERY: Duration = Duration::from_millis(250);

/// A full round of dumps may take at most this share of the agent's time.
const DUMP_SHARE: u32 = 20;

/// How often subscribers that went away are forgotten and owed `lost` records sent.
const TEND_EVERY: Duration = Duration::from_secs(1);

/// Events applied between yields to the connection tasks: a burst of thousands must
/// not keep clients' writers (and so the readers' events) waiting. ~256 events take
/// well under a millisecond.
const YIELD_EVERY: usize = 256;

/// Resync period on tier 3 when `--resync 0` asked for none: dumps are all it has.
const TIER3_RESYNC: f64 = 5.0;

pub async fn run(args: &WatchArgs) -> anyhow::Result<()> {
    let path = socket_path(args.socket.as_deref());
    if args.status {
        return status(&path).await;
    }
    let bpf = check_caps(args)?;
    let budget = Budget::new(usize::from(args.answer_budget_mib) << 20);
    let mut server = Server::bind(&path, budget)?;
    // Before the probes: increments up to here are not the agent's to explain.
    let baselines = baselines().await;
    let mut probes = if bpf { attach(args)? } else { None };
    let (tier, sees) = match &probes {
        Some(p) => (p.tier, p.tier.sees()),
        None => (
            Tier::Ctnetlink,
            "the table from dumps every --resync seconds only",
        ),
    };
    let mut source = match probes.as_mut() {
        Some(p) => Some(EventSource::start(p).await?),
        None => None,
    };
    let mut agent = Agent::new(tier.number(), sees, baselines);
    let mut resync = args.resync;
    if tier == Tier::Ctnetlink && resync == 0.0 {
        resync = TIER3_RESYNC;
    }
    let mut dumps = Dumps::default();
    dumps.round(&mut agent);
    let mut view = (!args.headless).then(|| Live::start(std::io::stdout().is_terminal()));
    let mut redraw = tokio::time::interval(view.as_ref().map_or(VIEW_EVERY, Live::period));
    let mut tend = tokio::time::interval(TEND_EVERY);
    tend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    let mut next_round = None;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            w = wait(&mut source) => {
                let source = source.as_mut().expect("wait pends without a source");
                let began = Instant::now();
                let mut out = Output::default();
                source.handle(w?, &mut out).await;
                dumps.take(&mut agent, out).await;
                dumps.busy_with_events(began.elapsed());
            }
            Some(done) = dumps.set.join_next_with_id() => {
                dumps.joined(&mut agent, done);
                // Only the end of a round schedules the next: a lone dump (a namespace
                // first seen in an event, a dump asked for again) must not postpone it, or
                // namespaces born more often than --resync would stop resyncs altogether.
                if dumps.idle() && let Some(took) = dumps.round_took() {
                    next_round = (resync > 0.0).then(|| Instant::now() + period(resync, took));
                    log::debug!(
                        "dump round took {took:?} besides events; next in {:?}",
                        next_round.map(|t| t - Instant::now())
                    );
                    if !ready {
                        ready = true;
                        announce(args, &path, tier, &agent)?;
                    }
                }
            }
            Some(inc) = server.next() => agent.answer(inc).await,
            _ = tend.tick() => agent.tend_subscribers(),
            () = until(next_round) => {
                next_round = None;
                dumps.round(&mut agent);
            }
            _ = redraw.tick(), if view.is_some() => {
                if let Some(v) = view.as_mut() && !v.show(&agent)? {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    if let Some(s) = source.as_mut() {
        let mut out = Output::default();
        s.finish(&mut out).await;
        dumps.take(&mut agent, out).await;
    }
    Ok(())
}

/// The live view: the terminal UI, or one summary line per tick.
struct Live {
    view: View,
    tui: Option<Tui>,
}

impl Live {
    fn start(terminal: bool) -> Self {
        Live {
            view: View::new(),
            tui: terminal.then(Tui::start),
        }
    }

    fn period(&self) -> Duration {
        if self.tui.is_some() {
            TUI_EVERY
        } else {
            VIEW_EVERY
        }
    }

    /// Shows one frame; false when the user asked to quit, [`stdout::Closed`] when
    /// nobody reads the summary lines any more.
    fn show(&mut self, agent: &Agent) -> anyhow::Result<bool> {
        let snapshot = self.view.snapshot(agent);
        match self.tui.as_mut() {
            Some(tui) => {
                if let Err(e) = tui.draw(&snapshot) {
                    log::warn!("drawing the view: {e}");
                }
                Ok(!tui.quit_requested())
            }
            None => stdout::line(snapshot.summary()).map(|()| true),
        }
    }
}

/// `--status`: the running agent's answer to `status`.
async fn status(path: &std::path::Path) -> anyhow::Result<()> {
    match client::ask(path, &Request::Status {}).await? {
        Some(mut body) => client::copy_lines(&mut body).await.map(drop),
        None => anyhow::bail!(
            "no agent listens on {}: start one with `ctscope watch`",
            path.display()
        ),
    }
}

/// The agent needs CAP_NET_ADMIN (its table comes from dumps), and CAP_BPF and
/// CAP_PERFMON for tiers 1 and 2; without CAP_SYS_ADMIN it sees only its own namespace.
/// Whether the BPF tiers may be tried.
fn check_caps(args: &WatchArgs) -> anyhow::Result<bool> {
    caps::require(
        &[Cap::NetAdmin],
        "the agent (its table comes from ctnetlink dumps)",
    )?;
    let bpf = caps::bpf_allowed(args.tier)?;
    if args.tier == Some(Tier::Ctnetlink) {
        log::info!("tier 3 (forced): the table from dumps only, no causes or reasons");
    }
    netns::enterable_warned(|others| {
        format!(
            "the agent cannot enter other network namespaces: it dumps only its own ({others} \
             others: entries from events only, destroy reasons unverified)"
        )
    });
    Ok(bpf)
}

/// The probes of the tier asked for, or the best.
fn attach(args: &WatchArgs) -> anyhow::Result<Option<loader::Probes>> {
    match loader::load(loader::LoadOptions::new(args.ring_size, args.tier)) {
        Ok(p) => {
            super::events::announce(&p);
            Ok(Some(p))
        }
        Err(e @ (LoadError::Tier(..) | LoadError::Btf(_))) if args.tier.is_none() => {
            log::info!("no BPF tier: {e}");
            eprintln!(
                "ctscope: warning: no BPF tier on this kernel: the agent runs on tier 3, the \
                 table from dumps only, no causes or reasons (`ctscope probe` says why)"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Every namespace's counters now.
async fn baselines() -> Vec<(u32, Kernel)> {
    let mut out = Vec::new();
    for ns in netns::enterable() {
        let Ok(mut ct) = Conntrack::open_in_netns(&ns.path) else {
            continue;
        };
        if let Ok(cpus) = ct.stats_cpu().await {
            out.push((ns.inode, Kernel::from_cpus(&cpus)));
        }
    }
    out
}

/// The one line that says the agent is ready: its tier, socket and table.
fn announce(
    args: &WatchArgs,
    path: &std::path::Path,
    tier: Tier,
    agent: &Agent,
) -> anyhow::Result<()> {
    // The agent's tier 3 keeps its table from dumps, not from ctnetlink events.
    let how = match tier {
        Tier::Ctnetlink => "dumps only",
        t => t.label(),
    };
    eprintln!(
        "ctscope: watching (tier {}: {how}; agent on {}, {} entries in {} namespaces), \
         Ctrl-C to stop",
        tier.number(),
        path.display(),
        agent.table.len(),
        agent.namespaces().len()
    );
    super::create_ready_file(args.ready_file.as_deref())
}

/// The time between dump rounds: `--resync`, stretched so dumps of a huge table take at
/// most 1/DUMP_SHARE of the time.
fn period(resync: f64, last_round: Duration) -> Duration {
    Duration::from_secs_f64(resync).max(last_round * DUMP_SHARE)
}

async fn wait(source: &mut Option<EventSource>) -> std::io::Result<crate::source::Wake> {
    match source {
        Some(s) => s.wait().await,
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A namespace's dump, as it came back: each entry with the time it was read.
struct Dumped {
    netns: u32,
    entries: Result<Vec<(Entry, Stamp)>, String>,
}

/// Dumps in flight. Events of a namespace being dumped wait until its dump is merged,
/// so the merge never undoes an event that came after the dump started.
#[derive(Default)]
struct Dumps {
    set: JoinSet<Dumped>,
    /// Which namespace each task dumps (to clean up after a task that failed).
    tasks: HashMap<tokio::task::Id, u32>,
    in_flight: HashSet<u32>,
    /// Asked for again while in flight (a loss during the dump): dump once more.
    again: HashSet<u32>,
    held: HashMap<u32, Vec<CtEvent>>,
    round_started: Option<std::time::Instant>,
    /// Time the round's wall clock spent on events instead (one thread does both): a
    /// burst of events during a round must not pass for a costly dump and stretch the
    /// next period (the soak's 20 000-flow burst left a 40 000-entry table undumped for
    /// 54 s).
    round_events: Duration,
    /// Whether events were lost during the round: each loss dumps every namespace again,
    /// so its length says how long the losses went on, not what a round costs.
    round_lossy: bool,
    /// The duration of the last round without losses.
    last_round: Duration,
}

impl Dumps {
    fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// How long the round that just ended took, less the time spent on events meanwhile
    /// (the last lossless round's if events were lost during it); `None` when no round was
    /// under way (the dumps were of single namespaces).
    fn round_took(&mut self) -> Option<Duration> {
        let started = self.round_started.take()?;
        if !std::mem::take(&mut self.round_lossy) {
            self.last_round = started.elapsed().saturating_sub(self.round_events);
        }
        self.round_events = Duration::ZERO;
        Some(self.last_round)
    }

    /// Counts time spent handling events against the round under way, if any.
    fn busy_with_events(&mut self, took: Duration) {
        if self.round_started.is_some() {
            self.round_events += took;
        }
    }

    /// Dumps every namespace there is now; forgets the ones that are gone.
    fn round(&mut self, agent: &mut Agent) {
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
    async fn take(&mut self, agent: &mut Agent, out: Output) {
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
            self.round_lossy = true;
        }
    }

    /// A dump task ended; one that failed counts as a failed dump of its namespace, so
    /// the events held behind it are applied.
    fn joined(
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

//! `ctscope watch`: the agent. Attaches the probes, seeds its table from dumps of every
//! namespace, applies the event stream, refreshes from dumps, reseeds after losses, and
//! answers the CLI on its socket.

use std::{io::IsTerminal as _, time::Duration};

use ct_netlink::Conntrack;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{
    agent::{
        client,
        dumps::Dumps,
        http::{self, Asks},
        outbox::Budget,
        protocol::{Request, socket_path},
        server::Server,
        state::Agent,
        tui::Tui,
        view::View,
    },
    attribution::Kernel,
    bpf::loader::{self, LoadError, Tier},
    cli::WatchArgs,
    pipeline::source::{EventSource, Output},
    sys::{
        caps::{self, Cap},
        netns, stdout,
    },
};

/// How often the summary line is printed when stdout is not a terminal.
const VIEW_EVERY: Duration = Duration::from_secs(1);

/// How often the terminal view redraws (and looks for a quit key).
const TUI_EVERY: Duration = Duration::from_millis(250);

/// A full round of dumps may take at most this share of the agent's time.
const DUMP_SHARE: u32 = 20;

/// How often subscribers that went away are forgotten and owed `lost` records sent.
const TEND_EVERY: Duration = Duration::from_secs(1);

/// Resync period on tier 3 when `--resync 0` asked for none: dumps are all it has of
/// the namespaces other than its own.
const TIER3_RESYNC: f64 = 5.0;

/// What the agent's tier 3 sees.
const TIER3_SEES: &str = "new and destroy (no reasons) of its own namespace from ctnetlink \
     events; the other namespaces from dumps every --resync seconds only";

pub async fn run(args: &WatchArgs) -> anyhow::Result<()> {
    let path = socket_path(args.socket.as_deref());
    if args.status {
        return status(&path).await;
    }
    let bpf = check_caps(args)?;
    crate::sys::memory::map_large_blocks();
    let budget = Budget::new(usize::from(args.answer_budget_mib) << 20);
    let mut server = Server::bind(&path, budget)?;
    let mut metrics = match args.metrics {
        Some(addr) => http::serve(addr)?,
        None => Asks::none(),
    };
    // Before the probes: increments up to here are not the agent's to explain.
    let baselines = baselines().await;
    let probes = if bpf { attach(args)? } else { None };
    let mut source = match probes {
        Some(p) => EventSource::start(p).await?,
        None => EventSource::ctnetlink(None)?,
    };
    let tier = source.tier();
    let sees = match tier {
        Tier::Ctnetlink => TIER3_SEES,
        t => t.sees(),
    };
    let mut agent = Agent::new(tier.number(), sees, baselines);
    agent.hooks = source.hooks_label();
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
    agent.resync.every = resync;
    // When the last round of dumps ended: the next is due a period later.
    let mut round_ended = None;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        // Rescheduled on every turn: the period follows the table's size now.
        agent.resync.next = next_round(round_ended, &agent, &dumps);
        tokio::select! {
            w = source.wait() => {
                let mut out = Output::default();
                source.handle(w?, &mut out).await;
                agent.totals.backlog_peak = source.backlog_peak();
                dumps.take(&mut agent, out).await;
            }
            Some(done) = dumps.set.join_next_with_id() => {
                dumps.joined(&mut agent, done);
                if dumps.idle() && dumps.round_ended() {
                    round_ended = Some(Instant::now());
                    let last = dumps.last_round();
                    agent.resync.last_round = last.took;
                    agent.resync.last_round_entries = last.entries;
                    log::debug!("dump round: {last:?}");
                    if !ready {
                        ready = true;
                        announce(args, &path, tier, &agent)?;
                    }
                }
            }
            Some(inc) = server.next() => agent.answer(inc).await,
            Some(ask) = metrics.next() => ask.answer(agent.metrics()),
            _ = tend.tick() => agent.tend(),
            () = until(agent.resync.next) => {
                round_ended = None;
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
    let mut out = Output::default();
    source.finish(&mut out).await;
    dumps.take(&mut agent, out).await;
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
    let bpf = loader::bpf_allowed(args.tier)?;
    if args.tier == Some(Tier::Ctnetlink) {
        log::info!(
            "tier 3 (forced): ctnetlink events of the agent's own namespace, the others from \
             dumps only; no causes or reasons"
        );
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
                "ctscope: warning: no BPF tier on this kernel: the agent runs on tier 3, \
                 ctnetlink events of its own namespace and dumps, no causes or reasons \
                 (`ctscope probe` says why)"
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
    // ctnetlink events are per namespace: the agent's tier 3 has its own namespace's.
    let how = match tier {
        Tier::Ctnetlink => "ctnetlink events of its own namespace, dumps for the others",
        _ => agent.hooks,
    };
    let metrics = args
        .metrics
        .map(|a| format!(", metrics on http://{a}/metrics"))
        .unwrap_or_default();
    eprintln!(
        "ctscope: watching (tier {}: {how}; agent on {}{metrics}, {} entries in {} \
         namespaces), Ctrl-C to stop",
        tier.number(),
        path.display(),
        agent.table.len(),
        agent.namespaces().len()
    );
    super::create_ready_file(args.ready_file.as_deref())
}

/// When the next round of dumps is due: `--resync` after the last one ended, stretched
/// so dumps of a huge table take at most 1/DUMP_SHARE of the time — by what a round of
/// the table as it is now would cost, not the last round (which may have dumped a burst
/// since expired).
fn next_round(ended: Option<Instant>, agent: &Agent, dumps: &Dumps) -> Option<Instant> {
    let every = agent.resync.every;
    let ended = ended.filter(|_| every > 0.0)?;
    let cost = dumps.last_round().scaled(agent.table.len());
    Some(ended + Duration::from_secs_f64(every).max(cost * DUMP_SHARE))
}

async fn until(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

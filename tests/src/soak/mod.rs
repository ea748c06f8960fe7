//! The churn soak (`cargo xtask soak`): two agents watch while [`load`] churns the
//! tables, and every few seconds one episode runs — an agent killed and restarted, a
//! table-full episode, a burst that overflows a small ring buffer. At each checkpoint the
//! load pauses and every agent's table must equal the kernel's in every namespace of the
//! soak (tuples and timeouts, [`crate::mirror::compare`]), with no deleted namespace left
//! behind. The `kept` agent runs from start to end with a small ring (its memory and
//! descriptors must stay flat, every loss counted); the `restarted` one, on a default
//! ring, is killed (SIGKILL and SIGTERM in turn) and started again on the same socket.

pub mod load;
pub mod report;

use std::{
    collections::HashSet,
    net::SocketAddrV4,
    os::unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

use crate::{
    agent::{self, Agent, SocketVia},
    kernel::{self, CtStats, SysctlGuard},
    mirror,
    netns::{self, Netns},
    traffic, wait,
};
use load::{Load, Steady};
use report::{AgentPoint, Checkpoint, Episode, Report};

/// The kept agent's ring buffer: bursts overflow it, the steady load does not.
pub const SMALL_RING: u64 = 256 * 1024;
/// New flows in one burst, from one socket as fast as it sends.
const BURST: u16 = 20_000;
/// nf_conntrack_max during a table-full episode (per namespace since 5.x), and the flows
/// sent into one client meanwhile.
const TABLE_FULL_MAX: u64 = 1500;
const TABLE_FULL_FLOWS: u16 = 5000;
/// Into the phase between checkpoints, when its episode runs.
const EPISODE_AT: Duration = Duration::from_secs(3);
/// How long a burst's entries may take to expire and their events to be applied or
/// counted lost.
const BURST_WAIT: Duration = Duration::from_secs(60);

pub struct Config {
    pub duration: Duration,
    /// Load between checkpoints.
    pub every: Duration,
    /// How long a checkpoint waits for the agents to equal the kernel.
    pub settle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            duration: Duration::from_secs(90),
            every: Duration::from_secs(10),
            settle: Duration::from_secs(20),
        }
    }
}

/// Runs the soak until `cfg.duration` has passed or `stop` is set, and returns its report
/// (with the verdict). Namespaces, agents and sysctls are cleaned up on return and on
/// panic.
pub fn run(cfg: &Config, stop: &AtomicBool) -> Report {
    netns::remove_stale();
    let start = Instant::now();
    let pairs = Arc::new(
        load::SUBNETS
            .map(Steady::new)
            .into_iter()
            .collect::<Vec<_>>(),
    );
    let mut agents = Agents::start();
    let mut load = Load::start(pairs.clone());
    let mut report = Report {
        tier: agents.kept.status()["tier"].as_u64(),
        ..Report::default()
    };
    let mut round = 0usize;
    while start.elapsed() + cfg.every <= cfg.duration && !stop.load(Ordering::Relaxed) {
        let phase = Instant::now();
        std::thread::sleep(EPISODE_AT);
        let episode = run_episode(round, &mut agents, &pairs, &load, start);
        let label = format!(
            "{} {}",
            episode.kind,
            if episode.ok { "ok" } else { "FAILED" }
        );
        let broken = !episode.ok && episode.kind.starts_with("restart");
        if !episode.ok {
            report.fail(format!("{}: {}", episode.kind, episode.detail));
        }
        report.burst_losses += agents.burst_losses.take().unwrap_or(0);
        report.episodes.push(episode);
        std::thread::sleep(cfg.every.saturating_sub(phase.elapsed()));
        if let Some(why) = load.died().or_else(|| agents.died()) {
            report.fail(why);
            break;
        }
        if broken {
            break; // No restarted agent to compare.
        }
        let point = checkpoint(&agents, &pairs, &load, cfg, start, label);
        print_progress(&point);
        report.checkpoints.push(point);
        round += 1;
    }
    if stop.load(Ordering::Relaxed) {
        report.fail("interrupted");
    }
    report.counts = load.counts.snapshot();
    drop(load);
    agents.stop(&mut report);
    report.seconds = start.elapsed().as_secs_f64();
    report.finish();
    report
}

/// The two agents, and the socket the restarted one comes back on.
struct Agents {
    kept: Agent,
    restarted: Option<Agent>,
    socket: PathBuf,
    restarts: u32,
    /// The kept agent's losses in the last burst.
    burst_losses: Option<u64>,
    _dir: TempDir,
}

impl Agents {
    fn start() -> Self {
        let kept = Agent::start(&["--ring-size", &SMALL_RING.to_string()]);
        let dir = agent::private_dir();
        let socket = dir.path().join("agent.sock");
        let restarted = Agent::try_start(&socket, SocketVia::Flag, &[])
            .unwrap_or_else(|e| panic!("the restarted agent did not start: {e:?}"));
        Agents {
            kept,
            restarted: Some(restarted),
            socket,
            restarts: 0,
            burst_losses: None,
            _dir: dir,
        }
    }

    fn each(&self) -> Vec<(&'static str, &Agent)> {
        let mut all = vec![("kept", &self.kept)];
        all.extend(self.restarted.as_ref().map(|a| ("restarted", a)));
        all
    }

    /// An agent that exited on its own.
    fn died(&mut self) -> Option<String> {
        let kept = self.kept.exited().map(|s| ("kept", s));
        let restarted = self
            .restarted
            .as_mut()
            .and_then(|a| a.exited())
            .map(|s| ("restarted", s));
        kept.or(restarted)
            .map(|(name, status)| format!("the {name} agent exited on its own: {status}"))
    }

    /// Kills the restarted agent (SIGKILL, then SIGTERM next time) and starts it again on
    /// the same socket (stale after SIGKILL).
    fn restart(&mut self) -> Result<String, String> {
        let signal = if self.restarts.is_multiple_of(2) {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        self.restarts += 1;
        let old = self.restarted.take().ok_or("no restarted agent")?;
        let status = old.signal(signal).ok_or("could not wait for the agent")?;
        let expected = match signal {
            Signal::SIGKILL => status.signal() == Some(Signal::SIGKILL as i32),
            _ => status.success(),
        };
        if !expected {
            return Err(format!("after {signal} the agent exited with {status}"));
        }
        let began = Instant::now();
        let agent = Agent::try_start(&self.socket, SocketVia::Flag, &[]).map_err(|e| {
            format!(
                "after {signal} the agent did not start again ({}): {}",
                e.status, e.stderr
            )
        })?;
        self.restarted = Some(agent);
        Ok(format!(
            "{signal} ({status}), ready again on the same socket in {:.1} s",
            began.elapsed().as_secs_f64()
        ))
    }

    /// SIGTERM to both: each must exit 0.
    fn stop(self, report: &mut Report) {
        let all = [
            Some(("kept", self.kept)),
            self.restarted.map(|a| ("restarted", a)),
        ];
        for (name, agent) in all.into_iter().flatten() {
            let status = agent.signal(Signal::SIGTERM);
            if !status.is_some_and(|s| s.success()) {
                report.fail(format!(
                    "the {name} agent exited with {status:?} on SIGTERM"
                ));
            }
        }
    }
}

/// The episode of `round`: burst, restart, table full, in turn.
fn run_episode(
    round: usize,
    agents: &mut Agents,
    pairs: &[Steady],
    load: &Load,
    start: Instant,
) -> Episode {
    let at = start.elapsed().as_secs_f64();
    let (kind, result) = match round % 3 {
        0 => ("burst", burst(agents, &pairs[0], load)),
        1 => {
            let kind = if agents.restarts.is_multiple_of(2) {
                "restart SIGKILL"
            } else {
                "restart SIGTERM"
            };
            (kind, agents.restart())
        }
        _ => ("table full", table_full(&pairs[pairs.len() - 1])),
    };
    let ok = result.is_ok();
    let detail = result.unwrap_or_else(|e| e);
    Episode {
        at,
        kind,
        ok,
        detail,
    }
}

/// nf_conntrack_max lowered while one client sends more new flows than it allows (the
/// other namespaces keep going): early drops and drops must follow.
fn table_full(steady: &Steady) -> Result<String, String> {
    let p = &steady.pair;
    let before = CtStats::read(&p.c);
    let (failed, _) = {
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", TABLE_FULL_MAX);
        let src = SocketAddrV4::new(p.c_addr, 9500);
        traffic::udp_spray(&p.c, src, p.s_addr, 20_000..20_000 + TABLE_FULL_FLOWS)
    };
    let delta = CtStats::read(&p.c).since(&before);
    let (early, drop) = (delta.get("early_drop"), delta.get("drop"));
    let what = format!(
        "nf_conntrack_max {TABLE_FULL_MAX}, {TABLE_FULL_FLOWS} flows: {failed} sends dropped, \
         early_drop +{early}, drop +{drop}"
    );
    if early + drop == 0 {
        return Err(format!("the table never filled: {what}"));
    }
    Ok(what)
}

/// With the load paused, one burst of new flows that expire [`load::SHORT_TIMEOUT`] s
/// later: each agent must apply or count lost at least one `new` and one `destroy` per
/// entry the kernel made (other events of the paused load may add to either side).
fn burst(agents: &mut Agents, steady: &Steady, load: &Load) -> Result<String, String> {
    let _paused = load.pause();
    std::thread::sleep(Duration::from_secs(1)); // The load's last events arrive first.
    let before: Vec<(u64, u64)> = agents
        .each()
        .iter()
        .map(|(_, a)| applied_and_lost(a))
        .collect();
    let p = &steady.pair;
    let src = SocketAddrV4::new(p.c_addr, 9400);
    let began = Instant::now();
    let (failed, took) = traffic::udp_spray(&p.c, src, p.s_addr, 20_000..20_000 + BURST);
    let events = 2 * (u64::from(BURST) - failed as u64);
    let mut seen = Vec::new();
    let mut kept_lost = 0;
    for ((name, agent), (applied0, lost0)) in agents.each().into_iter().zip(before) {
        let mut last = (0, 0);
        let counted = wait::poll(BURST_WAIT, Duration::from_millis(200), || {
            let (applied, lost) = applied_and_lost(agent);
            last = (applied - applied0, lost - lost0);
            (last.0 + last.1 >= events).then_some(())
        });
        if counted.is_none() {
            return Err(format!(
                "{name} agent: the kernel made {events} `new` and `destroy` events; \
                 {} applied and {} counted lost after {BURST_WAIT:?}: {} vanished uncounted",
                last.0,
                last.1,
                events - last.0 - last.1
            ));
        }
        seen.push(format!("{name} applied +{} lost +{}", last.0, last.1));
        if name == "kept" {
            kept_lost = last.1;
        }
    }
    agents.burst_losses = Some(kept_lost);
    Ok(format!(
        "{} new flows sent in {:.2} s, all expired and accounted for in {:.1} s: {}",
        events / 2,
        took.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        seen.join(", ")
    ))
}

/// `new` and `destroy` events applied, and events lost, from `watch --status`.
fn applied_and_lost(agent: &Agent) -> (u64, u64) {
    let status = agent.status();
    let totals = &status["totals"];
    let kind = |k: &str| totals["events"][k].as_u64().unwrap_or(0);
    (
        kind("new") + kind("destroy"),
        totals["lost"].as_u64().unwrap_or(0),
    )
}

/// Pauses the load and waits until every agent equals the kernel in every namespace of
/// the soak (or `cfg.settle` passes), then takes the figures.
fn checkpoint(
    agents: &Agents,
    pairs: &[Steady],
    load: &Load,
    cfg: &Config,
    start: Instant,
    episode: String,
) -> Checkpoint {
    let _paused = load.pause();
    let at = start.elapsed().as_secs_f64();
    let churn = load
        .churn
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let namespaces: Vec<&Netns> = pairs
        .iter()
        .flat_map(|p| p.namespaces())
        .chain(churn.live.iter().map(|c| &c.ns))
        .collect();
    let began = Instant::now();
    let mut diffs = differences(agents, &namespaces, &churn.deleted);
    while !diffs.is_empty() && began.elapsed() < cfg.settle {
        std::thread::sleep(Duration::from_millis(500));
        diffs = differences(agents, &namespaces, &churn.deleted);
    }
    let settle = began.elapsed().as_secs_f64();
    for d in &diffs {
        eprintln!("soak: checkpoint at {at:.0} s, still different after {settle:.1} s: {d}");
    }
    if !diffs.is_empty() {
        // Most differences last until a dump round: say when each agent's next is due.
        for (name, agent) in agents.each() {
            eprintln!(
                "soak: the {name} agent's dump rounds: {}",
                agent.status()["resync"]
            );
        }
    }
    let inodes: Vec<u64> = namespaces.iter().map(|ns| ns.inode()).collect();
    Checkpoint {
        at,
        settle,
        namespaces: namespaces.len(),
        kernel: namespaces.iter().map(|ns| kernel::ct_count(ns)).sum(),
        agents: agents
            .each()
            .into_iter()
            .map(|(name, a)| agent_point(name, a, &inodes))
            .collect(),
        mismatches: diffs.len(),
        episode,
    }
}

/// What differs between each agent and the kernel: one line per namespace, and one per
/// deleted namespace an agent still knows.
fn differences(agents: &Agents, namespaces: &[&Netns], deleted: &HashSet<u64>) -> Vec<String> {
    let mut diffs = Vec::new();
    for (name, agent) in agents.each() {
        for ns in namespaces {
            if let Err(e) = mirror::compare(agent, ns) {
                diffs.push(format!("{name} agent, {}: {e}", ns.name()));
            }
        }
        let known = known_namespaces(&agent.status());
        let live = live_namespaces();
        for gone in deleted
            .iter()
            .filter(|n| known.contains(n) && !live.contains(n))
        {
            diffs.push(format!("{name} agent still knows deleted namespace {gone}"));
        }
    }
    diffs
}

fn agent_point(name: &'static str, agent: &Agent, inodes: &[u64]) -> AgentPoint {
    let status = agent.status();
    let per_netns = &status["per_netns"];
    AgentPoint {
        name,
        pid: agent.pid(),
        entries: inodes
            .iter()
            .filter_map(|n| per_netns[n.to_string()].as_u64())
            .sum(),
        rss_kib: agent.rss_kib(),
        fds: agent.fd_count(),
        lost: status["totals"]["lost"].as_u64().unwrap_or(0),
        reseeds: status["totals"]["reseeds"].as_u64().unwrap_or(0),
    }
}

/// The namespace inodes of `watch --status`'s `per_netns`.
fn known_namespaces(status: &Value) -> HashSet<u64> {
    status["per_netns"]
        .as_object()
        .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

/// Inodes of the network namespaces alive now: named ones and those of processes.
fn live_namespaces() -> HashSet<u64> {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()));
    let of_processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("ns/net")));
    named
        .chain(of_processes)
        .filter_map(|p| inode(&p))
        .collect()
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn print_progress(c: &Checkpoint) {
    let agents: Vec<String> = c
        .agents
        .iter()
        .map(|a| {
            format!(
                "{} {} rows, {:.1} MiB, {} fds, lost {}",
                a.name,
                a.entries,
                a.rss_kib as f64 / 1024.0,
                a.fds,
                a.lost
            )
        })
        .collect();
    eprintln!(
        "soak: {:>5.0} s  kernel {} entries in {} namespaces, settled in {:.1} s, {} differences; {}",
        c.at,
        c.kernel,
        c.namespaces,
        c.settle,
        c.mismatches,
        agents.join("; ")
    );
}

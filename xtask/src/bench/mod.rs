//! `cargo xtask bench [--workload flood|http|dns] [--rounds R] [--json]`: how fast a
//! workload creates new conntrack entries with no listener, with `ctscope events`, with
//! the `ctscope watch` agent and with `conntrack -E` attached, how many `new` events
//! each listener received and lost, and what each cost per new flow: the CPU time of
//! its process and (`--bpf-stats`) of its BPF programs, which other load on the machine
//! moves less than the rates.
//! Mode `hooks only` attaches ctscope's tier-2 hooks with programs that return at once:
//! the floor of what running any BPF program on those tracepoints costs. Modes `filter`
//! and `ring` (not run by default) cut tier 2 short after its first-seen filter, and after
//! reserving and discarding one ring record per new flow: with `--bpf-stats` they break
//! ctscope's own cost down step by step.
//!
//! The workloads ([`workload`]): `flood` (below), `http` (wrk → nginx through a NAT
//! namespace, a TCP connection per request) and `dns` (dnsperf → dnsmasq, a new source
//! address and port per query); each run lasts --duration seconds.
//!
//! The flood's set-up (all removed on exit, errors and Ctrl-C included): two namespaces made as the
//! integration tests make theirs (ctscope-tests' `Netns`, `ctst-<pid>-<n>`), a client
//! (conntrack on through an nft `ct state` rule) and a server (routes the flows into a
//! blackhole, so no ICMP comes back), joined by a veth on 10.77.0.0/24. The flows go from one socket on 10.77.0.1 to 10.77.1.0/24, routed
//! through the server. The sender is `ct-flood` (xtask/src/bin/ct-flood.rs). Every run
//! starts from an empty table (`conntrack -F`); the kernel's counters (`conntrack -S`,
//! `conntrack -C`) are read before and after. Every round runs each mode once, starting
//! with the next one (rotated), after a warm-up flood of N flows.
//!
//! - [`stats`]: runs and their per-mode summaries; [`report`]: the table and environment;
//! - [`listener`]: the listener of a run; [`footprint`]: `--agent`'s measurement;
//!   [`agent`]: the agent's status, read on its socket;
//! - [`host`]: the namespaces' wiring, the kernel's counters, sysctls, Ctrl-C;
//!   [`procfs`]: memory, CPU and BPF time read from /proc.

mod agent;
mod footprint;
mod host;
mod listener;
mod procfs;
mod report;
mod scale;
mod stats;
mod workload;

use ctscope_tests::netns::{self, Netns};
use footprint::{agent_footprint, print_agent};
use host::{catch_interrupts, check_interrupt, counters, flush, raise_conntrack_max, set_sysctl};
use listener::{Listener, without_bpf};
use report::{environment, print_table};
use stats::{Run, Summary, summarize};
use workload::{Bed, Workload};

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::{cargo, cmd, setup};

const CLIENT_ADDR: &str = "10.77.0.1";
const SERVER_ADDR: &str = "10.77.0.2";
const FLOW_NET: &str = "10.77.1.0/24";
/// The first destination; ct-flood moves to the next address every 65535 flows.
const FLOW_FIRST: &str = "10.77.1.1";
const SPORT: u16 = 40_000;
/// 254 destination addresses of 65535 ports each.
const MAX_FLOWS: u64 = 254 * 65_535;
/// conntrack -E's receive buffer, as DESIGN.md measured it (`-b 32M`).
const CONNTRACK_RCVBUF: &str = "33554432";
const NF_CONNTRACK_MAX: &str = "net.netfilter.nf_conntrack_max";
/// Makes the kernel account each BPF program's run time (read from ctscope's fdinfo).
const BPF_STATS: &str = "kernel.bpf_stats_enabled";
/// How long a listener may take to attach (ctscope loads and verifies its BPF programs).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After the sender: stop once the listener has all events, or none came for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
const DRAIN_MAX: Duration = Duration::from_secs(15);
/// After `conntrack -F`: let the freeing (RCU, slab) finish before the next run.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Args)]
pub struct Options {
    /// What makes the new flows: flood (ct-flood, one UDP datagram per flow), http (wrk →
    /// nginx through a NAT namespace, one TCP connection per request) or dns (dnsperf →
    /// dnsmasq, one query per flow). http and dns need wrk, nginx, dnsperf and dnsmasq,
    /// which setup installs; the bench runs its own servers in its namespaces.
    #[arg(long, value_enum, default_value_t = Workload::Flood)]
    workload: Workload,
    /// Seconds per run of the http and dns workloads.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    duration: u32,
    /// flood: new UDP flows per run (one datagram each).
    #[arg(long, default_value_t = 200_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_FLOWS))]
    flows: u64,
    /// Rounds; each round runs every mode once, interleaved.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// flood: datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Modes to run, in this order within each round (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Mode::ALL)]
    modes: Vec<Mode>,
    /// Print the results as one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also measure the agent (`ctscope watch`): its memory per 100k entries and its CPU
    /// per 10k events/s, from one flood of --flows new flows it keeps in its table.
    #[arg(long)]
    agent: bool,
    /// Turn on kernel.bpf_stats_enabled for the `BPF s` and `BPF ns/flow` columns and the
    /// per-program run times. Off by default: the accounting itself costs two clock reads per program
    /// run, which would count against ctscope's flow rate.
    #[arg(long)]
    bpf_stats: bool,
    /// Instead of the flood runs: the agent holding N entries across namespaces (memory
    /// per entry, `list` against `conntrack -L`, latencies while events flow, resync
    /// CPU, memory after the table drains); see xtask/src/bench/scale.rs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    scale: Option<u64>,
    /// With --bpf-stats: also print each BPF program's run time per new flow (which hook
    /// costs what); --json always has it.
    #[arg(long)]
    per_program: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// No listener.
    None,
    /// `ctscope events --json --kind new --netns NS` attached, NS where the workload makes
    /// its entries.
    Ctscope,
    /// ctscope's tier-2 hooks attached with programs that return at once
    /// (`ctscope events --floor empty`): the floor any tier-2 program pays.
    Hooks,
    /// Tier 2 up to its first-seen filter; new flows are not reported
    /// (`ctscope events --floor filter`).
    Filter,
    /// Tier 2 up to its first-seen filter, then one ring record reserved and discarded per
    /// new flow: the ring buffer's own cost (`ctscope events --floor ring`).
    Ring,
    /// The agent, `ctscope watch --headless`, running (events and losses from its status).
    Watch,
    /// `conntrack -E -e NEW -b 33554432` attached in the workload's conntrack namespace.
    Conntrack,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::None,
        Mode::Hooks,
        Mode::Ctscope,
        Mode::Watch,
        Mode::Conntrack,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Ctscope => "ctscope events",
            Mode::Watch => "ctscope watch",
            Mode::Hooks => "hooks only",
            Mode::Filter => "filter",
            Mode::Ring => "ring",
            Mode::Conntrack => "conntrack -E",
        }
    }

    /// The `ctscope events --floor` this mode runs.
    fn floor(self) -> Option<&'static str> {
        match self {
            Mode::Hooks => Some("empty"),
            Mode::Filter => Some("filter"),
            Mode::Ring => Some("ring"),
            _ => None,
        }
    }

    /// Whether the listener is ctscope (loads BPF programs).
    fn runs_ctscope(self) -> bool {
        matches!(self, Mode::Ctscope | Mode::Watch) || self.floor().is_some()
    }

    /// Whether the listener reports events to count (and so to find lost).
    fn counts_events(self) -> bool {
        matches!(self, Mode::Ctscope | Mode::Watch | Mode::Conntrack)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

pub fn cmd(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmark needs root (network namespaces, nft, BPF): \
             run `sudo -E env PATH=\"$PATH\" cargo xtask bench`"
        );
    }
    if let Some(n) = opts.scale {
        return scale::cmd(n, opts.json, &shown_command());
    }
    if opts.modes.is_empty() {
        bail!("--modes needs at least one mode");
    }
    if opts.agent && opts.workload != Workload::Flood {
        bail!("--agent measures the agent on the flood: drop --workload or --agent");
    }
    let command = shown_command();
    let Prepared {
        ctscope,
        flood,
        tmp,
    } = prepare("ctscope-bench-")?;
    let bed = Bed::new(opts, tmp.path())?;
    let _max = raise_conntrack_max(bed.max_entries(opts))?;
    let _stats = match opts.bpf_stats && opts.modes.iter().any(|m| m.runs_ctscope()) {
        true => Some(set_sysctl(BPF_STATS, "1")),
        false => None,
    };

    let ctx = Ctx {
        opts,
        bed: &bed,
        conntrack_ns: bed.conntrack_ns(),
        ctscope: &ctscope,
        flood: &flood,
        dir: tmp.path(),
        ready: tmp.path().join("ctscope-ready"),
    };
    let env = environment(ctx.conntrack_ns)?;
    eprintln!(
        "bench: {}; {} round(s) of {}; kernel {}, {} CPUs, load average {}",
        bed.describe(opts),
        opts.rounds,
        opts.modes
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(", "),
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["loadavg"].as_str().unwrap_or("?"),
    );
    eprintln!(
        "bench: counters: `ip netns exec {0} conntrack -S` and `conntrack -C` before and after \
         every run, which starts after `conntrack -F`",
        ctx.conntrack_ns.name()
    );

    // Warm-up, one full flood or a short run: neighbour resolution, page cache, the
    // servers' first requests, and the slab caches grown, so that the first run does not
    // pay for them.
    flush(ctx.conntrack_ns)?;
    bed.drive(&ctx, true)?;

    let mut runs = Vec::new();
    for round in 1..=opts.rounds {
        // Each round starts with the next mode, so no mode always runs first or last.
        let mut order = opts.modes.clone();
        let shift = (round as usize - 1) % order.len();
        order.rotate_left(shift);
        for mode in order {
            check_interrupt()?;
            let run = ctx.run(mode, round)?;
            eprintln!("{}", run.log_line(opts.rounds, opts.workload.unit()));
            runs.push(run);
        }
    }
    let summary = summarize(opts, &runs);
    let agent = match opts.agent {
        true => Some(agent_footprint(&ctx, tmp.path())?),
        false => None,
    };
    if opts.json {
        let out = json!({
            "command": command,
            "workload": bed.describe(opts),
            "unit": opts.workload.unit(),
            "duration_s": (opts.workload != Workload::Flood).then_some(opts.duration),
            "flows": (opts.workload == Workload::Flood).then_some(opts.flows),
            "rounds": opts.rounds,
            "batch": opts.batch,
            "environment": env,
            "modes": summary.iter().map(Summary::to_json).collect::<Vec<_>>(),
            "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
            "agent": agent,
        });
        println!("{out:#}");
    } else {
        print_table(&command, opts, &bed.describe(opts), &env, &summary);
        if let Some(a) = agent {
            print_agent(&a);
        }
    }
    let failed: Vec<&str> = summary
        .iter()
        .filter(|s| !s.errors.is_empty())
        .map(|s| s.mode.label())
        .collect();
    if !failed.is_empty() {
        bail!(
            "runs of {} failed and are left out of the figures (errors above)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// What every bench run starts from: the packages it needs, release builds of ctscope and
/// ct-flood, and a temporary directory; Ctrl-C is caught and stale namespaces are gone.
pub(super) struct Prepared {
    pub ctscope: PathBuf,
    pub flood: PathBuf,
    pub tmp: tempfile::TempDir,
}

pub(super) fn prepare(tmp_prefix: &str) -> Result<Prepared> {
    setup::ensure(&setup::Needs {
        tests: true,
        vm: false,
    })?;
    let ctscope = cargo::build_ctscope(true)?;
    let flood = cargo::build_bin("xtask", "ct-flood", true)?;
    catch_interrupts();
    netns::remove_stale();
    let tmp = tempfile::Builder::new()
        .prefix(tmp_prefix)
        .tempdir()
        .context("creating a temporary directory")?;
    Ok(Prepared {
        ctscope,
        flood,
        tmp,
    })
}

/// This run's command line, as the report shows it.
fn shown_command() -> String {
    let mut c = Command::new("cargo");
    c.arg("xtask").args(env::args_os().skip(1));
    cmd::show(&c)
}

struct Ctx<'a> {
    opts: &'a Options,
    bed: &'a Bed,
    /// Where the workload's entries are made (flood: the client; http: the NAT; dns:
    /// the server) and listeners attach.
    conntrack_ns: &'a Netns,
    ctscope: &'a Path,
    flood: &'a Path,
    dir: &'a Path,
    ready: PathBuf,
}

impl Ctx<'_> {
    /// The `watch` mode's agent socket (also `--agent`'s).
    fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// One run: empty table, listener (if any) attached, workload, drain, counters.
    fn run(&self, mode: Mode, round: u32) -> Result<Run> {
        flush(self.conntrack_ns)?;
        let mut run = Run::new(mode, round);
        let mut listener = match mode {
            Mode::None => None,
            _ => match Listener::start(self, mode) {
                Ok(l) => Some(l),
                Err(e) => {
                    run.error = Some(format!("{e:#}"));
                    return Ok(run);
                }
            },
        };
        let before = counters(self.conntrack_ns);
        let created_before = self.bed.created();
        let sender = self.bed.drive(self, false)?;
        run.entries = self.bed.created().saturating_sub(created_before);
        if let Some(l) = listener.as_ref().filter(|_| mode.counts_events()) {
            l.drain(run.entries);
        }
        let tally = listener.take().map(Listener::stop).transpose()?;
        let after = counters(self.conntrack_ns);
        run.counters = after
            .iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
            .collect();
        run.sender = Some(sender);
        if let Some(t) = tally {
            if mode.counts_events() {
                run.events = Some(t.events);
                run.loss_reports = Some(t.loss_reports);
            }
            run.upkeep = t.upkeep;
            run.shown = t.shown;
            run.cpu = t.cpu;
            run.reader_cpu = Some(t.reader_cpu);
            run.bpf = t.bpf;
            if !t.status.success() {
                run.error = Some(format!("listener {}", cmd::describe(t.status)));
            } else if let Some(line) = without_bpf(mode, &t.stderr) {
                // A verifier refusal falls back to ctnetlink: not what this mode measures.
                run.error = Some(format!("ctscope ran without BPF: {line}"));
            }
            run.stderr = t.stderr;
        }
        Ok(run)
    }

    /// Runs ct-flood in the client namespace and returns its report.
    fn send(&self, flows: u64, echo: bool) -> Result<Sender> {
        let mut send = self.conntrack_ns.command(self.flood);
        send.args(["--src", &format!("{CLIENT_ADDR}:{SPORT}")])
            .args(["--dst", FLOW_FIRST])
            .args(["--flows", &flows.to_string()])
            .args(["--batch", &self.opts.batch.to_string()]);
        if echo {
            eprintln!("$ {}", cmd::show(&send));
        }
        let out = cmd::output(&mut send)?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("ct-flood printed no JSON: {out:?}"))?;
        let num = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Ok(Sender {
            flows: num("flows") as u64,
            sent: num("sent") as u64,
            send_errors: num("send_errors") as u64,
            first_error: v["first_error"].as_str().map(str::to_owned),
            seconds: num("seconds"),
            rate: num("rate"),
        })
    }
}

struct Sender {
    flows: u64,
    sent: u64,
    send_errors: u64,
    first_error: Option<String>,
    seconds: f64,
    rate: f64,
}

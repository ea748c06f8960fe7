//! `cargo xtask bench [--flows N] [--rounds R] [--json]`: how fast one sender creates new
//! conntrack entries with no listener, with `ctscope events` attached and with
//! `conntrack -E` attached, and how many `new` events each listener received and lost.
//! Mode `hooks only` attaches ctscope's tier-2 hooks with programs that return at once:
//! the floor of what running any BPF program on those tracepoints costs. Modes `filter`
//! and `ring` (not run by default) cut tier 2 short after its first-seen filter, and after
//! reserving and discarding one ring record per new flow: with `--bpf-stats` they break
//! ctscope's own cost down step by step.
//!
//! Set-up (all removed on exit, errors and Ctrl-C included): namespaces
//! `ctbench-<pid>-c` (client; conntrack on through an nft `ct state` rule) and
//! `ctbench-<pid>-s` (server; routes the flows into a blackhole, so no ICMP comes back) joined by a
//! veth on 10.77.0.0/24. The flows go from one socket on 10.77.0.1 to 10.77.1.0/24, routed
//! through the server. The sender is `ct-flood` (xtask/src/bin/ct-flood.rs). Every run
//! starts from an empty table (`conntrack -F`); the kernel's counters (`conntrack -S`,
//! `conntrack -C`) are read before and after. Every round runs each mode once, starting
//! with the next one (rotated), after a warm-up flood of N flows.
use std::{
    collections::BTreeMap,
    env, fs,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
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
const NF_CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
/// Makes the kernel account each BPF program's run time (read from ctscope's fdinfo).
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// How long a listener may take to attach (ctscope loads and verifies its BPF programs).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After the sender: stop once the listener has all events, or none came for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
const DRAIN_MAX: Duration = Duration::from_secs(15);
/// After `conntrack -F`: let the freeing (RCU, slab) finish before the next run.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Args)]
pub struct Options {
    /// New UDP flows per run (one datagram each).
    #[arg(long, default_value_t = 200_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_FLOWS))]
    flows: u64,
    /// Rounds; each round runs every mode once, interleaved.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Datagrams per sendmmsg call.
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// No listener.
    None,
    /// `ctscope events --json --kind new --netns CLIENT` attached.
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
    /// `conntrack -E -e NEW -b 33554432` attached in the client namespace.
    Conntrack,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::None, Mode::Hooks, Mode::Ctscope, Mode::Conntrack];

    fn label(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Ctscope => "ctscope",
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
        self == Mode::Ctscope || self.floor().is_some()
    }

    /// Whether the listener reports events to count (and so to find lost).
    fn counts_events(self) -> bool {
        matches!(self, Mode::Ctscope | Mode::Conntrack)
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
    if opts.modes.is_empty() {
        bail!("--modes needs at least one mode");
    }
    let command = {
        let mut c = Command::new("cargo");
        c.arg("xtask").args(env::args_os().skip(1));
        cmd::show(&c)
    };
    setup::ensure(&setup::Needs { vm: false })?;
    let ctscope = cargo::build_ctscope(true)?;
    let flood = cargo::build_bin("xtask", "ct-flood", true)?;
    catch_interrupts();

    remove_stale_namespaces();
    let tmp = TempDir::new()?;
    let client = Netns::add(format!("ctbench-{}-c", std::process::id()))?;
    let server = Netns::add(format!("ctbench-{}-s", std::process::id()))?;
    configure(&client, &server)?;
    let _max = raise_conntrack_max(opts.flows)?;
    let _stats = match opts.bpf_stats && opts.modes.iter().any(|m| m.runs_ctscope()) {
        true => SysctlGuard::set(BPF_STATS, "1")?,
        false => None,
    };

    let ctx = Ctx {
        opts,
        client: &client,
        ctscope: &ctscope,
        flood: &flood,
        ready: tmp.0.join("ctscope-ready"),
    };
    let env = environment(&client)?;
    eprintln!(
        "bench: {} flows per run, {} round(s) of {}; kernel {}, {} CPUs, load average {}",
        opts.flows,
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
        client.name
    );

    // Warm-up, one full flood: neighbour resolution, page cache, and the slab caches grown
    // to hold N entries, so that the first run does not pay for them.
    flush(&client)?;
    ctx.send(opts.flows, true)?;

    let mut runs = Vec::new();
    for round in 1..=opts.rounds {
        // Each round starts with the next mode, so no mode always runs first or last.
        let mut order = opts.modes.clone();
        let shift = (round as usize - 1) % order.len();
        order.rotate_left(shift);
        for mode in order {
            check_interrupt()?;
            let run = ctx.run(mode, round)?;
            eprintln!("{}", run.log_line(opts.rounds));
            runs.push(run);
        }
    }
    let summary = summarize(opts, &runs);
    let agent = match opts.agent {
        true => Some(agent_footprint(&ctx, &tmp.0)?),
        false => None,
    };
    if opts.json {
        let out = json!({
            "command": command,
            "flows": opts.flows,
            "rounds": opts.rounds,
            "batch": opts.batch,
            "environment": env,
            "modes": summary.iter().map(Summary::to_json).collect::<Vec<_>>(),
            "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
            "agent": agent,
        });
        println!("{out:#}");
    } else {
        print_table(&command, opts, &env, &summary);
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

/// The agent's footprint: resident memory (outside BPF maps) grown per 100k entries in its table, and its
/// CPU time per event expressed as the share of one CPU 10k events/s would take. Dumps
/// are off (`--resync 0`) so the figure is the event path's; the seed is done before.
fn agent_footprint(ctx: &Ctx, dir: &Path) -> Result<Value> {
    flush(ctx.client)?;
    let socket = dir.join("agent.sock");
    let ready = dir.join("agent-ready");
    let mut command = Command::new(ctx.ctscope);
    command
        .args(["watch", "--headless", "--resync", "0", "--socket"])
        .arg(&socket)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    eprintln!("$ {} &", cmd::show(&command));
    let mut child = command.spawn().context("cannot start ctscope watch")?;
    let start = Instant::now();
    while !ready.exists() {
        check_interrupt()?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "ctscope watch exited before it was ready ({})",
                cmd::describe(status)
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("ctscope watch not ready after {READY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let (rss0, cpu0) = (rss_bytes(pid), cpu_seconds(pid));
    let entries_before = entries(ctx.client)?;
    let sender = ctx.send(ctx.opts.flows, false)?;
    let created = entries(ctx.client)?.saturating_sub(entries_before);
    let status = |socket: &Path| -> Option<Value> {
        let out = Command::new(ctx.ctscope)
            .args(["watch", "--status", "--socket"])
            .arg(socket)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let news = |v: &Value| v["totals"]["events"]["new"].as_u64().unwrap_or(0);
    let mut last = Value::Null;
    let waited = Instant::now();
    while waited.elapsed() < DRAIN_MAX {
        last = status(&socket).unwrap_or(Value::Null);
        if news(&last) >= created {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let (rss1, cpu1) = (rss_bytes(pid), cpu_seconds(pid));
    signal(&child, libc::SIGTERM);
    let _ = child.wait();
    let events = news(&last);
    let table = last["entries"].as_u64().unwrap_or(0);
    let grown = rss1.zip(rss0).map(|(a, b)| a.saturating_sub(b));
    let cpu = cpu1.zip(cpu0).map(|(a, b)| a - b);
    Ok(json!({
        "flows_sent": sender.sent,
        "entries_created": created,
        "new_events": events,
        "table_entries": table,
        "lost": last["totals"]["lost"],
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        "mib_per_100k_entries": grown.filter(|_| table > 0)
            .map(|g| g as f64 / table as f64 * 100_000.0 / 1048576.0),
        "cpu_seconds": cpu,
        "cpu_share_per_10k_events_per_s": cpu.filter(|_| events > 0)
            .map(|c| c / events as f64 * 10_000.0),
    }))
}

fn print_agent(a: &Value) {
    let f = |k: &str| a[k].as_f64().map_or("-".into(), |v| format!("{v:.3}"));
    println!(
        "\nagent (ctscope watch --resync 0): {} new flows -> {} entries in its table, {} new \
         events, {} lost; memory {} MiB per 100k entries (RSS {} -> {} bytes); CPU {} s, \
         i.e. {} of one CPU per 10k events/s",
        a["entries_created"],
        a["table_entries"],
        a["new_events"],
        a["lost"],
        f("mib_per_100k_entries"),
        a["rss_before_bytes"],
        a["rss_after_bytes"],
        f("cpu_seconds"),
        f("cpu_share_per_10k_events_per_s"),
    );
}

/// Resident memory of process `pid` outside BPF maps (the ring buffer's pages count once
/// touched, whatever the table holds), summed from /proc/PID/smaps.
fn rss_bytes(pid: u32) -> Option<u64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut total = 0;
    let mut bpf = false;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            if !bpf {
                total += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()?
                    * 1024;
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|t| t.contains('-') && !t.ends_with(':'))
        {
            // A mapping's header line: address range, perms, offset, dev, inode [name].
            bpf = line.contains("bpf");
        }
    }
    Some(total)
}

struct Ctx<'a> {
    opts: &'a Options,
    client: &'a Netns,
    ctscope: &'a Path,
    flood: &'a Path,
    ready: PathBuf,
}

impl Ctx<'_> {
    /// One run: empty table, listener (if any) attached, flood, drain, counters.
    fn run(&self, mode: Mode, round: u32) -> Result<Run> {
        flush(self.client)?;
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
        let before = counters(self.client)?;
        let entries_before = entries(self.client)?;
        let sender = self.send(self.opts.flows, false)?;
        if let Some(l) = listener.as_ref().filter(|_| mode.counts_events()) {
            l.drain(sender.sent);
        }
        let tally = listener.take().map(Listener::stop).transpose()?;
        let after = counters(self.client)?;
        run.entries = entries(self.client)?.saturating_sub(entries_before);
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
        let mut send = self.client.exec(self.flood);
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

struct Run {
    mode: Mode,
    round: u32,
    /// None when the listener could not start (`error` says why).
    sender: Option<Sender>,
    /// Conntrack entries the run created (`conntrack -C` after minus before).
    entries: u64,
    /// Deltas of `conntrack -S`, summed over CPUs.
    counters: BTreeMap<String, u64>,
    /// `new` events the listener printed.
    events: Option<u64>,
    /// ctscope: the `count` of its `lost` records; conntrack -E: its ENOBUFS warnings.
    loss_reports: Option<u64>,
    /// conntrack -E: "N flow events have been shown." at exit.
    shown: Option<u64>,
    /// CPU seconds of the listener and of xtask's thread counting its lines.
    cpu: Option<f64>,
    reader_cpu: Option<f64>,
    bpf: Option<(f64, u64)>,
    stderr: Vec<String>,
    error: Option<String>,
}

impl Run {
    fn new(mode: Mode, round: u32) -> Self {
        Run {
            mode,
            round,
            sender: None,
            entries: 0,
            counters: BTreeMap::new(),
            events: None,
            loss_reports: None,
            shown: None,
            cpu: None,
            reader_cpu: None,
            bpf: None,
            stderr: Vec::new(),
            error: None,
        }
    }

    fn counter(&self, key: &str) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    /// The sender's rate, for a run that completed without an error (the runs the
    /// figures count).
    fn rate(&self) -> Option<f64> {
        self.sender
            .as_ref()
            .filter(|_| self.error.is_none())
            .map(|s| s.rate)
    }

    /// Events the listener should have printed: one per entry created.
    fn lost(&self) -> Option<u64> {
        self.events.map(|e| self.entries.saturating_sub(e))
    }

    fn log_line(&self, rounds: u32) -> String {
        let mut line = format!("round {}/{} {}:", self.round, rounds, self.mode);
        if let Some(s) = &self.sender {
            line += &format!(
                " {} flows in {:.3} s ({:.0} flows/s), {} send errors; {} new entries; \
                 insert +{} insert_failed +{} drop +{}",
                s.flows,
                s.seconds,
                s.rate,
                s.send_errors,
                self.entries,
                self.counter("insert"),
                self.counter("insert_failed"),
                self.counter("drop"),
            );
            if let Some(first) = &s.first_error {
                line += &format!(" (first send error: {first})");
            }
        }
        if let (Some(events), Some(lost)) = (self.events, self.lost()) {
            line += &format!("; {events} events, {lost} lost");
            match self.mode {
                Mode::Ctscope => line += &format!(" ({} in lost records)", self.loss_reports_n()),
                _ => line += &format!(" ({} ENOBUFS warnings)", self.loss_reports_n()),
            }
            if let (Some(cpu), Some(reader)) = (self.cpu, self.reader_cpu) {
                line += &format!("; listener CPU {cpu:.2} s (line counting {reader:.2} s)");
            }
            if let Some((secs, runs)) = self.bpf {
                line += &format!("; BPF {secs:.3} s in {runs} program runs");
            }
        }
        if let Some(e) = &self.error {
            line += &format!("; error: {e}");
        }
        for l in &self.stderr {
            line += &format!("\n    | {l}");
        }
        line
    }

    fn loss_reports_n(&self) -> u64 {
        self.loss_reports.unwrap_or(0)
    }

    fn to_json(&self) -> Value {
        json!({
            "mode": self.mode.label(),
            "round": self.round,
            "flows": self.sender.as_ref().map(|s| s.flows),
            "sent": self.sender.as_ref().map(|s| s.sent),
            "send_errors": self.sender.as_ref().map(|s| s.send_errors),
            "seconds": self.sender.as_ref().map(|s| s.seconds),
            "rate": self.sender.as_ref().map(|s| s.rate),
            "entries": self.entries,
            "counters": self.counters,
            "events": self.events,
            "lost": self.lost(),
            "loss_reports": self.loss_reports,
            "conntrack_shown": self.shown,
            "listener_cpu_seconds": self.cpu,
            "reader_cpu_seconds": self.reader_cpu,
            "bpf_seconds": self.bpf.map(|b| b.0),
            "bpf_runs": self.bpf.map(|b| b.1),
            "error": self.error,
        })
    }
}

/// Per mode, over all rounds.
struct Summary {
    mode: Mode,
    runs: usize,
    flows: u64,
    sent: u64,
    send_errors: u64,
    /// (median, min, max) flows/s.
    rate: Option<(f64, f64, f64)>,
    slowdown_pct: Option<f64>,
    /// Sender time per flow this mode adds (median over rounds of the round's own
    /// difference to `none`): the cost in a unit that does not depend on how fast the
    /// machine makes a flow.
    added_ns: Option<f64>,
    entries: u64,
    events: Option<u64>,
    lost: Option<u64>,
    loss_reports: Option<u64>,
    /// CPU seconds the listener used, over all rounds.
    cpu: Option<f64>,
    /// BPF programs' run time (s), over all rounds (ctscope only).
    bpf: Option<f64>,
    counters: BTreeMap<String, u64>,
    errors: Vec<String>,
}

impl Summary {
    fn counter(&self, key: &str) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    fn lost_pct(&self) -> Option<f64> {
        let lost = self.lost?;
        (self.entries > 0).then(|| lost as f64 * 100.0 / self.entries as f64)
    }

    /// BPF run time per flow sent: unlike the flow rate, barely moved by other load.
    fn bpf_ns_per_flow(&self) -> Option<f64> {
        let bpf = self.bpf?;
        (self.sent > 0).then(|| bpf * 1e9 / self.sent as f64)
    }

    fn to_json(&self) -> Value {
        json!({
            "mode": self.mode.label(),
            "runs": self.runs,
            "flows": self.flows,
            "sent": self.sent,
            "send_errors": self.send_errors,
            "rate": self.rate.map(|(median, min, max)| json!({"median": median, "min": min, "max": max})),
            "slowdown_pct": self.slowdown_pct,
            "added_ns_per_flow": self.added_ns,
            "entries": self.entries,
            "events": self.events,
            "lost": self.lost,
            "lost_pct": self.lost_pct(),
            "loss_reports": self.loss_reports,
            "listener_cpu_seconds": self.cpu,
            "bpf_seconds": self.bpf,
            "bpf_ns_per_flow": self.bpf_ns_per_flow(),
            "counters": self.counters,
            "errors": self.errors,
        })
    }
}

fn summarize(opts: &Options, runs: &[Run]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for &mode in &opts.modes {
        if out.iter().any(|s| s.mode == mode) {
            continue;
        }
        let mine: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
        let done: Vec<&Run> = mine
            .iter()
            .copied()
            .filter(|r| r.rate().is_some())
            .collect();
        let senders = done.iter().filter_map(|r| r.sender.as_ref());
        let mut rates: Vec<f64> = senders.clone().map(|s| s.rate).collect();
        rates.sort_by(f64::total_cmp);
        let mut counters = BTreeMap::new();
        for r in &done {
            for (k, v) in &r.counters {
                *counters.entry(k.clone()).or_insert(0) += v;
            }
        }
        let listening = mode != Mode::None && !done.is_empty();
        let counting = listening && mode.counts_events();
        let sum = |f: fn(&Run) -> Option<u64>| {
            counting.then(|| done.iter().map(|r| f(r).unwrap_or(0)).sum())
        };
        let mut errors: Vec<String> = mine.iter().filter_map(|r| r.error.clone()).collect();
        errors.dedup();
        out.push(Summary {
            mode,
            runs: done.len(),
            flows: senders.clone().map(|s| s.flows).sum(),
            sent: senders.clone().map(|s| s.sent).sum(),
            send_errors: senders.map(|s| s.send_errors).sum(),
            rate: median_min_max(&rates),
            slowdown_pct: None,
            added_ns: None,
            entries: done.iter().map(|r| r.entries).sum(),
            events: sum(|r| r.events),
            lost: sum(Run::lost),
            loss_reports: sum(|r| r.loss_reports),
            cpu: listening.then(|| done.iter().filter_map(|r| r.cpu).sum()),
            bpf: done
                .iter()
                .filter_map(|r| r.bpf.map(|b| b.0))
                .reduce(|a, b| a + b),
            counters,
            errors,
        });
    }
    for s in out.iter_mut().filter(|s| s.mode != Mode::None) {
        let pairs = paired(runs, s.mode);
        let median_of = |f: fn(f64, f64) -> f64| {
            let mut v: Vec<f64> = pairs.iter().map(|&(rate, base)| f(rate, base)).collect();
            v.sort_by(f64::total_cmp);
            median_min_max(&v).map(|m| m.0)
        };
        s.slowdown_pct = median_of(|rate, base| (1.0 - rate / base) * 100.0);
        s.added_ns = median_of(|rate, base| (1.0 / rate - 1.0 / base) * 1e9);
    }
    out
}

/// (rate of `mode`, rate without a listener) for every round that ran both: a round's
/// runs follow each other, so the pair shares the machine's state at the time, and the
/// median over rounds drops the rounds another load on the machine disturbed.
fn paired(runs: &[Run], mode: Mode) -> Vec<(f64, f64)> {
    let base = |round: u32| {
        runs.iter()
            .find(|r| r.mode == Mode::None && r.round == round)
            .and_then(Run::rate)
    };
    runs.iter()
        .filter(|r| r.mode == mode)
        .filter_map(|r| Some((r.rate()?, base(r.round)?)))
        .filter(|&(rate, base)| rate > 0.0 && base > 0.0)
        .collect()
}

fn median_min_max(sorted: &[f64]) -> Option<(f64, f64, f64)> {
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some((median, sorted[0], sorted[n - 1]))
}

fn print_table(command: &str, opts: &Options, env: &Value, summary: &[Summary]) {
    println!("$ {command}");
    println!(
        "{} new UDP flows per run from one socket (sendmmsg, batches of {}), {} round(s), \
         modes interleaved and rotated; kernel {}, {} CPUs, load average at start {}, {}",
        opts.flows,
        opts.batch,
        opts.rounds,
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["loadavg"].as_str().unwrap_or("?"),
        env["conntrack_version"].as_str().unwrap_or("conntrack ?"),
    );
    println!();
    let header = [
        "mode",
        "flows",
        "flows/s median",
        "min",
        "max",
        "slowdown",
        "ns/flow",
        "entries",
        "events",
        "lost",
        "lost %",
        "loss reports",
        "listener CPU s",
        "BPF s",
        "BPF ns/flow",
        "insert",
        "insert_failed",
        "drop",
    ];
    let dash = || "-".to_owned();
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for s in summary {
        let rate = |i: usize| {
            s.rate
                .map_or_else(dash, |r| format!("{:.0}", [r.0, r.1, r.2][i]))
        };
        let reports = match (s.mode, s.loss_reports) {
            (_, None) => dash(),
            (Mode::Ctscope, Some(n)) => format!("{n} lost"),
            (_, Some(n)) => format!("{n} ENOBUFS"),
        };
        rows.push(vec![
            s.mode.label().to_owned(),
            s.sent.to_string(),
            rate(0),
            rate(1),
            rate(2),
            s.slowdown_pct.map_or_else(dash, |p| format!("{p:.1} %")),
            s.added_ns.map_or_else(dash, |n| format!("{n:+.0}")),
            s.entries.to_string(),
            s.events.map_or_else(dash, |n| n.to_string()),
            s.lost.map_or_else(dash, |n| n.to_string()),
            s.lost_pct().map_or_else(dash, |p| format!("{p:.2}")),
            reports,
            s.cpu.map_or_else(dash, |c| format!("{c:.2}")),
            s.bpf.map_or_else(dash, |c| format!("{c:.3}")),
            s.bpf_ns_per_flow().map_or_else(dash, |n| format!("{n:.0}")),
            s.counter("insert").to_string(),
            s.counter("insert_failed").to_string(),
            s.counter("drop").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| match i {
                0 => format!("{c:<w$}"),
                _ => format!("{c:>w$}"),
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    for s in summary {
        for e in &s.errors {
            println!("{}: {e}", s.mode);
        }
    }
    println!();
    println!(
        "flows, entries, events, lost and counters are totals over the rounds; flows/s per run \
         is the sender's own measurement. slowdown and ns/flow: medians over rounds of each \
         round's own comparison with its `none` run (1 - rate/rate without a listener; \
         1/rate - 1/rate without a listener, the sender time per flow added). entries: conntrack entries created (conntrack -C \
         delta); lost = entries - events; loss reports: the count in ctscope's `lost` records, \
         or conntrack -E's ENOBUFS warnings (each hides an unknown number of events); listener \
         CPU s: its user + system time; BPF s: run time of ctscope's BPF programs \
         (kernel.bpf_stats_enabled), in the kernel and not in listener CPU; BPF ns/flow: the \
         same per flow sent; insert, insert_failed, drop: conntrack -S deltas in \
         the client namespace."
    );
}

/// A listener attached in its own process, with threads counting its output.
struct Listener {
    mode: Mode,
    child: Child,
    events: Arc<AtomicU64>,
    stdout: Option<JoinHandle<(u64, f64)>>,
    stderr: Option<JoinHandle<Vec<String>>>,
}

struct Tally {
    events: u64,
    /// CPU seconds the listener process used (user + system), read just before SIGINT.
    cpu: Option<f64>,
    /// Run time (s) and runs of the BPF programs the listener holds (bpf_stats_enabled).
    bpf: Option<(f64, u64)>,
    /// CPU seconds of xtask's thread that counted the listener's lines.
    reader_cpu: f64,
    loss_reports: u64,
    shown: Option<u64>,
    stderr: Vec<String>,
    status: ExitStatus,
}

impl Listener {
    /// Starts the listener and waits until it is attached.
    fn start(ctx: &Ctx, mode: Mode) -> Result<Listener> {
        let _ = fs::remove_file(&ctx.ready);
        let mut command = match mode {
            Mode::Ctscope => {
                let mut c = Command::new(ctx.ctscope);
                c.args(["events", "--json", "--kind", "new", "--netns"])
                    .arg(&ctx.client.name)
                    .arg("--ready-file")
                    .arg(&ctx.ready);
                c
            }
            Mode::Hooks | Mode::Filter | Mode::Ring => {
                let mut c = Command::new(ctx.ctscope);
                c.args(["events", "--floor", mode.floor().unwrap_or("empty")])
                    .arg("--ready-file")
                    .arg(&ctx.ready);
                c
            }
            Mode::Conntrack => {
                let mut c = ctx.client.exec("conntrack");
                c.args(["-E", "-e", "NEW", "-b", CONNTRACK_RCVBUF]);
                c
            }
            Mode::None => unreachable!("no listener in mode none"),
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("$ {} &", cmd::show(&command));
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::show(&command)))?;
        let events = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let counter = events.clone();
        let mut listener = Listener {
            mode,
            child,
            events,
            stdout: Some(thread::spawn(move || count_events(mode, stdout, &counter))),
            stderr: Some(thread::spawn(move || read_lines(stderr))),
        };
        listener.wait_ready(ctx)?;
        Ok(listener)
    }

    fn wait_ready(&mut self, ctx: &Ctx) -> Result<()> {
        let start = Instant::now();
        let pid = self.child.id();
        loop {
            check_interrupt()?;
            let ready = match self.mode {
                m if m.runs_ctscope() => ctx.ready.exists(),
                _ => subscribed(pid),
            };
            if ready {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let stderr = self.stderr.take().map(join).unwrap_or_default();
                bail!(
                    "{} exited before it was attached ({}): {}",
                    self.mode,
                    cmd::describe(status),
                    stderr.join(" / ")
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("{} not attached after {READY_TIMEOUT:?}", self.mode);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `expected` events arrived, or none for [`DRAIN_IDLE`].
    fn drain(&self, expected: u64) {
        let start = Instant::now();
        let mut last = self.events.load(Ordering::Relaxed);
        let mut last_change = start;
        while start.elapsed() < DRAIN_MAX && !interrupted() {
            let now = self.events.load(Ordering::Relaxed);
            if now >= expected {
                break;
            }
            if now != last {
                (last, last_change) = (now, Instant::now());
            } else if last_change.elapsed() >= DRAIN_IDLE {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT (both print their totals and exit 0), SIGKILL if that does not work.
    fn stop(mut self) -> Result<Tally> {
        let cpu = cpu_seconds(self.child.id());
        let bpf = bpf_run_time(self.child.id());
        signal(&self.child, libc::SIGINT);
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("bench: {} ignored SIGINT; killing it", self.mode);
                self.child.kill()?;
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let (loss_reports_ctscope, reader_cpu) = self.stdout.take().map(join).unwrap_or_default();
        let stderr = self.stderr.take().map(join).unwrap_or_default();
        let enobufs = stderr.iter().filter(|l| l.contains("ENOBUFS")).count() as u64;
        let shown = stderr
            .iter()
            .find_map(|l| l.strip_suffix(" flow events have been shown."))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok());
        // conntrack -E repeats a three-line warning per ENOBUFS; keep one of each line.
        let mut kept: Vec<String> = Vec::new();
        for l in stderr {
            if !kept.contains(&l) {
                kept.push(l);
            }
        }
        Ok(Tally {
            events: self.events.load(Ordering::Relaxed),
            cpu,
            bpf,
            reader_cpu,
            loss_reports: match self.mode {
                Mode::Ctscope => loss_reports_ctscope,
                _ => enobufs,
            },
            shown,
            stderr: kept,
            status,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The line where ctscope announced tier 3 (ctnetlink only), for a BPF mode.
fn without_bpf(mode: Mode, stderr: &[String]) -> Option<&str> {
    let bpf = mode.runs_ctscope();
    let tier3 = stderr.iter().find(|l| l.starts_with("ctscope: tier 3"));
    tier3.filter(|_| bpf).map(String::as_str)
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

fn join<T: Default>(handle: JoinHandle<T>) -> T {
    handle.join().unwrap_or_default()
}

/// Counts the listener's `new` lines into `counter`; returns the events ctscope's `lost`
/// records account for and the CPU seconds this took. Cheap per line: xtask is a debug
/// build and must not compete with the sender for the CPUs more than a real consumer would.
fn count_events(mode: Mode, out: impl Read, counter: &AtomicU64) -> (u64, f64) {
    let mut reader = BufReader::with_capacity(1 << 20, out);
    let mut line = Vec::with_capacity(4096);
    let mut lost = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return (lost, thread_cpu_seconds()),
            Ok(_) => {}
        }
        match mode {
            Mode::Ctscope => {
                // `{"ts":…,"kind":"new",…}`: the kind follows the first comma.
                let rest = line
                    .iter()
                    .position(|&b| b == b',')
                    .map_or(&line[..0], |i| &line[i + 1..]);
                if rest.starts_with(br#""kind":"new""#) {
                    counter.fetch_add(1, Ordering::Relaxed);
                } else if rest.starts_with(br#""kind":"lost""#) {
                    lost += serde_json::from_slice::<Value>(&line)
                        .ok()
                        .and_then(|v| v["count"].as_u64())
                        .unwrap_or(0);
                }
            }
            _ => {
                if line.trim_ascii_start().starts_with(b"[NEW]") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// utime + stime of process `pid`, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields 14 and 15 follow its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// Total run time (s) and run count of the BPF programs process `pid` holds open, from
/// the `run_time_ns` / `run_cnt` lines of its fdinfo (present while bpf_stats_enabled).
fn bpf_run_time(pid: u32) -> Option<(f64, u64)> {
    let mut ns = 0u64;
    let mut runs = 0u64;
    let mut progs = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_tag:") {
            continue;
        }
        progs += 1;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (prog_ns, prog_runs) = (field("run_time_ns:"), field("run_cnt:"));
        if prog_runs > 0 {
            // Which program is which: its type (26 tracing = tp_btf, 17 raw_tracepoint)
            // and how often it ran tell them apart.
            eprintln!(
                "bench: BPF program type {} ran {prog_runs} times, {:.0} ns per run, {:.3} s",
                field("prog_type:"),
                prog_ns as f64 / prog_runs as f64,
                prog_ns as f64 / 1e9
            );
        }
        ns += prog_ns;
        runs += prog_runs;
    }
    // No runs counted: bpf_stats_enabled is off (see --bpf-stats).
    (progs > 0 && runs > 0).then(|| (ns as f64 / 1e9, runs))
}

/// CPU seconds (user + system) the calling thread used.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data, filled in by getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn read_lines(err: impl Read) -> Vec<String> {
    BufReader::new(err)
        .lines()
        .map_while(Result::ok)
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether process `pid` holds a NETLINK_NETFILTER socket subscribed to a multicast group
/// (conntrack -E has no ready signal): its socket inodes in /proc/PID/net/netlink.
fn subscribed(pid: u32) -> bool {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/netlink")) else {
        return false;
    };
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 10
            && f[1] == "12"
            && f[3].chars().any(|c| c != '0')
            && inodes.iter().any(|i| i == f[9])
    })
}

/// `conntrack -S` in `ns`, each counter summed over CPUs.
fn counters(ns: &Netns) -> Result<BTreeMap<String, u64>> {
    let out = cmd::output(ns.exec("conntrack").arg("-S"))?;
    let mut sums = BTreeMap::new();
    for word in out.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        if let (true, Ok(v)) = (k != "cpu", v.parse::<u64>()) {
            *sums.entry(k.to_owned()).or_insert(0) += v;
        }
    }
    Ok(sums)
}

/// `conntrack -C` in `ns`.
fn entries(ns: &Netns) -> Result<u64> {
    let out = cmd::output(ns.exec("conntrack").arg("-C"))?;
    out.trim()
        .parse()
        .with_context(|| format!("conntrack -C printed {out:?}"))
}

/// Empties the client's table, waits until the count says so, then [`SETTLE`]s.
fn flush(ns: &Netns) -> Result<()> {
    cmd::output(ns.exec("conntrack").arg("-F"))?;
    let start = Instant::now();
    loop {
        let n = entries(ns)?;
        if n == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("{n} entries left in {} after conntrack -F", ns.name);
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(SETTLE);
    Ok(())
}

fn configure(client: &Netns, server: &Netns) -> Result<()> {
    for ns in [client, server] {
        cmd::run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        // No router solicitations or MLD reports: only the flood in the table.
        cmd::run(ns.exec("sh").args([
            "-c",
            "f=/proc/sys/net/ipv6/conf; [ ! -d $f ] || { echo 1 > $f/all/disable_ipv6; \
             echo 1 > $f/default/disable_ipv6; }",
        ]))?;
    }
    let ip =
        |ns: &Netns, args: &[&str]| cmd::run(Command::new("ip").args(["-n", &ns.name]).args(args));
    ip(
        client,
        &[
            "link",
            "add",
            "bench0",
            "type",
            "veth",
            "peer",
            "name",
            "bench1",
            "netns",
            &server.name,
        ],
    )?;
    ip(
        client,
        &["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "bench0"],
    )?;
    ip(
        server,
        &["addr", "add", &format!("{SERVER_ADDR}/24"), "dev", "bench1"],
    )?;
    ip(client, &["link", "set", "bench0", "up"])?;
    ip(server, &["link", "set", "bench1", "up"])?;
    ip(client, &["route", "add", FLOW_NET, "via", SERVER_ADDR])?;
    // A `ct` expression makes the kernel register conntrack's hooks in this namespace.
    cmd::run(client.exec("nft").arg(
        "add table inet ctbench; \
         add chain inet ctbench out { type filter hook output priority filter; policy accept; }; \
         add rule inet ctbench out ct state new counter",
    ))?;
    // The server routes the flows into a blackhole: no ICMP errors come back (it forwards,
    // so the route is used rather than "host unreachable"), and the drop is not a
    // netfilter one (a deployment does not drop every flow in a ruleset).
    cmd::run(
        server
            .exec("sysctl")
            .args(["-qw", "net.ipv4.conf.all.forwarding=1"]),
    )?;
    ip(server, &["route", "add", "blackhole", FLOW_NET])?;
    Ok(())
}

/// What the table header says about the machine.
fn environment(client: &Netns) -> Result<Value> {
    let read = |p: &str| fs::read_to_string(p).map(|s| s.trim().to_owned());
    let loadavg = read("/proc/loadavg")?
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let version = cmd::output(Command::new("conntrack").arg("--version")).unwrap_or_default();
    let in_ns = |key: &str| -> Option<String> {
        let path = format!("/proc/sys/net/netfilter/{key}");
        cmd::output(client.exec("cat").arg(path))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    Ok(json!({
        "kernel": read("/proc/sys/kernel/osrelease")?,
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": loadavg,
        "conntrack_version": version.split(" (").next().unwrap_or("").trim(),
        "nf_conntrack_max": read(NF_CONNTRACK_MAX).ok(),
        "nf_conntrack_buckets": in_ns("nf_conntrack_buckets"),
        "nf_conntrack_events": in_ns("nf_conntrack_events"),
    }))
}

/// A namespace created with `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: String) -> Result<Netns> {
        cmd::run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Netns { name })
    }

    /// `ip netns exec NAME PROGRAM`.
    fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd::run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("bench: warning: {e:#}");
        }
    }
}

/// Namespaces a killed earlier run left behind (its pid no longer exists).
fn remove_stale_namespaces() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ctbench-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            drop(Netns { name });
        }
    }
}

/// Raises the global nf_conntrack_max when `flows` would not fit; restores it on drop.
fn raise_conntrack_max(flows: u64) -> Result<Option<SysctlGuard>> {
    let current: u64 = fs::read_to_string(NF_CONNTRACK_MAX)
        .with_context(|| format!("reading {NF_CONNTRACK_MAX}"))?
        .trim()
        .parse()?;
    let needed = flows + flows / 10 + 4_096;
    if current >= needed {
        return Ok(None);
    }
    SysctlGuard::set(NF_CONNTRACK_MAX, &needed.to_string())
}

struct SysctlGuard {
    path: &'static str,
    old: String,
}

impl SysctlGuard {
    /// Sets `path` to `value` unless it already is; restores the old value on drop.
    fn set(path: &'static str, value: &str) -> Result<Option<SysctlGuard>> {
        let old = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let old = old.trim().to_owned();
        if old == value {
            return Ok(None);
        }
        eprintln!("bench: {path} {old} -> {value} (restored at exit)");
        fs::write(path, value).with_context(|| format!("writing {path}"))?;
        Ok(Some(SysctlGuard { path, old }))
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        eprintln!("bench: restoring {} = {}", self.path, self.old);
        if let Err(e) = fs::write(self.path, &self.old) {
            eprintln!("bench: warning: cannot restore {}: {e}", self.path);
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let dir = env::temp_dir().join(format!("ctscope-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM end the benchmark between steps, so that the guards clean up.
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, round: u32, rate: f64) -> Run {
        let mut r = Run::new(mode, round);
        r.sender = Some(Sender {
            flows: 100,
            sent: 100,
            send_errors: 0,
            first_error: None,
            seconds: 100.0 / rate,
            rate,
        });
        r
    }

    #[test]
    fn slowdown_pairs_each_round_with_its_own_baseline() {
        // A load slowed round 2's `none` run and all of round 3. Medians of the raw rates
        // (500 without a listener, 900 with ctscope) would call ctscope 80 % faster; the
        // pairs say 10 % slower in rounds 1 and 3.
        let runs = [
            run(Mode::None, 1, 1000.0),
            run(Mode::Ctscope, 1, 900.0),
            run(Mode::None, 2, 500.0),
            run(Mode::Ctscope, 2, 900.0),
            run(Mode::None, 3, 500.0),
            run(Mode::Ctscope, 3, 450.0),
        ];
        let opts = Options {
            flows: 100,
            rounds: 3,
            batch: 64,
            modes: vec![Mode::None, Mode::Ctscope],
            json: false,
            agent: false,
            bpf_stats: false,
        };
        let summary = summarize(&opts, &runs);
        let ctscope = summary.iter().find(|s| s.mode == Mode::Ctscope).unwrap();
        let slowdown = ctscope.slowdown_pct.unwrap();
        assert!((slowdown - 10.0).abs() < 1e-9, "slowdown {slowdown}");
        // Per round: 1/900 - 1/1000, 1/900 - 1/500 and 1/450 - 1/500 s per flow.
        let added = ctscope.added_ns.unwrap();
        assert!((added - 1e9 / 9000.0).abs() < 1e-3, "added {added} ns");
    }

    #[test]
    fn a_round_without_a_baseline_or_with_an_error_is_left_out() {
        let mut failed = run(Mode::Ctscope, 1, 10.0);
        failed.error = Some("listener exited".into());
        let runs = [
            run(Mode::None, 1, 1000.0),
            failed,
            run(Mode::Ctscope, 2, 10.0),
        ];
        assert!(paired(&runs, Mode::Ctscope).is_empty());
    }
}

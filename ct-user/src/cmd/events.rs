//! `ctscope events`: attach the probes and stream decoded events until a count, a
//! duration or a signal ends it.

use std::{
    fs,
    io::{self, BufWriter, Write},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::AsyncBufReadExt as _,
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{
    agent::{self, client::Body, protocol::Request},
    caps::{self, Cap},
    cli::EventsArgs,
    event::{Clock, CtEvent, Lost, Record},
    filter::Filter,
    loader::{self, Floor, LoadError, LoadOptions, Probes, Tier},
    output::{Format, write_event, write_record},
    source::{EventSource, Output},
    tier3,
};

/// The tier asked for; `--floor` (the benchmark's) means tier 2.
fn tier(args: &EventsArgs) -> anyhow::Result<Option<Tier>> {
    let Some(floor) = args.floor else {
        return Ok(args.tier);
    };
    if args.tier.is_some_and(|t| t != Tier::Tracepoints) {
        bail!("--floor measures tier 2's steps: drop --tier or give --tier 2");
    }
    eprintln!("ctscope: benchmark floor: {}", floor_note(floor));
    Ok(Some(Tier::Tracepoints))
}

fn floor_note(floor: Floor) -> &'static str {
    match floor {
        Floor::Empty => "empty programs: the tier-2 hooks attach and report nothing",
        Floor::Filter => "new-flow reports stop after the first-seen filter (no `new` events)",
        Floor::Ring => {
            "each new flow reserves a ring record and discards it unwritten (no `new` events)"
        }
    }
}

pub async fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let filter = args.filter.resolve()?;
    let format = if args.json {
        Format::Json
    } else {
        Format::Text {
            timestamp: args.timestamp,
        }
    };
    let tier = tier(args)?;
    if tier.is_none()
        && let Some(path) = args.agent.socket()
    {
        let request = Request::Events {
            filter: filter.clone(),
            json: args.json,
            timestamp: args.timestamp,
        };
        if let Some(body) = agent::client::ask(&path, &request).await? {
            ready(args)?;
            return from_agent(args, body).await;
        }
    }
    let mut printer = Printer::new(format, filter, args.count);
    if !caps::bpf_allowed(tier)? {
        return run_tier3(args, &mut printer).await;
    }
    let opts = LoadOptions {
        ring_bytes: args.ring_size,
        tier,
        floor: args.floor,
        parsed_records: args.parsed_records,
    };
    let mut probes = match loader::load(opts) {
        Ok(p) => p,
        Err(e @ (LoadError::Tier(..) | LoadError::Btf(_))) if tier.is_none() => {
            eprintln!("ctscope: warning: no BPF tier on this kernel ({e}); falling back to tier 3");
            return run_tier3(args, &mut printer).await;
        }
        Err(_) if tier == Some(Tier::Ctnetlink) => {
            return run_tier3(args, &mut printer).await;
        }
        Err(e) => return Err(e.into()),
    };
    if tier == Some(Tier::Ctnetlink) {
        drop(probes);
        return run_tier3(args, &mut printer).await;
    }
    announce(&probes);
    warn_unverified();
    let mut source = EventSource::start(&mut probes).await?;
    ready(args)?;
    let result = stream(args, &mut source, &mut printer).await;
    let mut out = Output::default();
    source.finish(&mut out).await;
    printer.output(out);
    let _ = printer.flush();
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("reading events"),
    }
}

fn ready(args: &EventsArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.ready_file {
        fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// When `--duration` ends the stream, counted from now.
fn deadline(args: &EventsArgs) -> Option<Instant> {
    args.duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s))
}

/// The deadline of `--duration`, as a future that never ends without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn stream(
    args: &EventsArgs,
    source: &mut EventSource,
    printer: &mut Printer,
) -> io::Result<()> {
    let deadline = deadline(args);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    while !printer.done() {
        let wake = tokio::select! {
            w = source.wait() => w?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = until(deadline) => break,
        };
        let mut out = Output::default();
        source.handle(wake, &mut out).await;
        printer.output(out);
        printer.flush()?;
    }
    Ok(())
}

/// The agent's stream: its lines as they come, until --count, --duration or a signal.
async fn from_agent(args: &EventsArgs, mut body: Body) -> anyhow::Result<()> {
    let deadline = deadline(args);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut out = BufWriter::new(io::stdout());
    let mut left = args.count;
    let mut line = Vec::new();
    while left != Some(0) {
        line.clear();
        tokio::select! {
            n = body.read_until(b'\n', &mut line) => if n? == 0 {
                bail!("the agent stopped");
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = until(deadline) => break,
        }
        let written = out.write_all(&line).and_then(|()| out.flush());
        if let Err(e) = written {
            return super::ignore_broken_pipe(Err(e));
        }
        if let Some(n) = &mut left {
            *n -= 1;
        }
    }
    super::ignore_broken_pipe(out.flush())
}

/// Destroy reasons the BPF tiers infer are checked against ctnetlink counters, in each
/// namespace; where ctscope cannot read them the events say `"unverified": true`.
fn warn_unverified() {
    let why = "cannot be checked against conntrack's counters (events say \"unverified\")";
    if !caps::warn_without(Cap::NetAdmin, &format!("destroy reasons {why}")) {
        caps::warn_without(
            Cap::SysAdmin,
            &format!("destroy reasons in other network namespaces {why}"),
        );
    }
}

/// Tier 3: ctnetlink events of one namespace, overruns reported as `lost`.
async fn run_tier3(args: &EventsArgs, printer: &mut Printer) -> anyhow::Result<()> {
    let (mut listener, inode) = tier3::subscribe(args.filter.netns.as_deref())?;
    eprintln!(
        "ctscope: tier 3 (ctnetlink events, netns {inode}): {}",
        Tier::Ctnetlink.sees()
    );
    ready(args)?;
    let clock = Clock::new(ct_btf::kernel_hz().unwrap_or(0));
    let deadline = deadline(args);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    while !printer.done() {
        tokio::select! {
            ev = listener.next() => match ev? {
                ct_netlink::Event::Conntrack { kind, entry } => {
                    if kind != ct_netlink::EventKind::Update {
                        printer.event(tier3::to_event(kind, &entry, inode, &clock));
                    }
                }
                ct_netlink::Event::Overrun { .. } => printer.losses(vec![Record::Lost(Lost {
                    ts: clock.now_unix(),
                    kind: "lost",
                    lost_kind: "ctnetlink_overrun",
                    count: 1,
                })]),
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = until(deadline) => break,
        }
        if let Err(e) = printer.flush() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing events");
        }
    }
    Ok(())
}

/// Filters, counts and writes records; keeps the first write error.
struct Printer {
    out: BufWriter<io::Stdout>,
    format: Format,
    filter: Filter,
    remaining: Option<u64>,
    error: Option<io::Error>,
}

impl Printer {
    fn new(format: Format, filter: Filter, count: Option<u64>) -> Self {
        Self {
            out: BufWriter::new(io::stdout()),
            format,
            filter,
            remaining: count,
            error: None,
        }
    }

    fn done(&self) -> bool {
        self.remaining == Some(0) || self.error.is_some()
    }

    /// Events first, then the losses they came with.
    fn output(&mut self, out: Output) {
        out.events.into_iter().for_each(|ev| self.event(ev));
        self.losses(out.lost);
    }

    fn event(&mut self, ev: CtEvent) {
        if self.done() || !self.filter.matches(&ev) {
            return;
        }
        if self.error.is_none()
            && let Err(e) = write_event(&mut self.out, self.format, &ev)
        {
            self.error = Some(e);
        }
        if let Some(n) = &mut self.remaining {
            *n -= 1;
        }
    }

    fn losses(&mut self, records: Vec<Record>) {
        for r in records {
            self.write(&r);
        }
    }

    fn write(&mut self, record: &Record) {
        if self.error.is_none()
            && let Err(e) = write_record(&mut self.out, self.format, record)
        {
            self.error = Some(e);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()
    }
}

/// Says on stderr which tier runs when it is not the best one, and which hooks failed.
pub fn announce(probes: &Probes) {
    for h in probes.hooks.iter().filter(|h| !h.available) {
        log::info!(
            "hook {} not attached: {}",
            h.name,
            h.reason.as_deref().unwrap_or("?")
        );
    }
    if probes.tier != Tier::Kprobes {
        eprintln!(
            "ctscope: tier {} ({}). It sees: {}. Run `ctscope probe` for details.",
            probes.tier.number(),
            probes.tier_reason,
            probes.tier.sees()
        );
    }
    if probes.tier == Tier::Tracepoints && probes.layout.ct_raw_bytes == ct_common::ABSENT {
        eprintln!(
            "ctscope: tier 2 reads entry fields one by one (--parsed-records, or this \
             kernel's struct nf_conn does not fit a raw record): more BPF time per event"
        );
    }
}

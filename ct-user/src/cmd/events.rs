//! `ctscope events`: open the event source of the tier (the probes, or ctnetlink at tier
//! 3) and stream its events until a count, a duration or a signal ends it.

use std::{io::Write as _, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::AsyncBufReadExt as _,
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{
    agent::{self, client::Body, protocol::Request},
    bpf::{
        code,
        loader::{self, Floor, LoadError, LoadOptions, Probes, Tier},
    },
    cli::EventsArgs,
    event::{CtEvent, Record},
    pipeline::filter::Filter,
    pipeline::source::{EventSource, Output},
    render::events::{Format, write_event, write_record},
    sys::caps::{self, Cap},
    sys::{netns::Tags, stdout},
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
            watching(&format!("through the agent at {}", path.display()));
            return from_agent(args, body).await;
        }
    }
    let mut printer = Printer::new(format, filter, args.count);
    let mut source = open(args, tier).await?;
    ready(args)?;
    watching(&source_label(&source));
    let result = stream(args, &mut source, &mut printer).await;
    let mut out = Output::default();
    source.finish(&mut out).await;
    printer.output(out);
    let flushed = printer.flush();
    result.and(flushed)
}

/// The source of the tier asked for, or the best. Forced tier 3 is "no BPF", and
/// without CAP_BPF/CAP_PERFMON nothing else runs: then nothing is loaded or attached.
async fn open(args: &EventsArgs, tier: Option<Tier>) -> anyhow::Result<EventSource> {
    if !loader::bpf_allowed(tier)? {
        return tier3(args);
    }
    let opts = LoadOptions {
        ring_bytes: args.ring_size,
        tier,
        floor: args.floor,
        parsed_records: args.parsed_records,
    };
    let probes = match loader::load(opts) {
        Ok(p) => p,
        Err(e @ (LoadError::Tier(..) | LoadError::Btf(_))) if tier.is_none() => {
            log::info!("no BPF tier: {e}");
            if let Some(msg) = Tier::Ctnetlink.unseen_kinds(&args.filter.kind) {
                bail!("{msg}, and tier 3 is all this kernel offers (`ctscope probe` says why)");
            }
            eprintln!(
                "ctscope: warning: no BPF tier on this kernel, falling back to tier 3 \
                 (`ctscope probe` says why)"
            );
            return tier3(args);
        }
        Err(e) => return Err(e.into()),
    };
    announce(&probes);
    warn_unverified();
    Ok(EventSource::start(probes).await?)
}

/// Tier 3: ctnetlink events of one namespace, overruns reported as `lost`.
fn tier3(args: &EventsArgs) -> anyhow::Result<EventSource> {
    let source = EventSource::ctnetlink(args.filter.netns.as_deref())?;
    log::info!("tier 3 sees {}", Tier::Ctnetlink.sees());
    Ok(source)
}

/// `tier 1: kprobes`; tier 3 names the namespace it watches.
fn source_label(source: &EventSource) -> String {
    let tier = source.tier();
    let label = format!("tier {}: {}", tier.number(), source.hooks_label());
    match source.netns() {
        Some(inode) => format!("{label}, netns {inode}"),
        None => label,
    }
}

/// The one line that says events are being seen from now on (as pwru's "Listening for
/// events.."): events before it were not.
fn watching(what: &str) {
    eprintln!("ctscope: watching ({what}), Ctrl-C to stop");
}

fn ready(args: &EventsArgs) -> anyhow::Result<()> {
    super::create_ready_file(args.ready_file.as_deref())
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
) -> anyhow::Result<()> {
    let deadline = deadline(args);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    while !printer.done() {
        let wake = tokio::select! {
            w = source.wait() => w.context("reading events")?,
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
    let mut out = stdout::writer();
    let mut left = args.count;
    let mut line = Vec::new();
    // The agent knows namespaces by inode: who is in them is added here.
    let mut tags = args.json.then(Tags::default);
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
        if let Some(tags) = &mut tags {
            line = tags
                .add_to_line(&line)
                .with_context(|| format!("the agent sent {:?}", String::from_utf8_lossy(&line)))?;
        }
        stdout::check(out.write_all(&line).and_then(|()| out.flush()))?;
        if let Some(n) = &mut left {
            *n -= 1;
        }
    }
    stdout::check(out.flush())
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

/// Filters, counts and writes records; keeps the first write error.
struct Printer {
    out: stdout::Writer,
    format: Format,
    filter: Filter,
    remaining: Option<u64>,
    error: Option<std::io::Error>,
    /// JSON: who is in each event's namespace, read once per namespace.
    tags: Tags,
}

impl Printer {
    fn new(format: Format, filter: Filter, count: Option<u64>) -> Self {
        Self {
            out: stdout::writer(),
            format,
            filter,
            remaining: count,
            error: None,
            tags: Tags::default(),
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
        let written = match self.format {
            Format::Json => self.write_json(&ev),
            text => write_event(&mut self.out, text, &ev),
        };
        if self.error.is_none()
            && let Err(e) = written
        {
            self.error = Some(e);
        }
        if let Some(n) = &mut self.remaining {
            *n -= 1;
        }
    }

    /// The event's object, then who is in its namespace.
    fn write_json(&mut self, ev: &CtEvent) -> std::io::Result<()> {
        let mut object = serde_json::to_vec(ev)?;
        self.tags.add_to_object(&mut object, ev.netns);
        object.push(b'\n');
        self.out.write_all(&object)
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

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(stdout::error(e));
        }
        stdout::check(self.out.flush())
    }
}

/// Logs (at --log-level info) which tier runs, why, what it sees and which hooks
/// failed; `ctscope probe` shows the same. Only what costs the user something is said
/// on stderr by default.
pub fn announce(probes: &Probes) {
    for h in probes.hooks.iter().filter(|h| !h.available) {
        log::info!(
            "hook {} not attached: {}",
            h.name,
            h.reason.as_deref().unwrap_or("?")
        );
    }
    log::info!(
        "tier {} ({}); it sees {}",
        probes.tier.number(),
        probes.tier_reason,
        probes.tier.sees()
    );
    // Only 5.10-class kernels need code addresses, and without them drops or destroys
    // go unseen: say so where the user looks, not only in `probe`.
    for note in probes.notes.iter().filter(|n| n.contains(code::HIDDEN)) {
        if !caps::warn_without(Cap::Syslog, note) {
            eprintln!("ctscope: warning: {note}");
        }
    }
    if probes.tier == Tier::Tracepoints && probes.layout.ct_raw_bytes == ct_common::ABSENT {
        eprintln!(
            "ctscope: tier 2 reads entry fields one by one (--parsed-records, or this \
             kernel's struct nf_conn does not fit a raw record): more BPF time per event"
        );
    }
}

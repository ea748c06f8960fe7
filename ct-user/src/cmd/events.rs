//! `ctscope events`: attach the probes and stream decoded events until a count, a
//! duration or a signal ends it.

use std::{
    fs,
    io::{self, BufWriter, Write},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, interval, sleep_until},
};

use crate::{
    cli::EventsArgs,
    event::{Clock, CtEvent, Lost, Record},
    filter::Filter,
    live::LiveEntries,
    loader::{self, LoadError, Probes, Tier},
    output::{Format, write_event, write_record},
    reader::EventReader,
    settle::Settler,
    tier3,
};

/// How often loss counters are checked when no event wakes the reader.
const LOSS_POLL: Duration = Duration::from_millis(200);

/// The BPF side wakes the reader only for a backlog; below that the reader polls.
const RING_POLL: Duration = Duration::from_millis(10);

/// How long tier-2 candidates wait before they are settled against the counters.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

pub async fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let filter = args.filter.resolve();
    if args.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
        bail!("--duration must be a positive number of seconds");
    }
    let format = if args.json {
        Format::Json
    } else {
        Format::Text {
            timestamp: args.timestamp,
        }
    };
    let mut printer = Printer::new(format, filter, args.count);
    let mut probes = match loader::load(args.ring_size, args.tier) {
        Ok(p) => p,
        Err(e @ (LoadError::Tier(..) | LoadError::Btf(_))) if args.tier.is_none() => {
            eprintln!("ctscope: warning: no BPF tier on this kernel ({e}); falling back to tier 3");
            return run_tier3(args, &mut printer).await;
        }
        Err(_) if args.tier == Some(Tier::Ctnetlink) => {
            return run_tier3(args, &mut printer).await;
        }
        Err(e) => return Err(e.into()),
    };
    if args.tier == Some(Tier::Ctnetlink) {
        drop(probes);
        return run_tier3(args, &mut printer).await;
    }
    announce(&probes);
    let clock = Clock::new(probes.layout.hz);
    let mut reader = EventReader::new(&mut probes, clock)?;
    let mut tier2 = match probes.tier {
        Tier::Tracepoints => Some(Tier2::start(&mut probes).await),
        _ => None,
    };
    ready(args)?;
    let result = stream(args, &mut reader, tier2.as_mut(), &mut printer).await;
    printer.finish(&mut reader, tier2.as_mut()).await;
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

/// Tier 2's userspace half: repeated `new`s dropped, candidates settled.
struct Tier2 {
    live: LiveEntries,
    settler: Settler,
}

impl Tier2 {
    async fn start(probes: &mut Probes) -> Self {
        let settler = Settler::new().await;
        if let Err(e) = loader::mark_conntrack_netns(probes, &settler.with_entries) {
            log::warn!("seeding the namespaces with conntrack: {e}");
        }
        Tier2 {
            live: LiveEntries::default(),
            settler,
        }
    }
}

async fn stream(
    args: &EventsArgs,
    reader: &mut EventReader,
    mut tier2: Option<&mut Tier2>,
    printer: &mut Printer,
) -> io::Result<()> {
    let deadline = deadline(args);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut losses = interval(LOSS_POLL);
    let mut settle = interval(SETTLE_EVERY);
    let mut poll = interval(RING_POLL);
    let mut batch = Vec::new();
    while !printer.done() {
        tokio::select! {
            r = reader.read(&mut batch) => r?,
            _ = poll.tick() => reader.drain_now(&mut batch),
            _ = losses.tick() => {
                let lost = reader.new_losses();
                if let Some(t) = tier2.as_deref_mut().filter(|_| !lost.is_empty()) {
                    t.live.reset();
                }
                printer.losses(lost);
            }
            _ = settle.tick() => {
                if let Some(t) = tier2.as_deref_mut().filter(|t| t.settler.has_pending()) {
                    t.settler.settle().await.into_iter().for_each(|ev| printer.event(ev));
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = until(deadline) => break,
        }
        for ev in batch.drain(..) {
            printer.route(ev, tier2.as_deref_mut());
        }
        printer.flush()?;
    }
    Ok(())
}

/// Tier 3: ctnetlink events of one namespace, overruns reported as `lost`.
async fn run_tier3(args: &EventsArgs, printer: &mut Printer) -> anyhow::Result<()> {
    let (mut listener, inode) = tier3::subscribe(printer.filter.netns)?;
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

    /// Tier 2: drops repeated `new`s and holds candidates for settling. Prints the rest.
    fn route(&mut self, ev: CtEvent, tier2: Option<&mut Tier2>) {
        let Some(t) = tier2 else {
            return self.event(ev);
        };
        if !t.live.admit(&ev) {
            return;
        }
        if Settler::needs(&ev) {
            t.settler.push(ev);
        } else {
            self.event(ev);
        }
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

    /// Drains what is left, settles it and reports losses so nothing seen is dropped at exit.
    async fn finish(&mut self, reader: &mut EventReader, mut tier2: Option<&mut Tier2>) {
        let mut batch = Vec::new();
        reader.drain_now(&mut batch);
        for ev in batch {
            self.route(ev, tier2.as_deref_mut());
        }
        if let Some(t) = tier2 {
            t.settler
                .settle()
                .await
                .into_iter()
                .for_each(|ev| self.event(ev));
            let d = t.settler.discarded;
            log::info!(
                "tier 2: {} repeated `new` reports dropped; candidates the kernel did not \
                 count: {} drops (rules), {} unconfirmed frees (not clash losers)",
                t.live.repeats,
                d.drops_by_rules,
                d.unconfirmed_frees
            );
        }
        self.losses(reader.new_losses());
        let _ = self.out.flush();
    }
}

/// Says on stderr which tier runs when it is not the best one, and which hooks failed.
fn announce(probes: &Probes) {
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
}

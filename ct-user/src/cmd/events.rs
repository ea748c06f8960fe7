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
    event::{Clock, Record},
    filter::Filter,
    loader::{self, Probes},
    output::{Format, write_record},
    reader::EventReader,
};

/// How often loss counters are checked when no event wakes the reader.
const LOSS_POLL: Duration = Duration::from_millis(200);

pub async fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let filter = args.filter.resolve();
    if args.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
        bail!("--duration must be a positive number of seconds");
    }
    let mut probes = loader::load(args.ring_size)?;
    warn_about_hooks(&probes);
    let clock = Clock::new(probes.layout.hz);
    let mut reader = EventReader::new(&mut probes, clock)?;
    if let Some(path) = &args.ready_file {
        fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let format = if args.json {
        Format::Json
    } else {
        Format::Text {
            timestamp: args.timestamp,
        }
    };
    let mut printer = Printer::new(format, filter, args.count);
    let result = stream(args, &mut reader, &mut printer).await;
    printer.finish(&mut reader);
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("reading events"),
    }
}

async fn stream(
    args: &EventsArgs,
    reader: &mut EventReader,
    printer: &mut Printer,
) -> io::Result<()> {
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut losses = interval(LOSS_POLL);
    let mut batch = Vec::new();
    while !printer.done() {
        let until = async {
            match deadline {
                Some(d) => sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = reader.read(&mut batch) => r?,
            _ = losses.tick() => printer.losses(reader.new_losses()),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = until => break,
        }
        batch.drain(..).for_each(|ev| printer.event(ev));
        printer.flush()?;
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

    fn event(&mut self, ev: crate::event::CtEvent) {
        if self.done() || !self.filter.matches(&ev) {
            return;
        }
        self.write(&Record::Conntrack(Box::new(ev)));
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

    /// Drains what is left and reports losses so nothing seen is dropped at exit.
    fn finish(&mut self, reader: &mut EventReader) {
        let mut batch = Vec::new();
        reader.drain_now(&mut batch);
        batch.into_iter().for_each(|ev| self.event(ev));
        self.losses(reader.new_losses());
        let _ = self.out.flush();
    }
}

fn warn_about_hooks(probes: &Probes) {
    let missing: Vec<_> = probes.hooks.iter().filter(|h| !h.available).collect();
    for h in &missing {
        log::info!(
            "hook {} not attached: {}",
            h.name,
            h.reason.as_deref().unwrap_or("?")
        );
    }
    if !probes.attached("confirm_exit") {
        eprintln!(
            "ctscope: warning: tier-1 hooks are not attached on this kernel ({}); only \
             counters are available. Run `ctscope probe` for details.",
            missing
                .iter()
                .find(|h| h.kind != crate::hooks::HookKind::TpBtf)
                .and_then(|h| h.reason.as_deref())
                .unwrap_or("unknown reason")
        );
    } else if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|h| h.name).collect();
        eprintln!(
            "ctscope: warning: {} hook(s) not attached ({}); run `ctscope probe` for reasons",
            missing.len(),
            names.join(", ")
        );
    }
}

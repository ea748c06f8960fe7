//! `--agent`: the footprint of `ctscope watch` holding one flood's entries: resident
//! memory per 100k entries and CPU per 10k events/s.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cmd;

use super::agent;
use super::host::{check_interrupt, entries, flush};
use super::listener::signal;
use super::procfs::{cpu_seconds, rss_bytes};
use super::{Ctx, DRAIN_MAX, READY_TIMEOUT};

/// The agent's footprint: resident memory (outside BPF maps) grown per 100k entries in its table, and its
/// CPU time per event expressed as the share of one CPU 10k events/s would take. Dumps
/// are off (`--resync 0`) so the figure is the event path's; the seed is done before.
pub(super) fn agent_footprint(ctx: &Ctx, dir: &Path) -> Result<Value> {
    flush(ctx.conntrack_ns)?;
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
    let entries_before = entries(ctx.conntrack_ns);
    let sender = ctx.send(ctx.opts.flows, false)?;
    let created = entries(ctx.conntrack_ns).saturating_sub(entries_before);
    let mut last = Value::Null;
    let waited = Instant::now();
    while waited.elapsed() < DRAIN_MAX {
        last = agent::status(&socket).unwrap_or(Value::Null);
        if agent::new_events(&last) >= created {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let (rss1, cpu1) = (rss_bytes(pid), cpu_seconds(pid));
    signal(&child, libc::SIGTERM);
    let _ = child.wait();
    let events = agent::new_events(&last);
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

pub(super) fn print_agent(a: &Value) {
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

//! What the benchmark prints: the table of results, and the environment it ran in.

use std::{fs, process::Command, thread};

use anyhow::Result;
use serde_json::{Value, json};

use crate::cmd;

use super::stats::Summary;
use super::{Mode, NF_CONNTRACK_MAX, Options};
use ctscope_tests::netns::Netns;

pub(super) fn print_table(command: &str, opts: &Options, env: &Value, summary: &[Summary]) {
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

/// What the table header says about the machine.
pub(super) fn environment(client: &Netns) -> Result<Value> {
    let read = |p: &str| fs::read_to_string(p).map(|s| s.trim().to_owned());
    let loadavg = read("/proc/loadavg")?
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let version = cmd::output(Command::new("conntrack").arg("--version")).unwrap_or_default();
    let in_ns = |key: &str| -> Option<String> {
        let path = format!("/proc/sys/net/netfilter/{key}");
        cmd::output(client.command("cat").arg(path))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    Ok(json!({
        "kernel": read("/proc/sys/kernel/osrelease")?,
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": loadavg,
        "conntrack_version": version.split(" (").next().unwrap_or("").trim(),
        "nf_conntrack_max": ctscope_tests::kernel::read_global(NF_CONNTRACK_MAX),
        "nf_conntrack_buckets": in_ns("nf_conntrack_buckets"),
        "nf_conntrack_events": in_ns("nf_conntrack_events"),
    }))
}

//! What the benchmark prints: the table of results, and the environment it ran in.

use std::{fs, process::Command, thread};

use anyhow::Result;
use serde_json::{Value, json};

use crate::cmd;

use super::stats::Summary;
use super::{Mode, NF_CONNTRACK_MAX, Options};
use ctscope_tests::netns::Netns;

pub(super) fn print_table(
    command: &str,
    opts: &Options,
    workload: &str,
    env: &Value,
    summary: &[Summary],
) {
    let unit = opts.workload.unit();
    println!("$ {command}");
    println!(
        "{workload}; {} round(s), modes interleaved and rotated; kernel {}, {} CPUs, load \
         average at start {}, {}",
        opts.rounds,
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["loadavg"].as_str().unwrap_or("?"),
        env["conntrack_version"].as_str().unwrap_or("conntrack ?"),
    );
    println!();
    let header = [
        unit,
        &format!("{unit}/s median"),
        "min",
        "max",
        "slowdown",
        "spread",
        "ns/flow",
        "entries",
        "events",
        "lost",
        "lost %",
        "loss reports",
        "listener CPU s",
        "CPU ns/flow",
        "BPF s",
        "BPF ns/flow",
        "insert_failed",
        "drop",
    ];
    let dash = || "-".to_owned();
    let mut rows = vec![
        std::iter::once("mode")
            .chain(header)
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    ];
    for s in summary {
        let rate = |i: usize| {
            s.rate
                .map_or_else(dash, |r| format!("{:.0}", [r.0, r.1, r.2][i]))
        };
        let reports = match (s.mode, s.loss_reports) {
            (_, None) => dash(),
            (Mode::Ctscope | Mode::Watch, Some(n)) => format!("{n} lost"),
            (_, Some(n)) => format!("{n} ENOBUFS"),
        };
        rows.push(vec![
            s.mode.label().to_owned(),
            s.sent.to_string(),
            rate(0),
            rate(1),
            rate(2),
            s.slowdown_pct
                .map_or_else(dash, |p| format!("{:.1} %", p.0)),
            s.slowdown_pct
                .map_or_else(dash, |p| format!("{:.1}..{:.1}", p.1, p.2)),
            s.added_ns.map_or_else(dash, |n| format!("{n:+.0}")),
            s.entries.to_string(),
            s.events.map_or_else(dash, |n| n.to_string()),
            s.lost.map_or_else(dash, |n| n.to_string()),
            s.lost_pct().map_or_else(dash, |p| format!("{p:.2}")),
            reports,
            s.cpu.map_or_else(dash, |c| format!("{c:.2}")),
            s.cpu_ns_per_flow().map_or_else(dash, |n| format!("{n:.0}")),
            s.bpf.map_or_else(dash, |c| format!("{c:.3}")),
            s.bpf_ns_per_flow().map_or_else(dash, |n| format!("{n:.0}")),
            s.counter("insert_failed").to_string(),
            s.counter("drop").to_string(),
        ]);
    }
    print_rows(&rows);
    for s in summary {
        for e in &s.errors {
            println!("{}: {e}", s.mode);
        }
    }
    println!();
    println!(
        "{unit}, entries, events, lost and counters are totals over the rounds; {unit}/s per \
         run is the client's own measurement. slowdown and ns/flow: medians over rounds of \
         each round's own comparison with its `none` run (1 - rate/rate without a listener; \
         1/rate - 1/rate without a listener, the client's time per {unit} added); spread: \
         the lowest and highest slowdown of a round. entries: conntrack entries created \
         (new flows: the flood's conntrack -C delta; http and dns count them with nft just \
         before conntrack confirms them); lost = entries - events; loss reports: the count \
         in ctscope's `lost` records (the agent's status for `watch`), or conntrack -E's \
         ENOBUFS warnings (each hides an unknown number of events); listener CPU s: its \
         user + system time from attached to stopped; CPU ns/flow: the same per entry; BPF \
         s: run time of ctscope's BPF programs (kernel.bpf_stats_enabled, every namespace's \
         packets included), in the kernel and not in listener CPU; BPF ns/flow: the same \
         per entry; insert_failed, drop: conntrack -S deltas in the namespace conntrack \
         runs in. `ctscope watch`'s events are the agent's `new` count, all namespaces."
    );
    if opts.per_program {
        print_programs(summary);
    }
}

/// Per ctscope mode, each BPF program's share (`--per-program`).
fn print_programs(summary: &[Summary]) {
    let mut rows = vec![
        [
            "mode", "program", "runs", "run s", "ns/run", "ns/flow", "share %",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for s in summary {
        let total: u64 = s.bpf_programs.iter().map(|p| p.run_ns).sum();
        for p in s.bpf_programs.iter().filter(|p| p.runs > 0) {
            rows.push(vec![
                s.mode.label().to_owned(),
                p.name.clone(),
                p.runs.to_string(),
                format!("{:.3}", p.run_ns as f64 / 1e9),
                format!("{:.0}", p.run_ns as f64 / p.runs as f64),
                match s.entries {
                    0 => "-".to_owned(),
                    n => format!("{:.0}", p.run_ns as f64 / n as f64),
                },
                format!("{:.1}", p.run_ns as f64 * 100.0 / total.max(1) as f64),
            ]);
        }
    }
    println!();
    if rows.len() == 1 {
        println!("BPF programs: no run times (give --bpf-stats)");
        return;
    }
    println!("BPF programs (run time over all rounds; ns/flow: per entry created):");
    print_rows(&rows);
}

/// Columns padded to their widest cell; the first left-aligned, the others right.
fn print_rows(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
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

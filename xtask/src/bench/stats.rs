//! The figures: one [`Run`] per mode and round, and per mode the [`Summary`] of its runs,
//! each run paired with the same round's no-listener baseline.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::procfs::BpfProg;
use super::{Mode, Options, Sender};

pub(super) struct Run {
    pub(super) mode: Mode,
    pub(super) round: u32,
    /// None when the listener could not start (`error` says why).
    pub(super) sender: Option<Sender>,
    /// Conntrack entries the run created (see `Bed::created`): its new flows.
    pub(super) entries: u64,
    /// Deltas of `conntrack -S`, summed over CPUs.
    pub(super) counters: BTreeMap<String, u64>,
    /// `new` events the listener printed.
    pub(super) events: Option<u64>,
    /// ctscope: the `count` of its `lost` records; conntrack -E: its ENOBUFS warnings.
    pub(super) loss_reports: Option<u64>,
    /// `watch`: reseeds, dumps and the backlog peak (`agent::upkeep`).
    pub(super) upkeep: Option<serde_json::Value>,
    /// conntrack -E: "N flow events have been shown." at exit.
    pub(super) shown: Option<u64>,
    /// CPU seconds of the listener and of xtask's thread counting its lines.
    pub(super) cpu: Option<f64>,
    pub(super) reader_cpu: Option<f64>,
    /// The listener's BPF programs and their run times (ctscope modes, --bpf-stats).
    pub(super) bpf: Vec<BpfProg>,
    pub(super) stderr: Vec<String>,
    pub(super) error: Option<String>,
}

impl Run {
    pub(super) fn new(mode: Mode, round: u32) -> Self {
        Run {
            mode,
            round,
            sender: None,
            entries: 0,
            counters: BTreeMap::new(),
            events: None,
            loss_reports: None,
            upkeep: None,
            shown: None,
            cpu: None,
            reader_cpu: None,
            bpf: Vec::new(),
            stderr: Vec::new(),
            error: None,
        }
    }

    pub(super) fn counter(&self, key: &str) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    /// Run time (s) and runs of all its BPF programs, if they were accounted.
    pub(super) fn bpf_total(&self) -> Option<(f64, u64)> {
        (!self.bpf.is_empty()).then(|| {
            let ns: u64 = self.bpf.iter().map(|p| p.run_ns).sum();
            (ns as f64 / 1e9, self.bpf.iter().map(|p| p.runs).sum())
        })
    }

    /// The sender's rate, for a run that completed without an error (the runs the
    /// figures count).
    pub(super) fn rate(&self) -> Option<f64> {
        self.sender
            .as_ref()
            .filter(|_| self.error.is_none())
            .map(|s| s.rate)
    }

    /// Events the listener should have printed: one per entry created.
    pub(super) fn lost(&self) -> Option<u64> {
        self.events.map(|e| self.entries.saturating_sub(e))
    }

    pub(super) fn log_line(&self, rounds: u32, unit: &str) -> String {
        let mut line = format!("round {}/{} {}:", self.round, rounds, self.mode);
        if let Some(s) = &self.sender {
            line += &format!(
                " {} {unit} in {:.3} s ({:.0} {unit}/s), {} errors; {} new entries; \
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
                Mode::Ctscope | Mode::Watch => {
                    line += &format!(" ({} in lost records)", self.loss_reports_n())
                }
                _ => line += &format!(" ({} ENOBUFS warnings)", self.loss_reports_n()),
            }
            if let Some(u) = &self.upkeep {
                line += &format!(
                    "; agent: {} reseeds, {} dumps, backlog peak {}",
                    u["reseeds"], u["dumps"], u["backlog_peak"]
                );
            }
            if let (Some(cpu), Some(reader)) = (self.cpu, self.reader_cpu) {
                line += &format!("; listener CPU {cpu:.2} s (line counting {reader:.2} s)");
            }
            if let Some((secs, runs)) = self.bpf_total() {
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

    pub(super) fn loss_reports_n(&self) -> u64 {
        self.loss_reports.unwrap_or(0)
    }

    pub(super) fn to_json(&self) -> Value {
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
            "agent_upkeep": self.upkeep,
            "conntrack_shown": self.shown,
            "listener_cpu_seconds": self.cpu,
            "reader_cpu_seconds": self.reader_cpu,
            "bpf_seconds": self.bpf_total().map(|b| b.0),
            "bpf_runs": self.bpf_total().map(|b| b.1),
            "bpf_programs": programs_json(&self.bpf, self.entries),
            "error": self.error,
        })
    }
}

/// Per mode, over all rounds.
pub(super) struct Summary {
    pub(super) mode: Mode,
    pub(super) runs: usize,
    pub(super) flows: u64,
    pub(super) sent: u64,
    pub(super) send_errors: u64,
    /// (median, min, max) flows/s.
    pub(super) rate: Option<(f64, f64, f64)>,
    /// (median, min, max) over rounds of each round's own slowdown against `none`.
    pub(super) slowdown_pct: Option<(f64, f64, f64)>,
    /// Sender time per flow this mode adds (median over rounds of the round's own
    /// difference to `none`): the cost in a unit that does not depend on how fast the
    /// machine makes a flow.
    pub(super) added_ns: Option<f64>,
    pub(super) entries: u64,
    pub(super) events: Option<u64>,
    pub(super) lost: Option<u64>,
    pub(super) loss_reports: Option<u64>,
    /// CPU seconds the listener used, over all rounds.
    pub(super) cpu: Option<f64>,
    /// BPF programs' run time (s), over all rounds (ctscope only).
    pub(super) bpf: Option<f64>,
    /// Per program (by name), over all rounds.
    pub(super) bpf_programs: Vec<BpfProg>,
    pub(super) counters: BTreeMap<String, u64>,
    pub(super) errors: Vec<String>,
}

impl Summary {
    pub(super) fn counter(&self, key: &str) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    pub(super) fn lost_pct(&self) -> Option<f64> {
        let lost = self.lost?;
        (self.entries > 0).then(|| lost as f64 * 100.0 / self.entries as f64)
    }

    /// Nanoseconds per new flow (entry created) of `seconds` over all rounds.
    fn per_flow(&self, seconds: Option<f64>) -> Option<f64> {
        let s = seconds?;
        (self.entries > 0).then(|| s * 1e9 / self.entries as f64)
    }

    /// BPF run time per new flow: unlike the flow rate, barely moved by other load.
    pub(super) fn bpf_ns_per_flow(&self) -> Option<f64> {
        self.per_flow(self.bpf)
    }

    /// The listener's own CPU time (user + system) per new flow.
    pub(super) fn cpu_ns_per_flow(&self) -> Option<f64> {
        self.per_flow(self.cpu)
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "mode": self.mode.label(),
            "runs": self.runs,
            "flows": self.flows,
            "sent": self.sent,
            "send_errors": self.send_errors,
            "rate": self.rate.map(|(median, min, max)| json!({"median": median, "min": min, "max": max})),
            "slowdown_pct": self.slowdown_pct.map(|(median, min, max)| json!({"median": median, "min": min, "max": max})),
            "added_ns_per_flow": self.added_ns,
            "entries": self.entries,
            "events": self.events,
            "lost": self.lost,
            "lost_pct": self.lost_pct(),
            "loss_reports": self.loss_reports,
            "listener_cpu_seconds": self.cpu,
            "bpf_seconds": self.bpf,
            "bpf_ns_per_flow": self.bpf_ns_per_flow(),
            "listener_cpu_ns_per_flow": self.cpu_ns_per_flow(),
            "bpf_programs": programs_json(&self.bpf_programs, self.entries),
            "counters": self.counters,
            "errors": self.errors,
        })
    }
}

pub(super) fn summarize(opts: &Options, runs: &[Run]) -> Vec<Summary> {
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
                .filter_map(|r| r.bpf_total().map(|b| b.0))
                .reduce(|a, b| a + b),
            bpf_programs: by_program(done.iter().flat_map(|r| &r.bpf)),
            counters,
            errors,
        });
    }
    for s in out.iter_mut().filter(|s| s.mode != Mode::None) {
        let pairs = paired(runs, s.mode);
        let spread = |f: fn(f64, f64) -> f64| {
            let mut v: Vec<f64> = pairs.iter().map(|&(rate, base)| f(rate, base)).collect();
            v.sort_by(f64::total_cmp);
            median_min_max(&v)
        };
        s.slowdown_pct = spread(|rate, base| (1.0 - rate / base) * 100.0);
        s.added_ns = spread(|rate, base| (1.0 / rate - 1.0 / base) * 1e9).map(|m| m.0);
    }
    out
}

/// Programs of the same name (one per hook, loaded again each run) summed.
fn by_program<'a>(progs: impl Iterator<Item = &'a BpfProg>) -> Vec<BpfProg> {
    let mut out: Vec<BpfProg> = Vec::new();
    for p in progs {
        match out.iter_mut().find(|o| o.name == p.name) {
            Some(o) => (o.run_ns, o.runs) = (o.run_ns + p.run_ns, o.runs + p.runs),
            None => out.push(p.clone()),
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.run_ns));
    out
}

/// Each program's run time, runs, and nanoseconds per run and per new flow.
fn programs_json(progs: &[BpfProg], flows: u64) -> Value {
    progs
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "run_ns": p.run_ns,
                "runs": p.runs,
                "ns_per_run": (p.runs > 0).then(|| p.run_ns as f64 / p.runs as f64),
                "ns_per_flow": (flows > 0).then(|| p.run_ns as f64 / flows as f64),
            })
        })
        .collect()
}

/// (rate of `mode`, rate without a listener) for every round that ran both: a round's
/// runs follow each other, so the pair shares the machine's state at the time, and the
/// median over rounds drops the rounds another load on the machine disturbed.
pub(super) fn paired(runs: &[Run], mode: Mode) -> Vec<(f64, f64)> {
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

pub(super) fn median_min_max(sorted: &[f64]) -> Option<(f64, f64, f64)> {
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Some((median, sorted[0], sorted[n - 1]))
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
            workload: super::super::Workload::Flood,
            duration: 10,
            per_program: false,
            flows: 100,
            rounds: 3,
            batch: 64,
            modes: vec![Mode::None, Mode::Ctscope],
            json: false,
            agent: false,
            bpf_stats: false,
            scale: None,
        };
        let summary = summarize(&opts, &runs);
        let ctscope = summary.iter().find(|s| s.mode == Mode::Ctscope).unwrap();
        let slowdown = ctscope.slowdown_pct.unwrap().0;
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

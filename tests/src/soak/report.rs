//! What a soak measured and its verdict: one row per checkpoint, the episodes, the load's
//! counts, and the failures (divergence, leaks, uncounted losses, episodes that did not
//! happen). Printed as a table, or as JSON.

use serde_json::{Value, json};

/// Checkpoints before the leak baseline is taken, at least (and at least half of the
/// run): two bursts, a restart and a full table have run by then. The kept agent's memory
/// after a burst's loss storm (reseeds, dumps of 40 000 entries, events held behind them)
/// is a high-water mark the allocator keeps: in a 12-minute run it went 31, 68, 83, 90,
/// 94 MiB over the first 9 bursts, then back to 90 MiB for the last 5.
pub const WARMUP: usize = 4;
/// How much the kept agent's resident memory may grow over its warm-up maximum.
pub const RSS_SLACK_KIB: u64 = 16 * 1024;
/// How many more open file descriptors than at warm-up the kept agent may hold (a
/// resync's dump may be under way during a checkpoint).
pub const FD_SLACK: usize = 4;

/// One agent at a checkpoint.
#[derive(Clone, Debug)]
pub struct AgentPoint {
    pub name: &'static str,
    pub pid: u32,
    /// Rows it holds for the soak's namespaces.
    pub entries: u64,
    pub rss_kib: u64,
    pub fds: usize,
    /// `watch --status` totals since it started: events lost, reseeds.
    pub lost: u64,
    pub reseeds: u64,
}

#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Seconds since the soak started, when the load paused.
    pub at: f64,
    /// Seconds until every agent equalled the kernel (or the settle limit).
    pub settle: f64,
    pub namespaces: usize,
    /// Entries in the kernel's tables of the soak's namespaces.
    pub kernel: u64,
    pub agents: Vec<AgentPoint>,
    /// Namespaces (per agent) whose table still differed after settling, plus deleted
    /// namespaces an agent still knew.
    pub mismatches: usize,
    /// The episode of the phase before.
    pub episode: String,
}

#[derive(Clone, Debug)]
pub struct Episode {
    pub at: f64,
    pub kind: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub seconds: f64,
    /// The kept agent's tier.
    pub tier: Option<u64>,
    pub checkpoints: Vec<Checkpoint>,
    pub episodes: Vec<Episode>,
    pub counts: Vec<(&'static str, u64)>,
    /// Events the kept agent (small ring) counted lost in bursts: the overflow happened.
    pub burst_losses: u64,
    pub failures: Vec<String>,
}

impl Report {
    pub fn fail(&mut self, why: impl Into<String>) {
        let why = why.into();
        eprintln!("soak: FAIL: {why}");
        self.failures.push(why);
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Adds the verdicts that need the whole run: leaks, and whether every episode
    /// happened and did what it is for.
    pub fn finish(&mut self) {
        for c in self.checkpoints.clone() {
            if c.mismatches > 0 {
                self.fail(format!(
                    "checkpoint at {:.0} s: {} differences after {:.1} s",
                    c.at, c.mismatches, c.settle
                ));
            }
        }
        self.check_flat("kept");
        for kind in ["restart SIGKILL", "table full", "burst"] {
            if !self.episodes.iter().any(|e| e.kind == kind && e.ok) {
                self.fail(format!("no successful `{kind}` episode: run longer"));
            }
        }
        if self.burst_losses == 0 {
            self.fail("no burst overflowed the kept agent's small ring: loss accounting untested");
        }
    }

    /// The agent's memory and descriptors after warm-up (the first half of the run, at
    /// least [`WARMUP`] checkpoints) stay within the slack of their warm-up maximum.
    fn check_flat(&mut self, name: &str) {
        let points: Vec<AgentPoint> = self
            .checkpoints
            .iter()
            .filter_map(|c| c.agents.iter().find(|a| a.name == name).cloned())
            .collect();
        if points.len() <= WARMUP {
            self.fail(format!(
                "{} checkpoints: leak checks need more than {WARMUP}; run longer",
                points.len()
            ));
            return;
        }
        let (warm, after) = points.split_at(WARMUP.max(points.len() / 2));
        let rss_base = warm.iter().map(|a| a.rss_kib).max().unwrap_or(0);
        let fds_base = warm.iter().map(|a| a.fds).max().unwrap_or(0);
        let rss_max = after.iter().map(|a| a.rss_kib).max().unwrap_or(0);
        let fds_max = after.iter().map(|a| a.fds).max().unwrap_or(0);
        if rss_max > rss_base + RSS_SLACK_KIB {
            self.fail(format!(
                "{name} agent's VmRSS grew from {rss_base} KiB (warm-up, {} checkpoints) to \
                 {rss_max} KiB, more than {RSS_SLACK_KIB} KiB",
                warm.len()
            ));
        }
        if fds_max > fds_base + FD_SLACK {
            self.fail(format!(
                "{name} agent's open fds grew from {fds_base} (warm-up) to {fds_max}"
            ));
        }
    }

    /// The table of checkpoints, the episodes and the verdict, for a terminal.
    pub fn print(&self) {
        let names: Vec<&str> = self
            .checkpoints
            .first()
            .map(|c| c.agents.iter().map(|a| a.name).collect())
            .unwrap_or_default();
        let tier = self.tier.map_or("?".into(), |t| t.to_string());
        println!(
            "\nsoak: {:.0} s at tier {tier}; per agent ({}):",
            self.seconds,
            names.join("/")
        );
        println!(
            "{:>5} {:>7} {:>4} {:>6} {:>13} {:>4} {:>13} {:>9} {:>13} {:>9}  episode before",
            "t s",
            "settle",
            "ns",
            "kernel",
            "agent rows",
            "diff",
            "RSS MiB",
            "fds",
            "lost",
            "reseeds"
        );
        for c in &self.checkpoints {
            let each = |f: &dyn Fn(&AgentPoint) -> String| {
                c.agents.iter().map(f).collect::<Vec<_>>().join("/")
            };
            println!(
                "{:>5.0} {:>7.1} {:>4} {:>6} {:>13} {:>4} {:>13} {:>9} {:>13} {:>9}  {}",
                c.at,
                c.settle,
                c.namespaces,
                c.kernel,
                each(&|a| a.entries.to_string()),
                c.mismatches,
                each(&|a| format!("{:.1}", a.rss_kib as f64 / 1024.0)),
                each(&|a| a.fds.to_string()),
                each(&|a| a.lost.to_string()),
                each(&|a| a.reseeds.to_string()),
                c.episode
            );
        }
        println!("\nepisodes:");
        for e in &self.episodes {
            let mark = if e.ok { "ok" } else { "FAILED" };
            println!("{:>5.0} s  {:<16} {mark:<6} {}", e.at, e.kind, e.detail);
        }
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("\nload: {}", counts.join(" "));
        if self.passed() {
            println!("soak: passed");
        } else {
            println!("soak: FAILED ({}):", self.failures.len());
            for f in &self.failures {
                println!("  - {f}");
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let agent = |a: &AgentPoint| {
            json!({
                "name": a.name, "pid": a.pid, "entries": a.entries, "rss_kib": a.rss_kib,
                "fds": a.fds, "lost": a.lost, "reseeds": a.reseeds,
            })
        };
        let checkpoints: Vec<Value> = self
            .checkpoints
            .iter()
            .map(|c| {
                json!({
                    "at": c.at, "settle": c.settle, "namespaces": c.namespaces,
                    "kernel_entries": c.kernel, "mismatches": c.mismatches,
                    "episode": c.episode,
                    "agents": c.agents.iter().map(agent).collect::<Vec<_>>(),
                })
            })
            .collect();
        let episodes: Vec<Value> = self
            .episodes
            .iter()
            .map(|e| json!({"at": e.at, "kind": e.kind, "ok": e.ok, "detail": e.detail}))
            .collect();
        let counts: serde_json::Map<String, Value> = self
            .counts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        json!({
            "seconds": self.seconds,
            "tier": self.tier,
            "passed": self.passed(),
            "failures": self.failures,
            "tolerance": {
                "min_warmup_checkpoints": WARMUP, "rss_slack_kib": RSS_SLACK_KIB,
                "fd_slack": FD_SLACK,
            },
            "burst_losses": self.burst_losses,
            "checkpoints": checkpoints,
            "episodes": episodes,
            "load": counts,
        })
    }
}

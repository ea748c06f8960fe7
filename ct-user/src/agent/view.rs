//! The live view of `ctscope watch`: table fill per namespace against nf_conntrack_max,
//! event rates, and the latest insert_failed, table_full, early_drop and lost records.
//! On a terminal it redraws in place; otherwise it prints one summary line per tick.

use std::{collections::BTreeMap, fmt::Write as _, fs, io::Write as _, time::Instant};

use super::state::Agent;
use crate::output::{Format, write_record};

/// The kinds whose rates the view shows, in order.
const RATES: [&str; 6] = [
    "new",
    "destroy",
    "insert_failed",
    "table_full",
    "early_drop",
    "clash_resolved",
];

pub struct View {
    last: Instant,
    last_counts: BTreeMap<&'static str, u64>,
    last_lost: u64,
}

impl Default for View {
    fn default() -> Self {
        Self::new()
    }
}

impl View {
    pub fn new() -> Self {
        View {
            last: Instant::now(),
            last_counts: BTreeMap::new(),
            last_lost: 0,
        }
    }

    pub fn draw(&mut self, agent: &Agent, terminal: bool) {
        let frame = if terminal {
            format!("\x1b[H\x1b[2J{}", self.frame(agent))
        } else {
            format!("{}\n", self.summary(agent))
        };
        let mut out = std::io::stdout();
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
    }

    /// Per-second rates since the last call, by kind (and `lost`).
    fn rates(&mut self, agent: &Agent) -> Vec<(&'static str, f64)> {
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        let mut out = Vec::new();
        for kind in RATES {
            let now = agent.totals.events.get(kind).copied().unwrap_or(0);
            let before = self.last_counts.insert(kind, now).unwrap_or(0);
            out.push((kind, (now - before) as f64 / secs));
        }
        let lost = agent.totals.lost - std::mem::replace(&mut self.last_lost, agent.totals.lost);
        out.push(("lost", lost as f64 / secs));
        out
    }

    fn summary(&mut self, agent: &Agent) -> String {
        let rates = self.rates(agent);
        let mut s = format!("tier {} entries={}", agent.tier, agent.table.len());
        for (k, r) in rates {
            let _ = write!(s, " {k}/s={r:.0}");
        }
        s
    }

    fn frame(&mut self, agent: &Agent) -> String {
        let max = sysctl("nf_conntrack_max");
        let mut s = format!(
            "ctscope watch  tier {}: {}\n\n",
            agent.tier, agent.tier_sees
        );
        let _ = writeln!(
            s,
            "{:>12}  {:>9}  {:>9}  {:>6}",
            "netns", "entries", "max", "fill"
        );
        let mut namespaces = agent.namespaces();
        namespaces.sort_unstable();
        for n in namespaces {
            let count = agent.table.count(n);
            let fill = max.map_or("-".into(), |m| {
                format!("{:.1}%", 100.0 * count as f64 / m.max(1) as f64)
            });
            let max = max.map_or("-".into(), |m| m.to_string());
            let _ = writeln!(s, "{n:>12}  {count:>9}  {max:>9}  {fill:>6}");
        }
        s.push_str("\nper second:");
        for (k, r) in self.rates(agent) {
            let _ = write!(s, "  {k} {r:.0}");
        }
        let t = &agent.totals;
        let _ = writeln!(
            s,
            "\nlost {} (reseeds {}), dumps {} (corrected: +{} -{})\n\nlatest:",
            t.lost, t.reseeds, t.dumps, t.merged.added, t.merged.removed
        );
        for r in &agent.recent {
            let mut line = Vec::new();
            let _ = write_record(&mut line, Format::Text { timestamp: true }, r);
            s.push_str(&String::from_utf8_lossy(&line));
        }
        s
    }
}

/// A conntrack sysctl of the agent's namespace.
fn sysctl(name: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

//! Statistics as `ctscope stats` writes them: `conntrack -S` lines, the table size, and
//! with an agent what its events explained; or one JSON object per namespace.

use std::collections::BTreeMap;

use ct_netlink::{CpuStats, GlobalStats};
use serde::Serialize;

use crate::{
    attribution::AgentStats,
    sys::netns::{Netns, Tag},
};

/// One namespace's statistics, as `--json` prints them.
#[derive(Serialize)]
pub struct NsStats {
    #[serde(flatten)]
    tag: Option<Tag>,
    cpus: Vec<CpuStats>,
    /// Every counter summed over the CPUs.
    totals: BTreeMap<&'static str, u64>,
    entries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_entries: Option<u32>,
    /// With an agent: the counters since it started watching, beside its attribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<AgentStats>,
}

impl NsStats {
    pub fn new(cpus: Vec<CpuStats>, global: GlobalStats, tag: Option<&Netns>) -> Self {
        let totals = CpuStats::totals(&cpus);
        NsStats {
            tag: tag.map(Netns::tag),
            cpus,
            totals,
            entries: global.entries,
            max_entries: global.max_entries,
            agent: None,
        }
    }

    pub fn with_agent(self, agent: AgentStats) -> Self {
        NsStats {
            agent: Some(agent),
            ..self
        }
    }

    /// `conntrack -S` lines (`cpu=%-4u\t` then `name=value` pairs, without conntrack's
    /// trailing space), then `entries=N max_entries=M`; each with ` netns=INODE`
    /// appended under --all-netns.
    pub fn text(&self) -> String {
        let tag = self
            .tag
            .as_ref()
            .map(|t| format!(" netns={}", t.netns))
            .unwrap_or_default();
        let mut s = String::new();
        for cpu in &self.cpus {
            let pairs: Vec<String> = cpu
                .fields()
                .into_iter()
                .map(|(name, v)| format!("{name}={v}"))
                .collect();
            s.push_str(&format!("cpu={:<4}\t{}{tag}\n", cpu.cpu, pairs.join(" ")));
        }
        let mut global = format!("entries={}", self.entries);
        if let Some(max) = self.max_entries {
            global.push_str(&format!(" max_entries={max}"));
        }
        s.push_str(&format!("{global}{tag}\n"));
        if let Some(a) = &self.agent {
            s.push_str(&attribution_text(a, &tag));
        }
        s
    }
}

/// Per counter: the kernel's increments while the agent watched, what events explained
/// (by cause), and the remainder.
fn attribution_text(a: &AgentStats, tag: &str) -> String {
    let causes = |m: &BTreeMap<&str, u64>| -> String {
        m.iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let u = &a.unexplained;
    let at = &a.attributed;
    let mut rows = vec![
        (
            "insert_failed",
            a.kernel.insert_failed,
            causes(&at.insert_failed),
            u.insert_failed,
        ),
        (
            "drop",
            a.kernel.drop,
            format!("table_full={}", at.table_full),
            u.drop,
        ),
        (
            "early_drop",
            a.kernel.early_drop,
            format!("early_drop={}", at.early_drop),
            u.early_drop,
        ),
    ];
    if let (Some(k), Some(u)) = (a.kernel.clash_resolve, u.clash_resolve) {
        rows.push(("clash_resolve", k, causes(&at.clash_resolved), u));
    }
    let mut s = format!(
        "agent: watching since {:.0}, {} entries in its table{tag}\n",
        a.watched_since, a.table_entries
    );
    for (name, kernel, explained, left) in rows {
        s.push_str(&format!(
            "{name}={kernel} attributed=[{explained}] unexplained={left}{tag}\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_conntrack_s_then_size() {
        let cpu = |n, found| CpuStats {
            cpu: n,
            found: Some(found),
            insert_failed: Some(1),
            ..CpuStats::default()
        };
        let global = GlobalStats {
            entries: 3,
            max_entries: Some(100),
        };
        let s = NsStats::new(vec![cpu(0, 2), cpu(1, 5)], global, None);
        assert_eq!(
            s.text(),
            "cpu=0   \tfound=2 insert_failed=1\ncpu=1   \tfound=5 insert_failed=1\n\
             entries=3 max_entries=100\n"
        );
        assert_eq!(s.totals["found"], 7);
        let ns = Netns {
            inode: 9,
            names: Vec::new(),
            current: false,
            member: None,
            path: "/proc/1/ns/net".into(),
        };
        let tagged = NsStats::new(vec![cpu(0, 2)], global, Some(&ns));
        assert_eq!(
            tagged.text(),
            "cpu=0   \tfound=2 insert_failed=1 netns=9\nentries=3 max_entries=100 netns=9\n"
        );
        assert!(
            !s.text()
                .lines()
                .chain(tagged.text().lines())
                .any(|l| l.ends_with(' ')),
            "no trailing spaces"
        );
    }
}

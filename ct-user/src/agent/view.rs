//! What the live view of `ctscope watch` shows, gathered from the agent: table fill per
//! namespace against nf_conntrack_max (and who lives there), event rates, losses and
//! dumps, and the latest insert_failed, table_full, early_drop and lost records.
//! [`super::tui`] draws it on a terminal; elsewhere [`Snapshot::summary`] is one line per
//! tick.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::mpsc,
    time::Instant,
};

use ct_common::EventKind;

use super::state::Agent;
use crate::{
    event::RecordKind,
    render::events::{Format, write_record},
    sys::netns::{self, Netns},
};

/// The kinds whose rates the view shows, in order.
const RATES: [EventKind; 6] = [
    EventKind::New,
    EventKind::Destroy,
    EventKind::InsertFailed,
    EventKind::TableFull,
    EventKind::EarlyDrop,
    EventKind::ClashResolved,
];

/// One namespace's line.
pub struct NsLine {
    pub netns: u32,
    /// Who lives there, in a few words ([`who`]); empty until known.
    pub who: String,
    pub entries: usize,
    /// entries / nf_conntrack_max, when the limit is known.
    pub fill: Option<f64>,
}

/// Everything one frame shows.
pub struct Snapshot {
    pub tier: u8,
    pub sees: &'static str,
    pub entries: usize,
    pub max: Option<u64>,
    pub namespaces: Vec<NsLine>,
    /// Per second since the previous snapshot, by kind, then `lost`.
    pub rates: Vec<(&'static str, f64)>,
    pub lost: u64,
    pub reseeds: u64,
    pub dumps: u64,
    pub corrected: (u64, u64),
    /// Text lines of the latest notable records, oldest first.
    pub recent: Vec<String>,
}

impl Snapshot {
    /// The non-terminal view: one line.
    pub fn summary(&self) -> String {
        let mut s = format!("tier {} entries={}", self.tier, self.entries);
        for (k, r) in &self.rates {
            s.push_str(&format!(" {k}/s={r:.0}"));
        }
        s
    }
}

/// Keeps the previous counts, so each snapshot has rates, and who lives in each
/// namespace.
pub struct View {
    last: Instant,
    last_counts: BTreeMap<&'static str, u64>,
    who: Whos,
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
            who: Whos::default(),
        }
    }

    pub fn snapshot(&mut self, agent: &Agent) -> Snapshot {
        let max = crate::sys::sysctl::own("nf_conntrack_max");
        let counts = agent.table.counts();
        let known = agent.namespaces();
        self.who.look_up(&known);
        let mut namespaces: Vec<NsLine> = known
            .into_iter()
            .map(|netns| {
                let entries = counts.get(&netns).copied().unwrap_or(0);
                NsLine {
                    netns,
                    who: self.who.get(netns),
                    entries,
                    fill: max.filter(|&m| m > 0).map(|m| entries as f64 / m as f64),
                }
            })
            .collect();
        namespaces.sort_by_key(|n| n.netns);
        let t = &agent.totals;
        Snapshot {
            tier: agent.tier,
            sees: agent.tier_sees,
            entries: agent.table.len(),
            max,
            namespaces,
            rates: self.rates(agent),
            lost: t.lost,
            reseeds: t.reseeds,
            dumps: t.dumps,
            corrected: (t.merged.added, t.merged.removed),
            recent: agent.recent.iter().map(record_text).collect(),
        }
    }

    fn rates(&mut self, agent: &Agent) -> Vec<(&'static str, f64)> {
        let secs = self.last.elapsed().as_secs_f64().max(1e-3);
        self.last = Instant::now();
        let mut counts: Vec<(&'static str, u64)> = RATES
            .iter()
            .map(|k| {
                (
                    k.name(),
                    agent.totals.events.get(k.name()).copied().unwrap_or(0),
                )
            })
            .collect();
        counts.push((RecordKind::Lost.name(), agent.totals.lost));
        counts
            .into_iter()
            .map(|(k, now)| {
                let before = self.last_counts.insert(k, now).unwrap_or(0);
                (k, now.saturating_sub(before) as f64 / secs)
            })
            .collect()
    }
}

/// Who lives in each namespace, looked up on a thread of its own: reading cgroups and
/// asking the container runtime must not hold up the agent's loop, which draws the view.
struct Whos {
    known: HashMap<u32, String>,
    asked: HashSet<u32>,
    tx: mpsc::Sender<(u32, String)>,
    rx: mpsc::Receiver<(u32, String)>,
}

impl Default for Whos {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Whos {
            known: HashMap::new(),
            asked: HashSet::new(),
            tx,
            rx,
        }
    }
}

impl Whos {
    /// Takes the answers that came, and asks about namespaces not asked about yet.
    fn look_up(&mut self, namespaces: &[u32]) {
        self.known.extend(self.rx.try_iter());
        let new: Vec<u32> = namespaces
            .iter()
            .copied()
            .filter(|n| self.asked.insert(*n))
            .collect();
        if new.is_empty() {
            return;
        }
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let listed = netns::list();
            for inode in new {
                let label = listed
                    .iter()
                    .find(|n| n.inode == inode)
                    .map_or_else(String::new, who);
                if tx.send((inode, label)).is_err() {
                    return;
                }
            }
        });
    }

    fn get(&self, netns: u32) -> String {
        self.known.get(&netns).cloned().unwrap_or_default()
    }
}

/// A namespace in a few words: its pod (`namespace/name`, or the UID), else its name
/// under /run/netns, `host`, or its container (runtime and a short id).
pub fn who(ns: &Netns) -> String {
    let w = ns.workload();
    if let (Some(space), Some(name)) = (&w.pod_namespace, &w.pod_name) {
        return format!("{space}/{name}");
    }
    if let Some(name) = ns.names.iter().min() {
        return name.clone();
    }
    if w.host {
        return "host".into();
    }
    if let Some(uid) = &w.pod_uid {
        return format!("pod {uid}");
    }
    w.container
        .map(|c| format!("{:?} {}", c.runtime, &c.id[..c.id.len().min(12)]).to_lowercase())
        .unwrap_or_default()
}

fn record_text(r: &crate::event::Record) -> String {
    let mut line = Vec::new();
    let _ = write_record(&mut line, Format::Text { timestamp: true }, r);
    String::from_utf8_lossy(&line).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn ns(names: &[&str]) -> Netns {
        Netns {
            inode: 1,
            names: names.iter().map(|n| n.to_string()).collect(),
            current: false,
            member: None,
            path: PathBuf::new(),
        }
    }

    #[test]
    fn a_namespace_is_named_by_its_first_name() {
        assert_eq!(who(&ns(&["web", "blue"])), "blue");
        assert_eq!(who(&ns(&[])), "", "nothing known");
    }
}

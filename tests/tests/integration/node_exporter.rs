//! Side by side with Debian's `prometheus-node-exporter` (its conntrack collector alone,
//! on a loopback port of its own) in the root namespace: where both serve a value, they
//! agree. node_exporter reads /proc/sys and /proc/net/stat/nf_conntrack, ctscope reads
//! ctnetlink: the same kernel counters by two roads. A few entries inserted with
//! `conntrack -I` (10.200.77.0/24, deleted after) make the entry count non-zero.

use std::{collections::BTreeMap, net::SocketAddr, process::Child, time::Duration};

use ctscope_tests::{
    agent::Agent,
    cmd,
    prometheus::{self, free_port},
    wait,
};

use crate::common::note;

/// node_exporter's name and ctscope's, for the root namespace: the gauges, then the
/// per-CPU counters summed. node_exporter's `stat_ignore` has no twin: ctnetlink does not
/// report it, and kernels since 5.10 no longer count it (procfs prints 0).
const PAIRS: &[(&str, &str)] = &[
    ("node_nf_conntrack_entries", "ctscope_conntrack_entries"),
    (
        "node_nf_conntrack_entries_limit",
        "ctscope_conntrack_entries_limit",
    ),
    ("node_nf_conntrack_stat_found", "ctscope_kernel_found_total"),
    (
        "node_nf_conntrack_stat_invalid",
        "ctscope_kernel_invalid_total",
    ),
    (
        "node_nf_conntrack_stat_insert",
        "ctscope_kernel_insert_total",
    ),
    (
        "node_nf_conntrack_stat_insert_failed",
        "ctscope_kernel_insert_failed_total",
    ),
    ("node_nf_conntrack_stat_drop", "ctscope_kernel_drop_total"),
    (
        "node_nf_conntrack_stat_early_drop",
        "ctscope_kernel_early_drop_total",
    ),
    (
        "node_nf_conntrack_stat_search_restart",
        "ctscope_kernel_search_restart_total",
    ),
];

/// Entries inserted into the root namespace's table.
const ENTRIES: u16 = 5;

/// Why node_exporter cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    (!cmd::on_path(BINARY)).then(|| {
        format!(
            "no {BINARY} on PATH (Debian's package of that name; `cargo xtask setup` installs it)"
        )
    })
}

const BINARY: &str = "prometheus-node-exporter";

pub fn side_by_side() {
    let _entries = RootEntries::insert();
    let exporter = NodeExporter::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Tier 3: the kernel counters are read over ctnetlink whatever the tier.
    let agent = Agent::start(&["--tier", "3", "--metrics", &addr.to_string()]);

    // Counters that move between two reads are read again: accepted when node_exporter
    // gave the same values before and after ctscope's.
    let mut last = Vec::new();
    let agreed = wait::poll(Duration::from_secs(20), Duration::from_millis(250), || {
        let before = exporter.scrape();
        let ours = root_series(&scrape(addr));
        let after = exporter.scrape();
        last = PAIRS
            .iter()
            .map(|(theirs, mine)| {
                let still = before
                    .get(*theirs)
                    .filter(|v| after.get(*theirs) == Some(*v));
                (*theirs, still.copied(), ours.get(*mine).copied())
            })
            .collect();
        last.iter()
            .all(|(_, theirs, mine)| theirs.is_some() && theirs == mine)
            .then_some(())
    });
    assert!(
        agreed.is_some(),
        "node_exporter vs ctscope (root namespace), (name, theirs when steady, ours): {last:#?}"
    );
    note(format!("node_exporter side by side: {last:?}"));
    let entries = last[0].1.unwrap_or_default();
    assert!(
        entries >= f64::from(ENTRIES),
        "the {ENTRIES} inserted entries are counted: {entries}"
    );
    agent.stop();
}

/// `GET /metrics`, as (series, value) lines.
fn scrape(addr: SocketAddr) -> Vec<(String, f64)> {
    let r =
        prometheus::get(addr, "/metrics", None).unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// ctscope's series of the root namespace (`host="true"`) and its global ones, by name.
fn root_series(lines: &[(String, f64)]) -> BTreeMap<String, f64> {
    lines
        .iter()
        .filter_map(|(series, v)| match series.split_once('{') {
            None => Some((series.clone(), *v)),
            Some((name, labels)) => labels
                .contains("host=\"true\"")
                .then(|| (name.to_owned(), *v)),
        })
        .collect()
}

/// `prometheus-node-exporter` with only its conntrack collector, killed on drop.
struct NodeExporter {
    child: Child,
    addr: SocketAddr,
}

impl NodeExporter {
    fn start() -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = std::process::Command::new(BINARY)
            .args([
                "--collector.disable-defaults",
                "--collector.conntrack",
                &format!("--web.listen-address={addr}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BINARY}: {e}"));
        let mut n = NodeExporter { child, addr };
        let up = wait::poll(Duration::from_secs(10), Duration::from_millis(100), || {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("{BINARY} exited: {status}");
            }
            prometheus::get(n.addr, "/metrics", None)
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(up.is_some(), "{BINARY} did not answer on {addr}");
        n
    }

    /// Its series without labels, by name.
    fn scrape(&self) -> BTreeMap<String, f64> {
        scrape(self.addr)
            .into_iter()
            .filter(|(s, _)| !s.contains('{'))
            .collect()
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Entries inserted with `conntrack -I` into the root namespace, deleted on drop.
struct RootEntries;

impl RootEntries {
    fn insert() -> Self {
        for port in 0..ENTRIES {
            let args = Self::args("-I", port);
            cmd::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        RootEntries
    }

    fn args(op: &str, port: u16) -> Vec<String> {
        let sport = (41000 + port).to_string();
        [
            "conntrack",
            op,
            "-p",
            "udp",
            "-s",
            "10.200.77.1",
            "-d",
            "10.200.77.2",
            "--sport",
            &sport,
            "--dport",
            "53",
        ]
        .into_iter()
        .map(String::from)
        .chain(
            op.eq("-I")
                .then(|| ["-t".into(), "600".into()])
                .into_iter()
                .flatten(),
        )
        .collect()
    }
}

impl Drop for RootEntries {
    fn drop(&mut self) {
        for port in 0..ENTRIES {
            let args = Self::args("-D", port);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = cmd::output(&argv, None);
        }
    }
}

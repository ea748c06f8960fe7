//! What `ctscope watch --metrics` serves: the agent's counts (a [`Snapshot`] its loop
//! copies when asked) beside each namespace's kernel counters (read over ctnetlink at
//! scrape time, so they work where `/proc/net/stat/nf_conntrack` does not exist), encoded
//! by prometheus-client as Prometheus text 0.0.4 or OpenMetrics. README "Metrics" lists
//! the series; [`super::http`] serves them.
//!
//! Cardinality stays bounded: a series is global, per namespace, or per name of a closed
//! set (causes, reasons, protocols, states, kernel counters) — never per flow, address or
//! port. A namespace the agent forgot (it vanished) is not in the snapshot, so its series
//! go with it; the flows it saw end stay in the lifetime histogram, which has no
//! namespace label and must never go down.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::Arc,
};

use ct_netlink::{Conntrack, CpuStats};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::counts::Counts;
use crate::{
    attribution::{Attributed, Kernel, unexplained},
    lifetimes::Lifetimes,
    sys::{
        netns::{self, Netns},
        workload::{Container, Runtime},
    },
};

/// Every name starts with it.
const PREFIX: &str = "ctscope";

/// Lifetime buckets: `le` 1, 2, 4 ... 2^19 s (6 days, past conntrack's longest default
/// timeout of 5 days), then +Inf. Fixed, so every series has the same `le` set.
const LIFETIME_BUCKETS: usize = 20;

/// Insert-failure causes served as 0 before the first one, so `rate()` sees the first
/// increment: those an alert has a remedy for.
const INSERT_FAILED_CAUSES: [ct_common::Cause; 4] = [
    ct_common::Cause::NatPortClash,
    ct_common::Cause::SameFlowRace,
    ct_common::Cause::Dying,
    ct_common::Cause::ChainTooLong,
];

/// The ways a clash is resolved, likewise served as 0 from the start.
const CLASH_CAUSES: [ct_common::Cause; 2] = [
    ct_common::Cause::Merged,
    ct_common::Cause::NatClashReplyOnly,
];

/// The labels every series of one namespace carries: its inode and who lives there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NsLabels {
    /// The namespace's inode, as `ctscope --netns` and the JSON outputs give it.
    pub netns: u32,
    pub workload: Arc<WorkloadLabels>,
}

/// Who lives in a namespace, as labels. A label without a value is left out (Prometheus
/// reads a missing label as empty), so a plain namespace carries `netns` alone. Read once
/// per namespace ([`Workloads`]): a series' labels never change while it lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkloadLabels {
    /// Its first name under /run/netns (`ip netns`), in sort order.
    pub netns_name: Option<String>,
    /// The kernel's initial namespace: `host="true"`.
    pub host: bool,
    /// As Kubernetes writes a container's id (`containerd://ID`, `cri-o://ID`,
    /// `docker://ID`, `podman://ID`; the bare id when the runtime is unknown), so it
    /// joins kube-state-metrics' `kube_pod_container_info{container_id}`.
    pub container_id: Option<String>,
    /// The Kubernetes pod's UID (kube-state-metrics' `uid`).
    pub pod_uid: Option<String>,
    /// The pod's name and Kubernetes namespace, from the container runtime. Not `pod`
    /// and `namespace`: Prometheus' Kubernetes discovery gives the agent's own pod those.
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

impl WorkloadLabels {
    /// Reads the cgroup of a process inside `ns`.
    pub fn of(ns: &Netns) -> Self {
        let w = ns.workload();
        WorkloadLabels {
            netns_name: ns.names.iter().min().cloned(),
            host: w.host,
            container_id: w.container.as_ref().map(container_id),
            pod_uid: w.pod_uid,
            pod_name: w.pod_name,
            pod_namespace: w.pod_namespace,
        }
    }
}

/// `RUNTIME://ID`, as the kubelet reports `containerID`.
fn container_id(c: &Container) -> String {
    let scheme = match c.runtime {
        Runtime::Containerd => "containerd",
        Runtime::Crio => "cri-o",
        Runtime::Docker => "docker",
        Runtime::Podman => "podman",
        Runtime::Unknown => return c.id.clone(),
    };
    format!("{scheme}://{}", c.id)
}

impl EncodeLabelSet for NsLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        let w = &*self.workload;
        let netns = self.netns.to_string();
        let labels = [
            ("netns", Some(netns.as_str())),
            ("netns_name", w.netns_name.as_deref()),
            ("host", w.host.then_some("true")),
            ("container_id", w.container_id.as_deref()),
            ("pod_uid", w.pod_uid.as_deref()),
            ("pod_name", w.pod_name.as_deref()),
            ("pod_namespace", w.pod_namespace.as_deref()),
        ];
        let present: Vec<(&str, &str)> = labels
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        present.encode(encoder)
    }
}

/// The workload labels of the namespaces scraped, kept between scrapes so a scrape
/// reads no cgroup of a namespace it has seen. Keyed by inode and cookie: the kernel
/// reuses a freed namespace's inode, never its cookie (where it has cookies, 5.14+).
#[derive(Debug, Default)]
pub struct Workloads(HashMap<(u32, Option<u64>), Arc<WorkloadLabels>>);

impl Workloads {
    /// `ns`'s labels: cached, else read now.
    fn get(&mut self, ns: &Netns, cookie: Option<u64>) -> Arc<WorkloadLabels> {
        self.0
            .entry((ns.inode, cookie))
            .or_insert_with(|| Arc::new(WorkloadLabels::of(ns)))
            .clone()
    }

    /// Forgets the namespaces a scrape did not see: they are gone.
    fn keep(&mut self, seen: &HashSet<(u32, Option<u64>)>) {
        self.0.retain(|k, _| seen.contains(k));
    }

    /// How many namespaces' labels are kept.
    pub fn known(&self) -> usize {
        self.0.len()
    }
}

/// What the agent's loop hands over for one scrape: copies, so encoding and the kernel
/// reads happen outside it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub tier: u8,
    pub namespaces: Vec<NsSnapshot>,
    /// Every flow that ended while the agent watched, whatever its namespace.
    pub lifetimes: Lifetimes,
    /// Events lost, by [`crate::event::LostKind`] name.
    pub lost: BTreeMap<&'static str, u64>,
    pub reseeds: u64,
    pub dumps: u64,
    pub subscriber_drops: u64,
}

/// One namespace the agent watches.
#[derive(Clone, Debug, Default)]
pub struct NsSnapshot {
    pub netns: u32,
    /// Its kernel counters when the agent started watching it.
    pub baseline: Kernel,
    pub attributed: Attributed,
    pub counts: Counts,
}

/// One namespace's kernel statistics, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct KernelNow {
    /// `nf_conntrack_count` of the namespace.
    pub entries: u32,
    /// `nf_conntrack_max` (global), where the kernel reports it.
    pub max: Option<u32>,
    pub cpus: Vec<CpuStats>,
    /// The namespace's cookie (`SO_NETNS_COOKIE`), where the kernel has them.
    pub cookie: Option<u64>,
}

impl KernelNow {
    /// Every counter the kernel reports, summed over CPUs, in `conntrack -S` order.
    fn totals(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for cpu in &self.cpus {
            for (name, v) in cpu.fields() {
                match out.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, total)) => *total += u64::from(v),
                    None => out.push((name, u64::from(v))),
                }
            }
        }
        out
    }
}

/// The wire formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One scrape: the agent's snapshot and the kernel's counters of the namespaces in it.
#[derive(Debug)]
pub struct Scrape {
    snapshot: Snapshot,
    kernel: BTreeMap<u32, KernelNow>,
    /// Who lives in each namespace read; none for those that could not be.
    workloads: BTreeMap<u32, Arc<WorkloadLabels>>,
}

impl Scrape {
    pub fn new(mut snapshot: Snapshot, kernel: BTreeMap<u32, KernelNow>) -> Self {
        // The agent keeps them in a hash map: sorted, scrapes list them alike.
        snapshot.namespaces.sort_by_key(|n| n.netns);
        Scrape {
            snapshot,
            kernel,
            workloads: BTreeMap::new(),
        }
    }

    /// Reads the kernel counters of the namespaces in `snapshot` that can be entered, and
    /// who lives in them (from `cache` where it was read before).
    pub async fn gather(snapshot: Snapshot, cache: &mut Workloads) -> Self {
        let known: HashSet<u32> = snapshot.namespaces.iter().map(|n| n.netns).collect();
        let mut kernel = BTreeMap::new();
        let mut workloads = BTreeMap::new();
        let mut seen = HashSet::new();
        for ns in netns::enterable() {
            if !known.contains(&ns.inode) {
                continue; // Not yet dumped by the agent: served from its next round on.
            }
            match read_kernel(&ns.path).await {
                Ok(k) => {
                    seen.insert((ns.inode, k.cookie));
                    workloads.insert(ns.inode, cache.get(&ns, k.cookie));
                    kernel.insert(ns.inode, k);
                }
                // Vanished since it was listed: it will leave the snapshot too.
                Err(e) => log::debug!("metrics: netns {}: {e}", ns.inode),
            }
        }
        cache.keep(&seen);
        Scrape {
            workloads,
            ..Scrape::new(snapshot, kernel)
        }
    }

    pub fn encode(self, format: Format) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        let encoded = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        };
        // Writing into a String fails only if a label or value cannot be formatted,
        // which ours always can.
        encoded.expect("encoding metrics into a String");
        out
    }

    /// `nf_conntrack_max`: the kernel's answer, else the sysctl.
    fn limit(&self) -> Option<u64> {
        self.kernel
            .values()
            .find_map(|k| k.max)
            .map(u64::from)
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// The namespaces the snapshot has, with their kernel statistics where read.
    fn namespaces(&self) -> impl Iterator<Item = (NsLabels, &NsSnapshot, Option<&KernelNow>)> {
        self.snapshot.namespaces.iter().map(|n| {
            let labels = NsLabels {
                netns: n.netns,
                workload: self.workloads.get(&n.netns).cloned().unwrap_or_default(),
            };
            (labels, n, self.kernel.get(&n.netns))
        })
    }

    /// Whether events count anything: tier 3 has none, and serves no zeros that would
    /// read as "nothing happened".
    fn has_events(&self) -> bool {
        self.snapshot.tier < 3
    }

    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let entries = self
            .namespaces()
            .filter_map(|(l, _, k)| Some((l, u64::from(k?.entries))));
        gauges(
            enc,
            "conntrack_entries",
            "Entries in the namespace's conntrack table (nf_conntrack_count)",
            entries,
        )?;
        let limit = self.limit().map(|v| (NO_LABELS, v));
        gauges(
            enc,
            "conntrack_entries_limit",
            "Most entries a namespace's table may hold (nf_conntrack_max, global)",
            limit,
        )?;
        let totals: Vec<(NsLabels, Vec<(&'static str, u64)>)> = self
            .namespaces()
            .filter_map(|(l, _, k)| Some((l, k?.totals())))
            .collect();
        let mut names: Vec<&'static str> = Vec::new();
        for (_, t) in &totals {
            for (name, _) in t {
                if !names.contains(name) {
                    names.push(name);
                }
            }
        }
        for name in names {
            let series = totals.iter().filter_map(|(l, t)| {
                let v = t.iter().find(|(n, _)| *n == name)?.1;
                Some((l.clone(), v))
            });
            counters(
                enc,
                &format!("kernel_{name}"),
                &format!(
                    "The kernel's per-CPU conntrack counter {name}, summed over CPUs (conntrack -S)"
                ),
                series,
            )?;
        }
        Ok(())
    }

    fn encode_events(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        if !self.has_events() {
            return Ok(());
        }
        let by = |f: fn(&Attributed) -> &BTreeMap<&'static str, u64>,
                  zeros: &'static [ct_common::Cause],
                  label: &'static str| {
            self.namespaces().flat_map(move |(l, n, _)| {
                let mut m = f(&n.attributed).clone();
                for c in zeros {
                    m.entry(c.name()).or_insert(0);
                }
                m.into_iter()
                    .map(move |(v, n)| ((l.clone(), [(label, v)]), n))
            })
        };
        counters(
            enc,
            "insert_failed",
            "Entries the kernel could not insert into the table, by cause",
            by(|a| &a.insert_failed, &INSERT_FAILED_CAUSES, "cause"),
        )?;
        counters(
            enc,
            "clash_resolved",
            "Clashes at insertion the kernel resolved, by how",
            by(|a| &a.clash_resolved, &CLASH_CAUSES, "cause"),
        )?;
        counters(
            enc,
            "table_full",
            "New flows dropped because the table was full and nothing could be evicted",
            self.namespaces()
                .map(|(l, n, _)| (l, n.attributed.table_full)),
        )?;
        counters(
            enc,
            "early_drop",
            "Entries evicted to make room for new ones (early_drop)",
            self.namespaces()
                .map(|(l, n, _)| (l, n.attributed.early_drop)),
        )?;
        let counted = |f: fn(&Counts) -> &BTreeMap<&'static str, u64>, label: &'static str| {
            self.namespaces().flat_map(move |(l, n, _)| {
                f(&n.counts)
                    .iter()
                    .map(move |(&v, &c)| ((l.clone(), [(label, v)]), c))
            })
        };
        counters(
            enc,
            "destroy",
            "Entries that left the table, by reason (evictions by early_drop included)",
            counted(|c| &c.destroy, "reason"),
        )?;
        counters(
            enc,
            "new",
            "Entries that entered the table, by protocol",
            counted(|c| &c.new, "proto"),
        )?;
        self.encode_unexplained(enc)
    }

    /// Kernel increments since the agent started watching that no event explains.
    fn encode_unexplained(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let series = self.namespaces().flat_map(|(l, n, k)| {
            let left = k.map(|k| {
                let delta = Kernel::from_cpus(&k.cpus).since(n.baseline);
                unexplained(delta, &n.attributed)
            });
            let named = left.map(|u| {
                [
                    ("insert_failed", Some(u.insert_failed)),
                    ("drop", Some(u.drop)),
                    ("early_drop", Some(u.early_drop)),
                    ("clash_resolve", u.clash_resolve),
                    ("chaintoolong", u.chaintoolong),
                ]
            });
            named
                .into_iter()
                .flatten()
                .filter_map(move |(c, v)| Some(((l.clone(), [("counter", c)]), v?)))
        });
        gauges(
            enc,
            "unexplained",
            "Kernel counter increments since the agent started watching that no event explains \
             (negative: more events than increments)",
            series,
        )
    }

    fn encode_agent(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.snapshot;
        let mut lifetimes = enc.encode_descriptor(
            "flow_lifetime",
            "How long flows that ended while the agent watched had lived, by protocol and last state",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (proto, state, h) in s.lifetimes.iter() {
            let mut buckets: Vec<(f64, u64)> = h.first_buckets(LIFETIME_BUCKETS).collect();
            let counted: u64 = buckets.iter().map(|b| b.1).sum();
            buckets.push((f64::INFINITY, h.count - counted));
            lifetimes
                .encode_family(&[("proto", proto), ("state", state)])?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
        }
        let lost = s.lost.iter().map(|(&k, &n)| ([("kind", k)], n));
        counters(
            enc,
            "events_lost",
            "Events the agent did not get (ring buffer full, ctnetlink overrun), by kind; each loss \
             triggers a reseed",
            lost,
        )?;
        counters(
            enc,
            "agent_reseeds",
            "Reseeds of the agent's table from dumps after lost events",
            [(NO_LABELS, s.reseeds)],
        )?;
        counters(
            enc,
            "agent_dumps",
            "Namespace dumps the agent merged (seeds, resyncs, reseeds)",
            [(NO_LABELS, s.dumps)],
        )?;
        counters(
            enc,
            "agent_subscriber_drops",
            "Events not delivered to `ctscope events` clients that did not read in time",
            [(NO_LABELS, s.subscriber_drops)],
        )?;
        let tier = s.tier.to_string();
        let mut info = enc.encode_descriptor(
            "build",
            "The ctscope version, and the tier the agent runs at",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("tier", tier.as_str()),
        ])
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_kernel(&mut enc)?;
        self.encode_events(&mut enc)?;
        self.encode_agent(&mut enc)
    }
}

/// The label set of a series without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// One metric family of counters; nothing (not even its HELP) when it has no series.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        MetricType::Counter,
        series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
    )
}

/// One metric family of gauges, likewise.
fn gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        MetricType::Gauge,
        series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
    )
}

fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in series {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

async fn read_kernel(path: &std::path::Path) -> ct_netlink::Result<KernelNow> {
    let mut ct = Conntrack::open_in_netns(path)?;
    let cpus = ct.stats_cpu().await?;
    let global = ct.stats_global().await?;
    Ok(KernelNow {
        entries: global.entries,
        max: global.max_entries,
        cpus,
        cookie: ct.netns_cookie().ok(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lifetimes::tests::{entry, tcp};

    const NS: u32 = 4026531840;

    /// Every family served, with its type, as README "Metrics" lists them.
    const DOCUMENTED: &[(&str, &str)] = &[
        ("ctscope_conntrack_entries", "gauge"),
        ("ctscope_conntrack_entries_limit", "gauge"),
        ("ctscope_kernel_found_total", "counter"),
        ("ctscope_kernel_invalid_total", "counter"),
        ("ctscope_kernel_insert_total", "counter"),
        ("ctscope_kernel_insert_failed_total", "counter"),
        ("ctscope_kernel_drop_total", "counter"),
        ("ctscope_kernel_early_drop_total", "counter"),
        ("ctscope_kernel_error_total", "counter"),
        ("ctscope_kernel_search_restart_total", "counter"),
        ("ctscope_kernel_clash_resolve_total", "counter"),
        ("ctscope_kernel_chaintoolong_total", "counter"),
        ("ctscope_insert_failed_total", "counter"),
        ("ctscope_clash_resolved_total", "counter"),
        ("ctscope_table_full_total", "counter"),
        ("ctscope_early_drop_total", "counter"),
        ("ctscope_destroy_total", "counter"),
        ("ctscope_new_total", "counter"),
        ("ctscope_unexplained", "gauge"),
        ("ctscope_flow_lifetime_seconds", "histogram"),
        ("ctscope_events_lost_total", "counter"),
        ("ctscope_agent_reseeds_total", "counter"),
        ("ctscope_agent_dumps_total", "counter"),
        ("ctscope_agent_subscriber_drops_total", "counter"),
        ("ctscope_build_info", "gauge"),
    ];

    /// The counters a 6.x kernel reports, on one CPU.
    fn cpu(n: u16, insert_failed: u32, drop: u32) -> CpuStats {
        CpuStats {
            cpu: n,
            found: Some(10),
            invalid: Some(1),
            insert: Some(0),
            insert_failed: Some(insert_failed),
            drop: Some(drop),
            early_drop: Some(1),
            error: Some(0),
            search_restart: Some(2),
            clash_resolve: Some(0),
            chaintoolong: Some(0),
            ..CpuStats::default()
        }
    }

    /// One namespace: a SNAT clash and 3 table-full drops explained, one drop not; 5 UDP
    /// births, 4 timeouts, 2 evictions; one UDP and one TCP flow ended.
    fn scrape(tier: u8) -> Scrape {
        let mut attributed = Attributed::default();
        attributed.insert_failed.insert("nat_port_clash", 1);
        attributed.table_full = 3;
        attributed.early_drop = 2;
        let counts = Counts {
            new: BTreeMap::from([("udp", 5)]),
            destroy: BTreeMap::from([("timeout", 4), ("early_drop", 2)]),
        };
        let mut lifetimes = Lifetimes::default();
        lifetimes.record(&entry(ct_netlink::proto::UDP, 0), 30.5);
        lifetimes.record(&tcp("TIME_WAIT"), 1e9);
        let snapshot = Snapshot {
            tier,
            namespaces: vec![NsSnapshot {
                netns: NS,
                baseline: Kernel::default(),
                attributed,
                counts,
            }],
            lifetimes,
            lost: BTreeMap::from([("new", 3)]),
            reseeds: 1,
            dumps: 4,
            subscriber_drops: 0,
        };
        let kernel = KernelNow {
            entries: 7,
            max: Some(262144),
            cpus: vec![cpu(0, 1, 3), cpu(1, 0, 2)],
            cookie: Some(1),
        };
        Scrape::new(snapshot, BTreeMap::from([(NS, kernel)]))
    }

    /// `# TYPE` lines as (name, type).
    fn types(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, t) = l.split_once(' ').unwrap();
                (n.to_owned(), t.to_owned())
            })
            .collect()
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn names_and_types_are_as_documented() {
        let text = scrape(2).encode(Format::Prometheus);
        let served = types(&text);
        let want: Vec<(String, String)> = DOCUMENTED
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert_eq!(served, want, "{text}");
        let readme = include_str!("../../../README.md");
        for (name, _) in DOCUMENTED {
            let listed = name
                .strip_prefix("ctscope_kernel_")
                .map_or(name.to_string(), |_| {
                    "ctscope_kernel_<counter>_total".into()
                });
            assert!(
                readme.contains(&format!("`{listed}")),
                "README lacks {listed}"
            );
        }
    }

    #[test]
    fn series_carry_the_agent_and_kernel_values() {
        let text = scrape(2).encode(Format::Prometheus);
        let ns = format!("netns=\"{NS}\"");
        for line in [
            format!("ctscope_conntrack_entries{{{ns}}} 7"),
            "ctscope_conntrack_entries_limit 262144".into(),
            format!("ctscope_kernel_insert_failed_total{{{ns}}} 1"),
            format!("ctscope_kernel_drop_total{{{ns}}} 5"),
            format!("ctscope_kernel_found_total{{{ns}}} 20"),
            format!("ctscope_insert_failed_total{{{ns},cause=\"nat_port_clash\"}} 1"),
            format!("ctscope_insert_failed_total{{{ns},cause=\"same_flow_race\"}} 0"),
            format!("ctscope_clash_resolved_total{{{ns},cause=\"merged\"}} 0"),
            format!("ctscope_table_full_total{{{ns}}} 3"),
            format!("ctscope_early_drop_total{{{ns}}} 2"),
            format!("ctscope_destroy_total{{{ns},reason=\"timeout\"}} 4"),
            format!("ctscope_new_total{{{ns},proto=\"udp\"}} 5"),
            // drop: 5 counted, 3 table_full + 1 clash explained.
            format!("ctscope_unexplained{{{ns},counter=\"drop\"}} 1"),
            format!("ctscope_unexplained{{{ns},counter=\"insert_failed\"}} 0"),
            "ctscope_flow_lifetime_seconds_bucket{proto=\"udp\",state=\"UNREPLIED\",le=\"16\"} 0"
                .into(),
            "ctscope_flow_lifetime_seconds_bucket{proto=\"udp\",state=\"UNREPLIED\",le=\"32\"} 1"
                .into(),
            "ctscope_flow_lifetime_seconds_count{proto=\"udp\",state=\"UNREPLIED\"} 1".into(),
            "ctscope_flow_lifetime_seconds_sum{proto=\"udp\",state=\"UNREPLIED\"} 30.5".into(),
            // Past the last bucket: in +Inf only.
            "ctscope_flow_lifetime_seconds_bucket{proto=\"tcp\",state=\"TIME_WAIT\",le=\"524288\"} 0"
                .into(),
            "ctscope_flow_lifetime_seconds_bucket{proto=\"tcp\",state=\"TIME_WAIT\",le=\"+Inf\"} 1"
                .into(),
            "ctscope_events_lost_total{kind=\"new\"} 3".into(),
            "ctscope_agent_reseeds_total 1".into(),
            "ctscope_agent_dumps_total 4".into(),
            format!(
                "ctscope_build_info{{version=\"{}\",tier=\"2\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            has(&text, &line);
        }
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("ctscope_flow_lifetime_seconds_bucket{proto=\"udp\""))
            .count();
        assert_eq!(buckets, LIFETIME_BUCKETS + 1, "fixed buckets and +Inf");
    }

    #[test]
    fn openmetrics_names_counters_by_family_and_ends_with_eof() {
        let text = scrape(2).encode(Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let served = types(&text);
        assert!(served.contains(&("ctscope_insert_failed".into(), "counter".into())));
        assert!(served.contains(&("ctscope_build".into(), "info".into())));
        has(&text, "# UNIT ctscope_flow_lifetime_seconds seconds");
        has(
            &text,
            &format!("ctscope_insert_failed_total{{netns=\"{NS}\",cause=\"nat_port_clash\"}} 1"),
        );
    }

    #[test]
    fn tier_3_serves_no_event_counts() {
        let text = scrape(3).encode(Format::Prometheus);
        let served: Vec<String> = types(&text).into_iter().map(|(n, _)| n).collect();
        for absent in [
            "ctscope_insert_failed_total",
            "ctscope_table_full_total",
            "ctscope_destroy_total",
            "ctscope_unexplained",
        ] {
            assert!(!served.iter().any(|n| n == absent), "{absent} at tier 3");
        }
        assert!(served.iter().any(|n| n == "ctscope_kernel_drop_total"));
    }

    #[test]
    fn workload_labels_join_every_series_of_their_namespace() {
        let mut s = scrape(2);
        let id = "4b1c2e3f5a6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
        let w = WorkloadLabels {
            netns_name: Some("blue".into()),
            host: true,
            container_id: Some(container_id(&Container {
                runtime: Runtime::Crio,
                id: id.into(),
            })),
            pod_uid: Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789".into()),
            pod_name: Some("web-0".into()),
            pod_namespace: Some("shop".into()),
        };
        s.workloads.insert(NS, Arc::new(w));
        let text = s.encode(Format::Prometheus);
        let labels = format!(
            "netns=\"{NS}\",netns_name=\"blue\",host=\"true\",container_id=\"cri-o://{id}\",\
             pod_uid=\"0a1b2c3d-4e5f-6789-abcd-ef0123456789\",pod_name=\"web-0\",\
             pod_namespace=\"shop\""
        );
        has(&text, &format!("ctscope_conntrack_entries{{{labels}}} 7"));
        has(
            &text,
            &format!("ctscope_insert_failed_total{{{labels},cause=\"nat_port_clash\"}} 1"),
        );
        has(
            &text,
            &format!("ctscope_unexplained{{{labels},counter=\"drop\"}} 1"),
        );
        let per_ns = text.lines().filter(|l| l.contains("netns=")).count();
        let labelled = text.lines().filter(|l| l.contains(&labels)).count();
        assert_eq!(per_ns, labelled, "every namespace series has them:\n{text}");
    }

    #[test]
    fn labels_without_a_value_are_left_out() {
        let text = scrape(2).encode(Format::Prometheus);
        has(
            &text,
            &format!("ctscope_conntrack_entries{{netns=\"{NS}\"}} 7"),
        );
        for absent in ["netns_name=", "host=", "container_id=", "pod_uid="] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
    }

    #[test]
    fn workloads_are_read_once_per_inode_and_cookie() {
        let ns = |name: &str| Netns {
            inode: NS,
            names: vec![name.into(), "z".into()],
            current: false,
            member: None,
            path: "/nonexistent".into(),
        };
        let mut cache = Workloads::default();
        let first = cache.get(&ns("a"), Some(1));
        assert_eq!(first.netns_name.as_deref(), Some("a"), "the first name");
        let renamed = cache.get(&ns("b"), Some(1));
        assert_eq!(renamed, first, "cached: a series keeps its labels");
        let reused = cache.get(&ns("b"), Some(2));
        assert_eq!(reused.netns_name.as_deref(), Some("b"), "a new namespace");
        cache.keep(&HashSet::from([(NS, Some(2))]));
        assert_eq!(cache.known(), 1, "the vanished one is forgotten");
    }

    #[test]
    fn a_namespace_not_in_the_snapshot_has_no_series() {
        let mut s = scrape(2);
        s.snapshot.namespaces.clear();
        let text = s.encode(Format::Prometheus);
        assert!(!text.contains("netns="), "{text}");
        assert!(text.contains("ctscope_flow_lifetime_seconds_count"));
    }
}

//! `ctscope diagnose`'s pure part: what was read from the kernel ([`Evidence`]), what the
//! table holds ([`Composition`], counted from a dump or the agent's rows by [`census`]),
//! the memory estimate, and the rules ([`rules`]) that turn them into [`Finding`]s. No
//! I/O here, so every rule is unit-tested.

pub mod census;
pub mod rules;

use std::collections::BTreeMap;

use ct_netlink::Entry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sys::workload::Workload;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Crit,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Crit => "crit",
        }
    }
}

/// One finding: what was seen, the numbers behind it, and what to do.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub netns: u64,
    /// One sentence on what was found.
    pub summary: String,
    /// The numbers the rule looked at (a JSON object).
    pub evidence: Value,
    /// What to do, with the exact commands.
    pub recommendation: String,
}

/// Everything read from one namespace.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evidence {
    pub netns: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Who lives in the namespace (host, container, pod).
    #[serde(flatten)]
    pub workload: Workload,
    /// Every numeric `/proc/sys/net/netfilter/nf_conntrack_*`, read inside the namespace.
    pub sysctls: BTreeMap<String, u64>,
    /// Per-CPU counters (ctnetlink `GET_STATS_CPU`) summed; only those this kernel reports.
    pub counters: BTreeMap<String, u64>,
    /// Table size and limit from ctnetlink `GET_STATS`.
    pub entries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// What the dump held.
    pub table: Composition,
    pub memory: Memory,
    /// With an agent running: the causes its events gave since it started watching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causes: Option<Causes>,
}

/// What the agent's events said about this namespace's failures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Causes {
    /// Minutes the agent has watched the namespace.
    pub minutes: f64,
    pub insert_failed: BTreeMap<String, u64>,
    pub clash_resolved: BTreeMap<String, u64>,
    pub table_full: u64,
    pub early_drop: u64,
}

impl Evidence {
    pub fn sysctl(&self, name: &str) -> Option<u64> {
        self.sysctls.get(name).copied()
    }

    /// A counter, 0 when this kernel does not report it.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Entries now (`nf_conntrack_count`, else ctnetlink's count).
    pub fn count(&self) -> u64 {
        self.sysctl("nf_conntrack_count").unwrap_or(self.entries)
    }

    /// The limit (`nf_conntrack_max`, else ctnetlink's), 0 if unknown.
    pub fn max(&self) -> u64 {
        self.sysctl("nf_conntrack_max")
            .or(self.max_entries)
            .unwrap_or(0)
    }

    /// count / max, 0 when the limit is unknown.
    pub fn fill(&self) -> f64 {
        ratio(self.count(), self.max())
    }
}

/// `a / b` as a float, 0 when `b` is 0.
pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A percentage rounded to one decimal, for evidence.
pub fn pct(a: u64, b: u64) -> f64 {
    (ratio(a, b) * 1000.0).round() / 10.0
}

/// What one ctnetlink dump (or the agent's table) held; counted by [`census::Counter`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    /// Entries in the dump, or rows in the agent's table (either may differ from
    /// `nf_conntrack_count` by what came and went).
    pub dumped: u64,
    pub by_proto: BTreeMap<String, u64>,
    /// TCP entries by state.
    pub tcp_states: BTreeMap<String, u64>,
    /// UDP entries that never saw a reply.
    pub udp_unreplied: u64,
    pub src_nat: u64,
    pub dst_nat: u64,
    /// UDP entries to port 53 (original direction).
    pub dns_udp: u64,
    /// Entries with a helper attached.
    pub with_helper: u64,
}

impl Composition {
    pub fn of(entries: &[Entry]) -> Self {
        census::Census::of(entries).composition
    }

    pub fn tcp_state(&self, state: &str) -> u64 {
        self.tcp_states.get(state).copied().unwrap_or(0)
    }
}

/// Sizes from the kernel's BTF; `None` where BTF lacks the type.
#[derive(Clone, Debug, Default)]
pub struct StructSizes {
    pub nf_conn: Option<u32>,
    pub nf_ct_ext: Option<u32>,
    pub acct: Option<u32>,
    pub tstamp: Option<u32>,
    pub ecache: Option<u32>,
}

/// sizeof(struct nf_conn) on the 6.x kernels this was built on, used without BTF.
const NF_CONN_FALLBACK: u32 = 248;
/// The kernel allocates extensions in one block of at least NF_CT_EXT_PREALLOC bytes.
const EXT_PREALLOC: u64 = 128;
/// One `struct hlist_nulls_head` (a pointer) per bucket.
const BUCKET_BYTES: u64 = 8;

/// Memory of the table: an estimate (slab and kmalloc rounding, per-CPU lists and
/// expectations are not counted).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Memory {
    /// sizeof(struct nf_conn): from BTF, else 248.
    pub nf_conn_bytes: u64,
    pub nf_conn_from_btf: bool,
    /// The extension block (ecache, and acct/tstamp when enabled), kmalloc-rounded.
    pub ext_bytes: u64,
    pub per_entry_bytes: u64,
    /// The hash table: buckets × 8.
    pub hash_bytes: u64,
    pub now_bytes: u64,
    pub at_max_bytes: u64,
}

impl Memory {
    pub fn estimate(
        sizes: &StructSizes,
        sysctls: &BTreeMap<String, u64>,
        count: u64,
        max: u64,
    ) -> Self {
        let on = |k: &str| sysctls.get(k).copied().unwrap_or(0) != 0;
        let size = |s: Option<u32>, fallback: u32| u64::from(s.unwrap_or(fallback));
        let mut ext = size(sizes.nf_ct_ext, 8) + size(sizes.ecache, 16);
        if on("nf_conntrack_acct") {
            ext += size(sizes.acct, 32);
        }
        if on("nf_conntrack_timestamp") {
            ext += size(sizes.tstamp, 16);
        }
        let ext_bytes = kmalloc_size(ext.max(EXT_PREALLOC));
        let nf_conn_bytes = size(sizes.nf_conn, NF_CONN_FALLBACK);
        let per_entry_bytes = nf_conn_bytes + ext_bytes;
        let buckets = sysctls.get("nf_conntrack_buckets").copied().unwrap_or(0);
        let hash_bytes = buckets * BUCKET_BYTES;
        Memory {
            nf_conn_bytes,
            nf_conn_from_btf: sizes.nf_conn.is_some(),
            ext_bytes,
            per_entry_bytes,
            hash_bytes,
            now_bytes: count * per_entry_bytes + hash_bytes,
            at_max_bytes: max * per_entry_bytes + hash_bytes,
        }
    }
}

/// The kmalloc cache a request of `n` bytes lands in (powers of two, plus 96 and 192).
fn kmalloc_size(n: u64) -> u64 {
    match n {
        0..=8 => 8,
        65..=96 => 96,
        129..=192 => 192,
        _ => n.next_power_of_two(),
    }
}

/// Bytes as MiB with one decimal, for summaries.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ct_netlink::{Status, TcpInfo, TcpState, Tuple, proto};

    use super::*;

    fn entry(p: u8, dport: u16, status: u32) -> Entry {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let orig = Tuple::ports(p, a, b, 40000, dport);
        let mut e = Entry::new(orig.clone(), orig.inverted());
        e.status = Status(status);
        e
    }

    #[test]
    fn composition_counts_protocols_states_nat_and_dns() {
        let mut tcp = entry(proto::TCP, 80, Status::SEEN_REPLY | Status::SRC_NAT);
        tcp.tcp = Some(TcpInfo {
            state: TcpState::from_name("TIME_WAIT").unwrap(),
            wscale_orig: None,
            wscale_reply: None,
            flags_orig: None,
            flags_reply: None,
        });
        let dns = entry(proto::UDP, 53, 0);
        let replied = entry(proto::UDP, 123, Status::SEEN_REPLY);
        let c = Composition::of(&[tcp, dns, replied]);
        assert_eq!(c.dumped, 3);
        assert_eq!(c.by_proto["udp"], 2);
        assert_eq!(c.tcp_state("TIME_WAIT"), 1);
        assert_eq!((c.udp_unreplied, c.dns_udp, c.src_nat), (1, 1, 1));
    }

    #[test]
    fn memory_uses_btf_sizes_and_rounds_extensions() {
        let sizes = StructSizes {
            nf_conn: Some(256),
            ..StructSizes::default()
        };
        let sysctls = BTreeMap::from([("nf_conntrack_buckets".to_owned(), 1024)]);
        let m = Memory::estimate(&sizes, &sysctls, 10, 100);
        assert_eq!(m.ext_bytes, 128, "at least the preallocated block");
        assert_eq!(m.per_entry_bytes, 384);
        assert_eq!(m.hash_bytes, 8192);
        assert_eq!(m.now_bytes, 10 * 384 + 8192);
        assert_eq!(m.at_max_bytes, 100 * 384 + 8192);
        assert!(m.nf_conn_from_btf);
        assert_eq!(
            Memory::estimate(&StructSizes::default(), &sysctls, 1, 1).nf_conn_bytes,
            248
        );
    }

    #[test]
    fn kmalloc_rounding() {
        assert_eq!(kmalloc_size(129), 192);
        assert_eq!(kmalloc_size(193), 256);
        assert_eq!(kmalloc_size(90), 96);
    }
}

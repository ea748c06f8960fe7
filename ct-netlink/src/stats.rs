//! Conntrack statistics: per-CPU (`conntrack -S`) and global (`conntrack -C`).

use netlink_packet_core::{DefaultNla, NLA_TYPE_MASK, Nla};
use serde::Serialize;

// enum ctattr_stats_cpu
const CTA_STATS_SEARCHED: u16 = 1;
const CTA_STATS_FOUND: u16 = 2;
const CTA_STATS_NEW: u16 = 3;
const CTA_STATS_INVALID: u16 = 4;
const CTA_STATS_IGNORE: u16 = 5;
const CTA_STATS_DELETE: u16 = 6;
const CTA_STATS_DELETE_LIST: u16 = 7;
const CTA_STATS_INSERT: u16 = 8;
const CTA_STATS_INSERT_FAILED: u16 = 9;
const CTA_STATS_DROP: u16 = 10;
const CTA_STATS_EARLY_DROP: u16 = 11;
const CTA_STATS_ERROR: u16 = 12;
const CTA_STATS_SEARCH_RESTART: u16 = 13;
const CTA_STATS_CLASH_RESOLVE: u16 = 14;
const CTA_STATS_CHAIN_TOOLONG: u16 = 15;
// enum ctattr_stats_global
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

/// One CPU's conntrack counters. Counters the running kernel does not send are
/// `None` (searched/new/ignore/delete/delete_list are gone since 4.x;
/// clash_resolve since 5.10 and chaintoolong since 5.17 are newer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    pub cpu: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searched: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_list: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insert: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insert_failed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_drop: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_restart: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clash_resolve: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaintoolong: Option<u32>,
}

impl CpuStats {
    /// (name, value) pairs in conntrack -S order, present counters only.
    pub fn fields(&self) -> Vec<(&'static str, u32)> {
        [
            ("searched", self.searched),
            ("found", self.found),
            ("new", self.new),
            ("invalid", self.invalid),
            ("ignore", self.ignore),
            ("delete", self.delete),
            ("delete_list", self.delete_list),
            ("insert", self.insert),
            ("insert_failed", self.insert_failed),
            ("drop", self.drop),
            ("early_drop", self.early_drop),
            ("error", self.error),
            ("search_restart", self.search_restart),
            ("clash_resolve", self.clash_resolve),
            ("chaintoolong", self.chaintoolong),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect()
    }

    /// Every counter present, summed over `cpus`.
    pub fn totals(cpus: &[CpuStats]) -> std::collections::BTreeMap<&'static str, u64> {
        let mut sums = std::collections::BTreeMap::new();
        for (name, v) in cpus.iter().flat_map(CpuStats::fields) {
            *sums.entry(name).or_insert(0) += u64::from(v);
        }
        sums
    }
}

/// Table-wide numbers (`IPCTNL_MSG_CT_GET_STATS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GlobalStats {
    pub entries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u32>,
}

fn value_u32(nla: &DefaultNla) -> (u16, Option<u32>) {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    let n = v
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    (nla.kind() & NLA_TYPE_MASK, n)
}

pub(crate) fn decode_cpu(cpu: u16, attrs: &[DefaultNla]) -> CpuStats {
    let mut s = CpuStats {
        cpu,
        ..CpuStats::default()
    };
    for nla in attrs {
        let (kind, v) = value_u32(nla);
        let slot = match kind {
            CTA_STATS_SEARCHED => &mut s.searched,
            CTA_STATS_FOUND => &mut s.found,
            CTA_STATS_NEW => &mut s.new,
            CTA_STATS_INVALID => &mut s.invalid,
            CTA_STATS_IGNORE => &mut s.ignore,
            CTA_STATS_DELETE => &mut s.delete,
            CTA_STATS_DELETE_LIST => &mut s.delete_list,
            CTA_STATS_INSERT => &mut s.insert,
            CTA_STATS_INSERT_FAILED => &mut s.insert_failed,
            CTA_STATS_DROP => &mut s.drop,
            CTA_STATS_EARLY_DROP => &mut s.early_drop,
            CTA_STATS_ERROR => &mut s.error,
            CTA_STATS_SEARCH_RESTART => &mut s.search_restart,
            CTA_STATS_CLASH_RESOLVE => &mut s.clash_resolve,
            CTA_STATS_CHAIN_TOOLONG => &mut s.chaintoolong,
            _ => continue,
        };
        *slot = v;
    }
    s
}

pub(crate) fn decode_global(attrs: &[DefaultNla]) -> GlobalStats {
    let mut g = GlobalStats::default();
    for nla in attrs {
        match value_u32(nla) {
            (CTA_STATS_GLOBAL_ENTRIES, Some(v)) => g.entries = v,
            (CTA_STATS_GLOBAL_MAX_ENTRIES, v) => g.max_entries = v,
            _ => {}
        }
    }
    g
}

//! `ctscope probe`: what this kernel offers and which tier and hooks ctscope would use,
//! found by trying the real operations (load, attach) rather than by version numbers.

use std::{fs, path::Path};

use serde::Serialize;

use crate::{
    loader::{self, DEFAULT_RING_BYTES, HookStatus},
    netns,
};

/// Programs without which tier 1 cannot tell new, failed and destroyed entries apart.
const TIER1_ESSENTIAL: [&str; 3] = ["confirm_enter", "confirm_exit", "ct_delete_enter"];

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    pub kprobes: bool,
    pub fentry: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fentry_reason: Option<String>,
    pub tracepoints: bool,
    pub ringbuf: bool,
    /// "builtin", "module" or "absent" (not loaded).
    pub conntrack: &'static str,
    pub hz: u32,
    pub tier: Option<u8>,
    pub tier_reason: String,
    pub hooks: Vec<HookStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
    pub notes: Vec<String>,
    pub namespaces: Vec<NetnsReport>,
}

#[derive(Debug, Serialize)]
pub struct NetnsReport {
    #[serde(flatten)]
    pub netns: netns::Netns,
    /// `nf_conntrack_count` in that namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_entries: Option<u64>,
}

pub fn run() -> Report {
    let mut report = Report {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        kprobes: loader::Support::detect().kprobes,
        fentry: false,
        fentry_reason: None,
        tracepoints: false,
        ringbuf: false,
        conntrack: conntrack_presence(),
        hz: 0,
        tier: None,
        tier_reason: String::new(),
        hooks: Vec::new(),
        load_error: None,
        notes: Vec::new(),
        namespaces: namespaces(),
    };
    match loader::load(DEFAULT_RING_BYTES) {
        Ok(mut probes) => {
            report.ringbuf = true;
            report.hz = probes.layout.hz;
            report.notes = probes.notes.clone();
            report.tracepoints = probes.attached("kfree_skb");
            match loader::fentry_supported(&mut probes) {
                Ok(ok) => report.fentry = ok,
                Err(why) => report.fentry_reason = Some(why),
            }
            report.hooks = probes.hooks.clone();
        }
        Err(e) => report.load_error = Some(e.to_string()),
    }
    decide_tier(&mut report);
    report
}

fn decide_tier(r: &mut Report) {
    let attached = |name: &str| r.hooks.iter().any(|h| h.name == name && h.available);
    if TIER1_ESSENTIAL.iter().all(|p| attached(p)) {
        r.tier = Some(1);
        r.tier_reason = "kprobes on the conntrack core attached: full events with causes".into();
    } else if !r.kprobes {
        r.tier_reason = "no kprobes on this kernel (CONFIG_KPROBES off): tier 1 is unavailable; \
             tier 2 (tracepoints only) and tier 3 (ctnetlink) are not built yet"
            .into();
    } else if let Some(e) = &r.load_error {
        r.tier_reason = format!("BPF programs could not be loaded: {e}");
    } else {
        let missing: Vec<&str> = TIER1_ESSENTIAL
            .iter()
            .copied()
            .filter(|p| !attached(p))
            .collect();
        r.tier_reason = format!(
            "essential tier-1 hooks failed to attach: {}",
            missing.join(", ")
        );
    }
}

fn conntrack_presence() -> &'static str {
    let module = Path::new("/sys/module/nf_conntrack");
    if !module.exists() {
        "absent"
    } else if module.join("initstate").exists() {
        "module"
    } else {
        "builtin"
    }
}

fn namespaces() -> Vec<NetnsReport> {
    netns::list()
        .into_iter()
        .map(|ns| NetnsReport {
            conntrack_entries: netns::conntrack_count(&ns.path),
            netns: ns,
        })
        .collect()
}

/// The human-readable form of the report.
pub fn text(r: &Report) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut s = String::new();
    s.push_str(&format!("kernel       {}\n", r.kernel));
    s.push_str(&format!("BTF          {}\n", yes(r.btf)));
    s.push_str(&format!("kprobes      {}\n", yes(r.kprobes)));
    let fentry_why = r
        .fentry_reason
        .as_deref()
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    s.push_str(&format!("fentry       {}{}\n", yes(r.fentry), fentry_why));
    s.push_str(&format!(
        "tracepoints  {} (tp_btf kfree_skb)\n",
        yes(r.tracepoints)
    ));
    s.push_str(&format!("ring buffer  {}\n", yes(r.ringbuf)));
    s.push_str(&format!("conntrack    {}\n", r.conntrack));
    s.push_str(&format!("HZ           {}\n", r.hz));
    match r.tier {
        Some(t) => s.push_str(&format!("tier         {t}: {}\n", r.tier_reason)),
        None => s.push_str(&format!("tier         none: {}\n", r.tier_reason)),
    }
    if let Some(e) = &r.load_error {
        s.push_str(&format!("load error   {e}\n"));
    }
    for note in &r.notes {
        s.push_str(&format!("note         {note}\n"));
    }
    s.push_str("hooks:\n");
    for h in &r.hooks {
        let mark = if h.available { "ok " } else { "-- " };
        let target = h.target.as_deref().unwrap_or("?");
        let kind = serde_json::to_value(h.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from));
        s.push_str(&format!(
            "  {mark} {:<10} {:<22} -> {:<32} {}\n",
            kind.unwrap_or_default(),
            h.name,
            target,
            h.reason.as_deref().unwrap_or(h.role)
        ));
    }
    s.push_str("network namespaces (conntrack entries):\n");
    for ns in &r.namespaces {
        let names = if ns.netns.names.is_empty() {
            String::new()
        } else {
            format!(" {}", ns.netns.names.join(","))
        };
        let here = if ns.netns.current { " (this one)" } else { "" };
        let count = ns
            .conntrack_entries
            .map_or("-".to_string(), |c| c.to_string());
        s.push_str(&format!(
            "  {:<12} {:>8}{names}{here}\n",
            ns.netns.inode, count
        ));
    }
    s
}

//! `ctscope probe`: what this kernel offers and which tier and hooks ctscope would use,
//! found by trying the real operations (load, attach) rather than by version numbers.

use std::{fs, path::Path};

use serde::Serialize;

use crate::{
    bpf::loader::{self, DEFAULT_RING_BYTES, HookStatus, LoadError, LoadOptions, Tier},
    sys::netns,
};

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
    /// What the chosen BPF tier's hooks are: "fentry", "kprobes" or "fentry and kprobes"
    /// on tier 1 (each hook's `kind` says which it got), the tier's label on tier 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_hooks: Option<&'static str>,
    /// What the chosen tier can and cannot see on this kernel.
    pub tier_sees: String,
    /// Every tier, tried for real: whether it can run here, why not, what it sees.
    pub tiers: Vec<TierReport>,
    pub hooks: Vec<HookStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
    pub notes: Vec<String>,
    pub namespaces: Vec<NetnsReport>,
}

#[derive(Debug, Serialize)]
pub struct TierReport {
    pub tier: u8,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub sees: &'static str,
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
        tier_hooks: None,
        tier_sees: String::new(),
        tiers: Vec::new(),
        hooks: Vec::new(),
        load_error: None,
        notes: Vec::new(),
        namespaces: namespaces(),
    };
    let (bpf_tier, why_not_1) = match loader::load(LoadOptions::new(DEFAULT_RING_BYTES, None)) {
        Ok(mut probes) => {
            report.ringbuf = true;
            report.hz = probes.layout.hz;
            report.notes = probes.notes.clone();
            report.tracepoints = probes.attached("kfree_skb") || probes.attached("t2_nf_drop");
            match loader::fentry_supported(&mut probes) {
                Ok(ok) => report.fentry = ok,
                Err(why) => report.fentry_reason = Some(why),
            }
            report.hooks = probes.hooks.clone();
            report.tier_reason = probes.tier_reason.clone();
            report.tier_hooks = Some(probes.hooks_label());
            (Some(probes.tier), probes.tier1_unavailable.clone())
        }
        Err(e) => {
            let why = hooks_refusal(&e);
            report.load_error = Some(e.to_string());
            report.fentry_reason = Some(why.clone());
            report.hooks = loader::unattached(&why);
            (None, Some(refusal(Tier::Kprobes, &e)))
        }
    };
    if report.hz == 0 {
        // Without the BPF object's layout, the kernel config still says (any user).
        report.hz = ct_btf::kernel_hz().unwrap_or(0);
    }
    report.tiers = tiers(bpf_tier, why_not_1);
    let chosen = report.tiers.iter().find(|t| t.available);
    report.tier = chosen.map(|t| t.tier);
    report.tier_sees = chosen.map_or("nothing", |t| t.sees).into();
    if bpf_tier.is_none() {
        report.tier_reason = match chosen {
            Some(_) => "no BPF tier can run (see tiers 1 and 2): ctnetlink events only".into(),
            None => "no tier can run here: each tier below says what it misses".into(),
        };
    }
    report
}

/// Every tier, tried: the one that loaded (`bpf`) is known to work, the others are
/// loaded for real (tier 2 even where tier 1 won, so tests and users know whether
/// `--tier 2` would run). Each reason names what that tier misses.
fn tiers(bpf: Option<Tier>, why_not_1: Option<String>) -> Vec<TierReport> {
    let tried = |t: Tier, result: Result<(), String>| TierReport {
        tier: t.number(),
        available: result.is_ok(),
        reason: result.err(),
        sees: t.sees(),
    };
    let one = match bpf {
        Some(Tier::Kprobes) => Ok(()),
        _ => Err(why_not_1.unwrap_or_else(|| "not tried".into())),
    };
    let two = match bpf {
        Some(Tier::Tracepoints) => Ok(()),
        _ => loader::load(LoadOptions::new(
            DEFAULT_RING_BYTES,
            Some(Tier::Tracepoints),
        ))
        .map(drop)
        .map_err(|e| refusal(Tier::Tracepoints, &e)),
    };
    vec![
        tried(Tier::Kprobes, one),
        tried(Tier::Tracepoints, two),
        tried(Tier::Ctnetlink, ctnetlink_works()),
    ]
}

/// Why tier `tier` could not load, naming what it misses.
fn refusal(tier: Tier, e: &LoadError) -> String {
    let programs = match tier {
        Tier::Kprobes => "its kprobe programs",
        _ => "its tracepoint programs",
    };
    match e {
        LoadError::Permission(why) => format!(
            "{programs} need CAP_BPF and CAP_PERFMON (or root); the kernel refused them: {why}"
        ),
        LoadError::Tier(_, why) => why.clone(),
        other => other.to_string(),
    }
}

/// Why no hook is attached, in a few words, when [`loader::load`] failed.
fn hooks_refusal(e: &LoadError) -> String {
    match e {
        LoadError::Permission(_) => "not tried: the kernel refused to load BPF programs \
                                     (needs CAP_BPF and CAP_PERFMON, or root)"
            .into(),
        // The hooks were tried, but tier 2's essential ones failed too (see the tiers).
        LoadError::Tier(n, _) => format!("detached: tier {n} could not attach (see the tiers)"),
        other => format!("not tried: {other}"),
    }
}

/// Tier 3 needs only a ctnetlink socket that answers.
fn ctnetlink_works() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut ct = ct_netlink::Conntrack::open().map_err(|e| ctnetlink_refusal(&e))?;
        ct.count()
            .await
            .map(drop)
            .map_err(|e| ctnetlink_refusal(&e))
    })
}

/// A ctnetlink error; a refusal names the capability.
fn ctnetlink_refusal(e: &ct_netlink::Error) -> String {
    let text = format!("ctnetlink: {e}");
    let refused = matches!(e.errno(), Some(libc::EPERM | libc::EACCES));
    if refused && !text.contains("CAP_NET_ADMIN") {
        format!("{text} (needs CAP_NET_ADMIN, or root)")
    } else {
        text
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
    if let Some(hooks) = r.tier_hooks {
        s.push_str(&format!("hooks        {hooks}\n"));
    }
    s.push_str(&format!("sees         {}\n", r.tier_sees));
    for t in &r.tiers {
        let state = match &t.reason {
            None => "available".to_string(),
            Some(why) => format!("unavailable: {why}"),
        };
        s.push_str(&format!("  tier {}     {state}\n", t.tier));
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

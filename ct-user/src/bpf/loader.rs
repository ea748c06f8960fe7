//! Loads the BPF object with this kernel's layout and attaches the hook plan, one hook at a
//! time: a hook whose function is missing or refused is reported, and the rest still run.

use std::{io, os::fd::OwnedFd};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, FEntry, KProbe, ProgramError, RawTracePoint},
};
use ct_common::{ABSENT, KernelLayout, floor};
use serde::Serialize;

use crate::bpf::{
    hooks::{
        HookKind, HookSpec, Kallsyms, Resolution, TIER1, TIER1_ESSENTIAL, TIER2, TIER2_ESSENTIAL,
    },
    trampoline::Trampolines,
};
use crate::{event::RecordKind, sys::caps};

/// The BPF object built by build.rs from the `ct-ebpf` crate.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ct-ebpf"));

/// Default ring buffer size: 16 MiB holds ~80k events of 200 bytes.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this ctscope was built without its BPF programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("reading the kernel's BTF for struct offsets: {0}")]
    Btf(#[from] ct_btf::BtfError),
    #[error(
        "the kernel refused to load BPF programs ({0}): run as root, or grant CAP_BPF and CAP_PERFMON (and CAP_NET_ADMIN for ctnetlink)"
    )]
    Permission(String),
    #[error(
        "the kernel refused to create BPF maps ({why}) although ctscope holds CAP_BPF and CAP_PERFMON: RLIMIT_MEMLOCK is {kib} KiB and could not be raised, and kernels before 5.11 charge BPF maps to it. Grant CAP_SYS_RESOURCE (Kubernetes: add SYS_RESOURCE) or raise the limit (systemd: LimitMEMLOCK=infinity; docker: --ulimit memlock=-1)"
    )]
    Memlock { why: String, kib: u64 },
    #[error("--ring-size must be a power of two multiple of the page size (4096), got {0}")]
    RingSize(u32),
    #[error(
        "tier {0} cannot run on this kernel: {1}. Omit --tier to let ctscope pick the best tier (`ctscope probe` lists them)"
    )]
    Tier(u8, String),
    #[error("loading the BPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
}

/// Where one hook of the plan ended up.
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    /// Program name in the BPF object.
    pub name: &'static str,
    pub kind: HookKind,
    /// The kernel symbol or tracepoint it went on, if one was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub available: bool,
    /// Why it is not attached (or a note about how it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub role: &'static str,
}

/// The benchmark's floors (`ctscope events --floor`): tier 2 cut short at one step, so
/// `cargo xtask bench` can show what each step costs a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Floor {
    /// Every tier-2 program returns at once: the hooks' own cost.
    Empty,
    /// New-flow reports stop after the first-seen filter.
    Filter,
    /// Each entry the filter passes reserves a ring record and discards it unwritten: the
    /// ring buffer's own cost per event.
    Ring,
}

impl Floor {
    fn code(self) -> u32 {
        match self {
            Floor::Empty => floor::EMPTY,
            Floor::Filter => floor::FILTER,
            Floor::Ring => floor::RING,
        }
    }
}

/// The hook tiers of DESIGN.md, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Tier {
    /// kprobes or fentry/fexit on the conntrack core: every event with its exact cause.
    #[value(name = "1")]
    #[serde(rename = "1")]
    Kprobes,
    /// Tracepoints only (slab free, egress, drops), settled against kernel counters.
    #[value(name = "2")]
    #[serde(rename = "2")]
    Tracepoints,
    /// No BPF: ctnetlink events, like `conntrack -E` (no causes, can lose events).
    #[value(name = "3")]
    #[serde(rename = "3")]
    Ctnetlink,
}

impl Tier {
    pub fn number(self) -> u8 {
        match self {
            Tier::Kprobes => 1,
            Tier::Tracepoints => 2,
            Tier::Ctnetlink => 3,
        }
    }

    /// A few words for the tier, as the "watching" line names it.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Kprobes => "kprobes",
            Tier::Tracepoints => "tracepoints only",
            Tier::Ctnetlink => "ctnetlink events",
        }
    }

    /// What this tier can and cannot see, for `probe` and `--log-level info`.
    pub fn sees(self) -> &'static str {
        match self {
            Tier::Kprobes => {
                "every new, destroy (exact reason), insert_failed (cause and winner), \
                 clash_resolved, table_full and early_drop event, from the conntrack core"
            }
            Tier::Tracepoints => {
                "new (entries first seen on egress; ctnetlink inserts and ingress-only flows \
                 are not reported), destroy (reason from expiry, TCP state, netns and \
                 context; early_drop vs ctnetlink from the counters), insert_failed and \
                 table_full (drops checked against the kernel's counters), merged and \
                 NAT-clash clashes; winners are looked up through ctnetlink"
            }
            Tier::Ctnetlink => {
                "new and destroy from ctnetlink events only: no reasons or causes, no \
                 insert_failed or table_full, and events can be lost under load"
            }
        }
    }
}

impl Tier {
    /// Event kinds tier 3 delivers: ctnetlink has no insert_failed, table_full,
    /// early_drop or clash events.
    const CTNETLINK_KINDS: [RecordKind; 3] =
        [RecordKind::New, RecordKind::Destroy, RecordKind::Lost];

    /// `None` if this tier can deliver every kind of `kinds` (an empty list asks for all),
    /// else which it cannot and the ones it can.
    pub fn unseen_kinds(self, kinds: &[RecordKind]) -> Option<String> {
        if self != Tier::Ctnetlink {
            return None;
        }
        let unseen: Vec<&str> = kinds
            .iter()
            .filter(|k| !Self::CTNETLINK_KINDS.contains(k))
            .map(|k| k.name())
            .collect();
        let sees: Vec<&str> = Self::CTNETLINK_KINDS.iter().map(|k| k.name()).collect();
        (!unseen.is_empty()).then(|| {
            format!(
                "tier 3 (ctnetlink events) cannot see {}; it sees only {}",
                unseen.join(", "),
                sees.join(", ")
            )
        })
    }
}

/// Whether the BPF tiers may be tried: an error when tier 1 or 2 was forced and CAP_BPF
/// or CAP_PERFMON is missing; false after a warning when the best tier was asked for.
pub fn bpf_allowed(tier: Option<Tier>) -> anyhow::Result<bool> {
    let missing = caps::Caps::current().missing(&[caps::Cap::Bpf, caps::Cap::Perfmon]);
    // Both are missing only without CAP_SYS_ADMIN, which stands in for them: say so, since
    // a deployment that grants CAP_SYS_ADMIN (to enter namespaces) needs neither.
    let or_sys_admin = if missing.len() == 2 {
        " (or CAP_SYS_ADMIN, which stands in for both)"
    } else {
        ""
    };
    match tier {
        Some(Tier::Ctnetlink) => Ok(false),
        Some(t) => caps::require(&missing, &format!("tier {}", t.number())).map(|()| true),
        None if missing.is_empty() => Ok(true),
        None => {
            eprintln!(
                "ctscope: warning: without {}{or_sys_admin}, no BPF tier: tier 3 (ctnetlink \
                 only, no causes or reasons)",
                caps::names(&missing)
            );
            Ok(false)
        }
    }
}

/// The loaded object and what got attached. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    /// The tier the attached hooks deliver.
    pub tier: Tier,
    /// Why that tier (and not a better one).
    pub tier_reason: String,
    /// Why tier 1 did not run (`None` when it does).
    pub tier1_unavailable: Option<String>,
    pub hooks: Vec<HookStatus>,
    pub layout: KernelLayout,
    /// What the BTF reader had to fall back on.
    pub notes: Vec<String>,
    /// The fentry/fexit links by hook name: closing one detaches its program.
    links: Vec<(&'static str, OwnedFd)>,
}

impl Probes {
    pub fn attached(&self, program: &str) -> bool {
        self.hooks.iter().any(|h| h.name == program && h.available)
    }

    /// What the attached hooks are: "fentry", "kprobes" or "fentry and kprobes" on
    /// tier 1 (the conntrack functions' hooks), else the tier's label.
    pub fn hooks_label(&self) -> &'static str {
        if self.tier != Tier::Kprobes {
            return self.tier.label();
        }
        let used = |kinds: &[HookKind]| {
            self.hooks
                .iter()
                .any(|h| h.available && kinds.contains(&h.kind))
        };
        match (
            used(&[HookKind::Fentry, HookKind::Fexit]),
            used(&[HookKind::Kprobe, HookKind::Kretprobe]),
        ) {
            (true, false) => "fentry",
            (true, true) => "fentry and kprobes",
            _ => "kprobes",
        }
    }
}

/// Kernel capabilities that decide which hooks can be tried.
#[derive(Clone, Copy, Debug)]
pub struct Support {
    /// The kprobe PMU exists (CONFIG_KPROBES and CONFIG_KPROBE_EVENTS).
    pub kprobes: bool,
}

impl Support {
    pub fn detect() -> Self {
        Self {
            kprobes: std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
        }
    }
}

/// What [`load`] loads and attaches.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes: a power of two, at least 4096.
    pub ring_bytes: u32,
    /// The tier to attach; `None` for the best this kernel allows.
    pub tier: Option<Tier>,
    /// Benchmark only: how far tier 2 goes (`events --floor`).
    pub floor: Option<Floor>,
    /// Testing only: tier 2 reads entry fields one by one, as on kernels whose
    /// `struct nf_conn` does not fit a raw record (`events --parsed-records`).
    pub parsed_records: bool,
}

impl LoadOptions {
    pub fn new(ring_bytes: u32, tier: Option<Tier>) -> Self {
        Self {
            ring_bytes,
            tier,
            floor: None,
            parsed_records: false,
        }
    }
}

/// The function whose every call ends a confirmed entry, and the program on it.
const DELETE: &str = "nf_ct_delete";
const DELETE_HOOK: &str = "ct_delete_enter";

/// Loads the object and attaches the best tier this kernel allows (tier 1, else 2), or
/// the tier `opts.tier`. Tier 3 needs no BPF and is the caller's fallback on error.
pub fn load(opts: LoadOptions) -> Result<Probes, LoadError> {
    let (ring_bytes, forced) = (opts.ring_bytes, opts.tier);
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    if !ring_bytes.is_power_of_two() || ring_bytes < 4096 {
        return Err(LoadError::RingSize(ring_bytes));
    }
    let memlock_kept = raise_memlock();
    let kernel_btf = ct_btf::KernelBtf::load()?;
    let (mut layout, mut notes) = ct_btf::layout_of(&kernel_btf)?;
    // Read once: the hooks' symbols and, on kernels that need them, the code ranges.
    let kallsyms_text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let code = super::code::ranges(&layout, &kallsyms_text, &mut notes);
    if opts.parsed_records {
        layout.ct_raw_bytes = ABSENT;
    }
    let kallsyms = Kallsyms::of(&kallsyms_text);
    let support = Support::detect();
    let early_drop = u32::from(
        support.kprobes && matches!(kallsyms.resolve("early_drop"), Resolution::Found(_)),
    );
    let delete_part = support.kprobes.then(|| kallsyms.part_of(DELETE)).flatten();
    let after_dying = u32::from(delete_part.is_some());
    let mut ebpf = EbpfLoader::new()
        .override_global("LAYOUT", &layout, true)
        .override_global("CODE", &code, true)
        .override_global("EARLY_DROP_ATTACHED", &early_drop, true)
        .override_global("DELETE_AFTER_DYING", &after_dying, true)
        .override_global("FLOOR", &opts.floor.map_or(floor::NONE, Floor::code), true)
        .map_max_entries("EVENTS", ring_bytes)
        .load(OBJECT)
        .map_err(|e| permission_or(e, memlock_kept))?;
    let btf = Btf::from_sys_fs().ok();
    let mut hooks = Vec::new();
    let mut links = Vec::new();
    let mut why_not_1 = None;
    if forced != Some(Tier::Tracepoints) {
        let trampolines = Trampolines::new(OBJECT, &ebpf, kernel_btf);
        let mut attach_one = |spec: &HookSpec| {
            if let (DELETE_HOOK, Some(part)) = (spec.program, &delete_part) {
                return attach_delete_part(&mut ebpf, spec, part);
            }
            let fentry = trampolines.as_ref().map_err(String::as_str);
            let (status, link) =
                attach_tier1(&mut ebpf, spec, &kallsyms, support, btf.as_ref(), fentry);
            links.extend(link.map(|l| (spec.program, l)));
            status
        };
        hooks = TIER1.iter().map(&mut attach_one).collect();
        match missing(&hooks, TIER1_ESSENTIAL) {
            None => {
                let mut p = probes(ebpf, Tier::Kprobes, String::new(), hooks, layout, notes);
                p.links = links;
                p.tier_reason = format!("{} on the conntrack core attached", p.hooks_label());
                return Ok(p);
            }
            Some(why) if forced == Some(Tier::Kprobes) => return Err(LoadError::Tier(1, why)),
            Some(why) => why_not_1 = Some(why),
        }
        // Partial tier 1 would report some events twice next to tier 2.
        unload_tier1(&mut ebpf, &mut hooks, &mut links);
    }
    hooks.extend(
        TIER2
            .iter()
            .map(|spec| attach(&mut ebpf, spec, &kallsyms, support, btf.as_ref())),
    );
    match (missing(&hooks, TIER2_ESSENTIAL), why_not_1) {
        (None, why_not_1) => {
            let reason = match &why_not_1 {
                Some(why) => format!("tracepoints only: tier 1 unavailable ({why})"),
                None => "tier 2 forced (--tier 2)".into(),
            };
            let mut p = probes(ebpf, Tier::Tracepoints, reason, hooks, layout, notes);
            p.tier1_unavailable = why_not_1;
            Ok(p)
        }
        (Some(why), None) => Err(LoadError::Tier(2, why)),
        (Some(why), Some(why_not_1)) => Err(LoadError::Tier(
            2,
            format!("{why}; tier 1 unavailable too ({why_not_1})"),
        )),
    }
}

fn probes(
    ebpf: Ebpf,
    tier: Tier,
    tier_reason: String,
    hooks: Vec<HookStatus>,
    layout: KernelLayout,
    notes: Vec<String>,
) -> Probes {
    Probes {
        ebpf,
        tier,
        tier_reason,
        tier1_unavailable: None,
        hooks,
        layout,
        notes,
        links: Vec::new(),
    }
}

/// `None` if every essential program attached, else which did not and why.
fn missing(hooks: &[HookStatus], essential: &[&str]) -> Option<String> {
    let failed: Vec<(&str, &str)> = essential
        .iter()
        .filter_map(|name| match hooks.iter().find(|h| h.name == *name) {
            Some(h) if h.available => None,
            Some(h) => Some((*name, h.reason.as_deref().unwrap_or("?"))),
            None => Some((*name, "not tried")),
        })
        .collect();
    let (_, first) = *failed.first()?;
    // One shared reason (no kprobes at all) reads better once.
    if failed.iter().all(|(_, why)| *why == first) {
        let names: Vec<&str> = failed.iter().map(|(n, _)| *n).collect();
        return Some(format!("{}: {first}", names.join(", ")));
    }
    let each: Vec<String> = failed
        .iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect();
    Some(each.join("; "))
}

/// Detaches and unloads every tier-1 program, marking its hook unavailable. Tier 2's
/// `t2_nf_drop` also counts what tier 1's `kfree_skb` counts: one program per drop is cheaper.
fn unload_tier1(
    ebpf: &mut Ebpf,
    hooks: &mut [HookStatus],
    links: &mut Vec<(&'static str, OwnedFd)>,
) {
    // Closing the links detaches the fentry/fexit twins and frees them.
    links.clear();
    for h in hooks.iter_mut() {
        let unloaded = match h.kind {
            HookKind::Fentry | HookKind::Fexit => Ok(true),
            HookKind::Kprobe | HookKind::Kretprobe => {
                program::<KProbe>(ebpf, h.name).map(|p| p.unload().is_ok())
            }
            HookKind::TpBtf => program::<BtfTracePoint>(ebpf, h.name).map(|p| p.unload().is_ok()),
            HookKind::RawTp => Ok(false),
        };
        if h.available && unloaded.is_ok() {
            h.available = false;
            h.reason = Some("detached: the rest of tier 1 is missing, tier 2 runs instead".into());
        }
    }
}

/// Every hook of tiers 1 and 2, none attached, each saying `why` (for `probe`, when
/// [`load`] failed and kept none).
pub fn unattached(why: &str) -> Vec<HookStatus> {
    TIER1
        .iter()
        .chain(TIER2)
        .map(|spec| HookStatus {
            name: spec.program,
            kind: spec.kind,
            target: None,
            available: false,
            reason: Some(why.to_owned()),
            role: spec.role,
        })
        .collect()
}

/// Tells tier 2 which namespaces run conntrack (by inode), so drops without an entry
/// there are checked as table-full candidates from the first one.
pub fn mark_conntrack_netns(probes: &mut Probes, inodes: &[u32]) -> Result<(), String> {
    let map = probes
        .ebpf
        .map_mut("CT_NETNS")
        .ok_or("map CT_NETNS missing from the object")?;
    let mut map: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(map).map_err(|e| e.to_string())?;
    for inode in inodes {
        map.insert(inode, 1, 0).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the kernel lets a trivial fentry program load (some refuse with EPERM).
pub fn fentry_supported(probes: &mut Probes) -> Result<bool, String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("no vmlinux BTF: {e}"))?;
    let prog: &mut FEntry = program(&mut probes.ebpf, "fentry_feature")?;
    match prog.load("ktime_get", &btf) {
        Ok(()) => Ok(true),
        Err(e) => Err(describe(&e)),
    }
}

/// A tier-1 hook: its fentry/fexit twin when `fentry` can load it (the link comes back),
/// else its kprobe, whose status then says why the twin was not used.
fn attach_tier1(
    ebpf: &mut Ebpf,
    spec: &HookSpec,
    kallsyms: &Kallsyms,
    support: Support,
    btf: Option<&Btf>,
    fentry: Result<&Trampolines, &str>,
) -> (HookStatus, Option<OwnedFd>) {
    let why_not = match (spec.twin, fentry) {
        (None, _) => None,
        (Some(_), Err(why)) => Some(why.to_string()),
        (Some(_), Ok(t)) => match t.attach(spec, kallsyms) {
            Ok((target, link)) => {
                let status = HookStatus {
                    name: spec.program,
                    kind: spec.twin_kind(),
                    target: Some(target),
                    available: true,
                    reason: None,
                    role: spec.role,
                };
                return (status, Some(link));
            }
            Err(why) => Some(format!("fentry not used: {why}")),
        },
    };
    let mut status = attach(ebpf, spec, kallsyms, support, btf);
    if let Some(why) = why_not {
        status.reason = Some(match status.reason.take() {
            Some(kprobe) => format!("{kprobe}; {why}"),
            None => why,
        });
    }
    (status, None)
}

fn attach(
    ebpf: &mut Ebpf,
    spec: &HookSpec,
    kallsyms: &Kallsyms,
    support: Support,
    btf: Option<&Btf>,
) -> HookStatus {
    let mut status = HookStatus {
        name: spec.program,
        kind: spec.kind,
        target: None,
        available: false,
        reason: None,
        role: spec.role,
    };
    let result = match spec.kind {
        HookKind::Kprobe | HookKind::Kretprobe => {
            attach_kprobe(ebpf, spec, kallsyms, support, &mut status.target)
        }
        HookKind::TpBtf => {
            status.target = Some(spec.targets[0].to_string());
            attach_tp_btf(ebpf, spec, btf)
        }
        HookKind::RawTp => {
            status.target = Some(spec.targets[0].to_string());
            attach_raw_tp(ebpf, spec)
        }
        // The plan names kprobes; their twins go through `attach_tier1`.
        HookKind::Fentry | HookKind::Fexit => Err("fentry hooks attach as twins".into()),
    };
    match result {
        Ok(()) => status.available = true,
        Err(reason) => status.reason = Some(reason),
    }
    status
}

fn attach_kprobe(
    ebpf: &mut Ebpf,
    spec: &HookSpec,
    kallsyms: &Kallsyms,
    support: Support,
    target: &mut Option<String>,
) -> Result<(), String> {
    // Load before anything else: kernels without kprobes can still verify kprobe-type
    // programs (uprobes use the same type), which checks them against this verifier.
    let prog: &mut KProbe = program(ebpf, spec.program)?;
    prog.load().map_err(|e| describe(&e))?;
    if !support.kprobes {
        return Err(
            "loaded (verifier OK) but not attached: kernel has no kprobes (CONFIG_KPROBES off)"
                .into(),
        );
    }
    let symbol = resolve_any(kallsyms, spec.targets)?;
    *target = Some(symbol.clone());
    prog.attach(&symbol, 0).map(drop).map_err(|e| describe(&e))
}

/// `ct_delete_enter` on `nf_ct_delete`'s `.part` clone `part` (5.10): the compiler inlined
/// nf_ct_delete's head (setting IPS_DYING) into conntrack's own callers (gc, early_drop,
/// lookups), which then call the clone directly; a probe on `nf_ct_delete` would see only
/// the deletes from other modules (ctnetlink). No fentry twin: it would miss them too.
fn attach_delete_part(ebpf: &mut Ebpf, spec: &HookSpec, part: &str) -> HookStatus {
    let result = program::<KProbe>(ebpf, spec.program).and_then(|prog| {
        prog.load().map_err(|e| describe(&e))?;
        prog.attach(part, 0).map(drop).map_err(|e| describe(&e))
    });
    HookStatus {
        name: spec.program,
        kind: spec.kind,
        target: Some(part.to_owned()),
        available: result.is_ok(),
        reason: Some(match result {
            Ok(()) => format!(
                "on the clone {part}: nf_conntrack's callers run nf_ct_delete's inlined head \
                 (setting DYING) and call the clone directly (fentry not used: it would miss them)"
            ),
            Err(e) => e,
        }),
        role: spec.role,
    }
}

fn attach_tp_btf(ebpf: &mut Ebpf, spec: &HookSpec, btf: Option<&Btf>) -> Result<(), String> {
    let btf = btf.ok_or("kernel has no BTF (/sys/kernel/btf/vmlinux), needed for tp_btf")?;
    let prog: &mut BtfTracePoint = program(ebpf, spec.program)?;
    prog.load(spec.targets[0], btf).map_err(|e| describe(&e))?;
    prog.attach().map(drop).map_err(|e| describe(&e))
}

fn attach_raw_tp(ebpf: &mut Ebpf, spec: &HookSpec) -> Result<(), String> {
    let prog: &mut RawTracePoint = program(ebpf, spec.program)?;
    prog.load().map_err(|e| describe(&e))?;
    prog.attach(spec.targets[0])
        .map(drop)
        .map_err(|e| describe(&e))
}

fn resolve_any(kallsyms: &Kallsyms, targets: &[&str]) -> Result<String, String> {
    if kallsyms.is_empty() {
        return Err("/proc/kallsyms unreadable or empty (needs root)".into());
    }
    let mut why = Vec::new();
    for func in targets {
        match kallsyms.resolve(func) {
            Resolution::Found(symbol) => return Ok(symbol),
            Resolution::Ambiguous(n) => why.push(format!("{func}: {n} symbols share the name")),
            Resolution::Missing => {
                why.push(format!("{func}: not in kallsyms (inlined or not built)"))
            }
        }
    }
    Err(why.join("; "))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from object"))?;
    prog.try_into().map_err(|e: ProgramError| e.to_string())
}

/// One line for a program error, keeping the verifier's last words when it refused.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The verifier ends with statistics; the reason is the line(s) before them.
            let log = verifier_log.to_string();
            let stats = ["verification time", "stack depth", "processed "];
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty() && !stats.iter().any(|s| l.starts_with(s)))
                .take(2)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            // Some kernels refuse before the verifier runs (EPERM for fentry): no log.
            if tail.is_empty() {
                format!("load refused: {io_error}")
            } else {
                format!("load refused: {io_error}; verifier: {}", tail.join(" | "))
            }
        }
        other => crate::sys::error_text::render(other),
    }
}

/// A refusal of the load: [`LoadError::Memlock`] when ctscope holds the capabilities and
/// kept a finite RLIMIT_MEMLOCK (`memlock_kept`, bytes), else [`LoadError::Permission`].
fn permission_or(e: aya::EbpfError, memlock_kept: Option<u64>) -> LoadError {
    let text = format!("{e:?}");
    if !(text.contains("PermissionDenied")
        || text.contains("EPERM")
        || text.contains("os error 1)"))
    {
        return LoadError::Ebpf(e);
    }
    let why = crate::sys::error_text::render(&e);
    let capable = caps::Caps::current()
        .missing(&[caps::Cap::Bpf, caps::Cap::Perfmon])
        .is_empty();
    match memlock_kept {
        Some(bytes) if capable => LoadError::Memlock {
            why,
            kib: bytes / 1024,
        },
        _ => LoadError::Permission(why),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Raising it can fail (containers,
/// microVMs, no CAP_SYS_RESOURCE) and is not needed on newer kernels, so failure is only
/// logged; the finite limit kept is returned to explain a refused load.
fn raise_memlock() -> Option<u64> {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; no other effect on memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } == 0 {
        return None;
    }
    log::debug!(
        "setrlimit(RLIMIT_MEMLOCK) failed: {}",
        io::Error::last_os_error()
    );
    let mut kept = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut kept) } == 0;
    (read && kept.rlim_cur != libc::RLIM_INFINITY).then_some(kept.rlim_cur)
}

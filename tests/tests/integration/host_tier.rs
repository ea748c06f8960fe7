//! Runs everywhere: `ctscope probe --json` is well-formed and honest about kprobes, and
//! `ctscope events` loads and attaches whatever this kernel offers, then exits cleanly, as do
//! the benchmark's `--floor` variants of tier 2.

use std::time::Duration;

use ctscope_tests::ctscope::{self, Events, EventsOpts, Finished, Probe};

use crate::common;
use serde_json::Value;

pub fn run() {
    let probe = Probe::run().unwrap_or_else(|e| panic!("{e}"));
    check_shape(&probe);
    check_kprobes_honest(&probe);
    check_tracepoints(&probe);
    check_tiers(&probe);
    check_tier1_hooks(&probe);
    check_events_run(&[]);
    // Tier 3 needs no BPF: it must run wherever ctnetlink answers.
    check_events_run(&["--tier", "3"]);
    check_bench_floors(&probe);
}

/// The benchmark's floors (`events --floor`, used by `cargo xtask bench`) pass the
/// verifier where tier 2 runs, and each says on stderr what it leaves out.
fn check_bench_floors(probe: &Probe) {
    if let Some(why) = probe.tier_missing(2) {
        eprintln!("note: --floor not checked: {why}");
        return;
    }
    for floor in ["empty", "filter", "ring"] {
        let finished = check_events_run(&["--floor", floor]);
        assert!(
            finished.stderr.contains("ctscope: benchmark floor: "),
            "--floor {floor} not announced; stderr:\n{}",
            finished.stderr
        );
    }
}

/// The conntrack functions' hooks of tier 1 (all but the kfree_skb tracepoint).
fn tier1_function_hooks(probe: &Probe) -> Vec<&Value> {
    let function = |h: &&Value| {
        matches!(
            h["kind"].as_str(),
            Some("kprobe" | "kretprobe" | "fentry" | "fexit")
        )
    };
    probe.hooks().iter().filter(function).collect()
}

/// In the VMs (Debian kernels, nf_conntrack a module with its own BTF) every tier-1 hook
/// is an fentry/fexit twin, loaded against the module's BTF; with `CTSCOPE_NO_FENTRY=1`
/// tier 1 still runs, every hook a kprobe/kretprobe saying why. Where the module has no
/// BTF (Debian 11's 5.10), every hook is a kprobe/kretprobe whose reason says so.
fn check_tier1_hooks(probe: &Probe) {
    let module_without_btf = std::path::Path::new("/sys/module/nf_conntrack/initstate").exists()
        && !std::path::Path::new("/sys/kernel/btf/nf_conntrack").exists();
    if std::env::var_os("CTSCOPE_VM_KERNEL").is_some() && module_without_btf {
        check_kprobes_everywhere(probe, "module has no BTF");
        return;
    }
    if std::env::var_os("CTSCOPE_VM_KERNEL").is_none() {
        if probe.tier() == Some(1) {
            eprintln!(
                "note: tier 1 on {}: {}",
                probe.kernel(),
                probe.0["tier_hooks"]
            );
        }
        return;
    }
    let p = &probe.0;
    assert_eq!(p["tier"], 1, "the VM kernels reach tier 1: {p}");
    assert_eq!(
        p["tier_hooks"], "fentry",
        "tier 1 on fentry in the VMs: {p}"
    );
    let hooks = tier1_function_hooks(probe);
    assert_eq!(hooks.len(), 17, "tier 1's function hooks: {hooks:?}");
    for h in &hooks {
        assert!(
            h["available"] == true
                && (matches!(h["kind"].as_str(), Some("fentry" | "fexit")) || on_part_clone(h)),
            "not on a trampoline: {h}"
        );
    }
    let kprobes =
        Probe::run_with_env(&[(common::NO_FENTRY_ENV, "1")]).unwrap_or_else(|e| panic!("{e}"));
    check_kprobes_everywhere(&kprobes, common::NO_FENTRY_ENV);
}

/// Tier 1 with every conntrack-function hook an attached kprobe/kretprobe whose reason
/// contains `why`.
fn check_kprobes_everywhere(probe: &Probe, why: &str) {
    let p = &probe.0;
    assert_eq!(p["tier"], 1, "tier 1 on kprobes: {p}");
    assert_eq!(p["tier_hooks"], "kprobes", "{p}");
    let hooks = tier1_function_hooks(probe);
    assert_eq!(hooks.len(), 17, "tier 1's function hooks: {hooks:?}");
    for h in hooks {
        assert!(
            h["available"] == true && matches!(h["kind"].as_str(), Some("kprobe" | "kretprobe")),
            "not a kprobe: {h}"
        );
        let reason = h["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(why) || on_part_clone(h),
            "no reason given: {h}"
        );
    }
}

/// A kprobe on a function's `.part` clone, which its callers call past the function
/// (nf_ct_delete on 5.10): a kprobe by design, saying so.
fn on_part_clone(h: &Value) -> bool {
    h["kind"] == "kprobe"
        && h["available"] == true
        && h["target"].as_str().is_some_and(|t| t.contains(".part."))
        && h["reason"].as_str().is_some_and(|r| r.contains("clone"))
}

/// `tiers` lists tiers 1–3, each tried; the chosen one is available, and tier 3 works on
/// any machine with ctnetlink (all of ours).
fn check_tiers(probe: &Probe) {
    let p = &probe.0;
    let tiers = p["tiers"]
        .as_array()
        .unwrap_or_else(|| panic!("tiers must be an array: {p}"));
    let numbers: Vec<u64> = tiers.iter().filter_map(|t| t["tier"].as_u64()).collect();
    assert_eq!(numbers, [1, 2, 3], "tiers: {p}");
    for t in tiers {
        assert!(
            t["available"].is_boolean() && t["sees"].is_string(),
            "tier: {t}"
        );
        if t["available"] == false {
            assert!(
                t["reason"].is_string(),
                "unavailable tier without a reason: {t}"
            );
        }
    }
    let chosen = probe
        .tier()
        .unwrap_or_else(|| panic!("no tier chosen: {p}"));
    assert_eq!(
        tiers[chosen as usize - 1]["available"],
        true,
        "chosen tier: {p}"
    );
    assert_eq!(tiers[2]["available"], true, "tier 3 (ctnetlink): {p}");
    if probe.kprobes() == Some(false) && probe.bool("tracepoints") == Some(true) {
        assert_eq!(
            chosen, 2,
            "no kprobes but tracepoints: tier 2 expected: {p}"
        );
    }
}

/// Every field of the contract is present with its type.
fn check_shape(probe: &Probe) {
    let p = &probe.0;
    assert!(p["kernel"].is_string(), "kernel: {p}");
    for field in ["btf", "kprobes", "fentry", "tracepoints", "ringbuf"] {
        assert!(p[field].is_boolean(), "{field} must be a bool: {p}");
    }
    let conntrack = p["conntrack"].as_str().unwrap_or("");
    assert!(
        ["builtin", "module", "absent"].contains(&conntrack),
        "conntrack: {p}"
    );
    assert!(
        p["tier"].is_null() || matches!(p["tier"].as_u64(), Some(1..=3)),
        "tier must be 1, 2, 3 or null: {p}"
    );
    let hooks = p["hooks"]
        .as_array()
        .unwrap_or_else(|| panic!("hooks must be an array: {p}"));
    assert!(!hooks.is_empty(), "no hooks listed: {p}");
    for h in hooks {
        assert!(h["name"].is_string() && h["kind"].is_string(), "hook: {h}");
        assert!(h["available"].is_boolean(), "hook: {h}");
    }
}

/// Without kprobes: not tier 1, and every kprobe hook unavailable with a reason.
fn check_kprobes_honest(probe: &Probe) {
    if probe.kprobes() != Some(false) {
        return;
    }
    assert_ne!(probe.tier(), Some(1), "tier 1 needs kprobes: {}", probe.0);
    let kprobe_hook = |h: &&Value| matches!(h["kind"].as_str(), Some("kprobe" | "kretprobe"));
    for h in probe.hooks().iter().filter(kprobe_hook) {
        assert_eq!(
            h["available"], false,
            "kprobe hook available without kprobes: {h}"
        );
        let reason = h["reason"].as_str().unwrap_or("");
        assert!(!reason.is_empty(), "unavailable hook without a reason: {h}");
    }
}

/// Where tracepoints work, ctscope's tracepoint program loaded and attached.
fn check_tracepoints(probe: &Probe) {
    if probe.bool("tracepoints") != Some(true) {
        return;
    }
    let tracepoint = |h: &&Value| {
        let kind = h["kind"].as_str().unwrap_or("");
        ["tp_btf", "tracepoint", "raw_tp", "raw_tracepoint"].contains(&kind)
    };
    let hooks: Vec<&Value> = probe.hooks().iter().filter(tracepoint).collect();
    assert!(
        hooks.iter().any(|h| h["available"] == true),
        "tracepoints work here but no tracepoint hook is available: {hooks:?}"
    );
}

/// `ctscope events --json --duration 1 EXTRA` attaches, exits 0, prints only JSON, no error.
fn check_events_run(extra: &[&str]) -> Finished {
    let opts = EventsOpts {
        duration: Some(1.0),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let finished =
        Events::start(&opts).wait_exit(ctscope::ready_timeout() + Duration::from_secs(20));
    finished.assert_clean();
    let errors = finished.error_lines();
    assert!(
        errors.is_empty(),
        "ctscope events reported errors:\n{}",
        errors.join("\n")
    );
    finished
}

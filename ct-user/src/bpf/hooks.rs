//! The hook plan: which BPF program goes on which kernel function, and resolving each
//! function to the symbol this kernel actually has (compilers rename static functions
//! to `name.isra.0`, `name.constprop.0`, `name.part.0`; `.cold` parts are never targets).

use std::collections::HashMap;

use super::code;

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    Kprobe,
    Kretprobe,
    /// BPF trampoline at function entry: what a kprobe does, cheaper.
    Fentry,
    /// BPF trampoline at function return, with the arguments too: what a kretprobe does,
    /// several times cheaper.
    Fexit,
    TpBtf,
    /// Raw tracepoint: untyped arguments, for tracepoints tp_btf cannot read everywhere.
    RawTp,
}

/// One program of the BPF object and where it goes.
#[derive(Clone, Copy, Debug)]
pub struct HookSpec {
    /// Program name in the BPF object.
    pub program: &'static str,
    pub kind: HookKind,
    /// Candidate kernel functions (or the tracepoint), first available wins.
    pub targets: &'static [&'static str],
    /// What ctscope learns from it (shown by `ctscope probe`).
    pub role: &'static str,
    /// The fentry/fexit twin of a kprobe/kretprobe program, tried first.
    pub twin: Option<Twin>,
}

/// A kprobe program's fentry/fexit twin: same body, cheaper hook.
#[derive(Clone, Copy, Debug)]
pub struct Twin {
    pub program: &'static str,
    /// The twin reads arguments (or, from fexit, the return value after them) by
    /// position, so it needs the function to have exactly this many parameters in BTF
    /// (`None`: any).
    pub params: Option<usize>,
}

const fn hook(
    program: &'static str,
    kind: HookKind,
    targets: &'static [&'static str],
    role: &'static str,
) -> HookSpec {
    HookSpec {
        program,
        kind,
        targets,
        role,
        twin: None,
    }
}

impl HookSpec {
    /// With fentry/fexit twin `program` (its kind follows: kprobe → fentry).
    const fn or(mut self, program: &'static str) -> Self {
        self.twin = Some(Twin {
            program,
            params: None,
        });
        self
    }

    /// With a twin that needs the function to have `params` parameters.
    const fn or_with(mut self, program: &'static str, params: usize) -> Self {
        self.twin = Some(Twin {
            program,
            params: Some(params),
        });
        self
    }

    /// The kind of its twin.
    pub fn twin_kind(&self) -> HookKind {
        match self.kind {
            HookKind::Kretprobe => HookKind::Fexit,
            _ => HookKind::Fentry,
        }
    }
}

use HookKind::{Kprobe, Kretprobe, RawTp, TpBtf};

/// Tier 1 of DESIGN.md: kprobes on the conntrack core, each with an fentry/fexit twin
/// tried first, plus the kfree_skb tracepoint.
pub const TIER1: &[HookSpec] = &[
    hook(
        "confirm_enter",
        Kprobe,
        &["__nf_conntrack_confirm"],
        "new entries and insert outcome",
    )
    .or("fe_confirm_enter"),
    hook(
        "confirm_exit",
        Kretprobe,
        &["__nf_conntrack_confirm"],
        "new / insert_failed verdict",
    )
    .or_with("fx_confirm_exit", 1),
    hook(
        "resolve_clash_enter",
        Kprobe,
        &["nf_ct_resolve_clash"],
        "clash direction and winner",
    )
    .or_with("fe_resolve_clash_enter", 3),
    hook(
        "alloc_enter",
        Kprobe,
        &["__nf_conntrack_alloc"],
        "table_full: tuples and netns",
    )
    .or("fe_alloc_enter"),
    hook(
        "alloc_exit",
        Kretprobe,
        &["__nf_conntrack_alloc"],
        "table_full: failed allocation",
    )
    .or_with("fx_alloc_exit", 6),
    hook(
        "early_drop_enter",
        Kprobe,
        &["early_drop"],
        "early_drop evictions",
    )
    .or("fe_early_drop_enter"),
    hook(
        "early_drop_exit",
        Kretprobe,
        &["early_drop"],
        "early_drop evictions",
    )
    .or("fx_early_drop_exit"),
    hook(
        "ct_delete_enter",
        Kprobe,
        &["nf_ct_delete"],
        "destroy events and reasons",
    )
    .or("fe_ct_delete_enter"),
    hook(
        "ct_free_enter",
        Kprobe,
        &["nf_conntrack_free"],
        "end of every entry (counted)",
    )
    .or("fe_ct_free_enter"),
    hook(
        "hash_insert_enter",
        Kprobe,
        &["nf_conntrack_hash_check_insert"],
        "ctnetlink inserts",
    )
    .or("fe_hash_insert_enter"),
    hook(
        "hash_insert_exit",
        Kretprobe,
        &["nf_conntrack_hash_check_insert"],
        "ctnetlink inserts",
    )
    .or_with("fx_hash_insert_exit", 1),
    hook(
        "gc_worker_enter",
        Kprobe,
        &["gc_worker"],
        "destroy reason: gc timeout / eviction",
    )
    .or("fe_gc_worker_enter"),
    hook(
        "gc_worker_exit",
        Kretprobe,
        &["gc_worker"],
        "destroy reason: gc timeout / eviction",
    )
    .or("fx_gc_worker_exit"),
    hook(
        "netns_cleanup_enter",
        Kprobe,
        &["nf_conntrack_cleanup_net_list"],
        "destroy reason: netns exit",
    )
    .or("fe_netns_cleanup_enter"),
    hook(
        "netns_cleanup_exit",
        Kretprobe,
        &["nf_conntrack_cleanup_net_list"],
        "destroy reason: netns exit",
    )
    .or("fx_netns_cleanup_exit"),
    hook(
        "iterate_cleanup_enter",
        Kprobe,
        &["nf_ct_iterate_cleanup", "nf_ct_iterate_cleanup_net"],
        "destroy reason: other cleanups",
    )
    .or("fe_iterate_cleanup_enter"),
    hook(
        "iterate_cleanup_exit",
        Kretprobe,
        &["nf_ct_iterate_cleanup", "nf_ct_iterate_cleanup_net"],
        "destroy reason: other cleanups",
    )
    .or("fx_iterate_cleanup_exit"),
    hook(
        "kfree_skb",
        TpBtf,
        &["kfree_skb"],
        "netfilter drops (counted)",
    ),
];

/// Tier 2 of DESIGN.md: tracepoints only, for kernels without kprobes or fentry.
pub const TIER2: &[HookSpec] = &[
    hook(
        "t2_ct_free",
        RawTp,
        &["kmem_cache_free"],
        "end of every entry: destroy and its reason",
    ),
    hook(
        "t2_dev_queue",
        TpBtf,
        &["net_dev_queue"],
        "new entries (first seen confirmed on egress), NAT-clash inserts",
    ),
    hook(
        "t2_nf_drop",
        TpBtf,
        &["kfree_skb"],
        "insert_failed and table_full drops (checked against counters)",
    ),
];

/// Programs without which a tier cannot tell new, failed and destroyed entries apart.
pub const TIER1_ESSENTIAL: &[&str] = &["confirm_enter", "confirm_exit", "ct_delete_enter"];
pub const TIER2_ESSENTIAL: &[&str] = &["t2_ct_free", "t2_dev_queue", "t2_nf_drop"];

/// A test switch: a comma-separated list of functions ctscope treats as absent from
/// /proc/kallsyms, to prove that a probe which stops attaching fails the test stages
/// instead of skipping them.
pub const HIDE_SYMBOL_ENV: &str = "CTSCOPE_HIDE_SYMBOL";

/// Text symbols of the running kernel, from /proc/kallsyms.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// Symbol name → how many text symbols carry it (duplicates cannot be probed by name).
    names: HashMap<String, u32>,
}

impl Kallsyms {
    /// The text symbols of /proc/kallsyms's `text`, less those [`HIDE_SYMBOL_ENV`] hides.
    pub fn of(text: &str) -> Self {
        let mut syms = Self::parse(text);
        if let Ok(hidden) = std::env::var(HIDE_SYMBOL_ENV) {
            syms.hide(hidden.split(',').filter(|s| !s.is_empty()));
        }
        syms
    }

    /// Forgets `funcs` and their compiler clones, as if the kernel lacked them.
    fn hide<'a>(&mut self, funcs: impl Iterator<Item = &'a str>) {
        for func in funcs {
            let clone = format!("{func}.");
            self.names
                .retain(|name, _| name != func && !name.starts_with(&clone));
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut names = HashMap::new();
        for (_, _, name) in code::kallsyms_lines(text).filter(|(_, kind, _)| code::is_text(kind)) {
            *names.entry(name.to_string()).or_insert(0) += 1;
        }
        Self { names }
    }

    /// The one `func.part.N` symbol: the tail of a function whose head the compiler
    /// inlined into its callers, which then call the tail directly, past `func`.
    pub fn part_of(&self, func: &str) -> Option<String> {
        let prefix = format!("{func}.part.");
        let mut parts = self.names.iter().filter(|(name, n)| {
            **n == 1
                && name
                    .strip_prefix(&prefix)
                    .is_some_and(|num| num.chars().all(|c| c.is_ascii_digit()))
        });
        let (name, _) = parts.next()?;
        parts.next().is_none().then(|| name.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The probe-able symbol for `func`: the exact name, or a compiler-renamed clone.
    pub fn resolve(&self, func: &str) -> Resolution {
        if let Some(&n) = self.names.get(func) {
            return if n == 1 {
                Resolution::Found(func.to_string())
            } else {
                Resolution::Ambiguous(n)
            };
        }
        let mut clones: Vec<&String> = self
            .names
            .keys()
            .filter(|name| is_clone_of(name, func))
            .collect();
        clones.sort();
        match clones.first() {
            Some(name) => Resolution::Found((*name).clone()),
            None => Resolution::Missing,
        }
    }
}

/// How a function name maps onto this kernel's symbols.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    Found(String),
    /// Several text symbols share the name; a kprobe by name would be refused.
    Ambiguous(u32),
    /// Not in kallsyms: inlined, renamed, or the code is not built.
    Missing,
}

/// `name.isra.0`, `name.constprop.0`, `name.part.0` (and chains of them), never `.cold`.
fn is_clone_of(symbol: &str, func: &str) -> bool {
    let Some(rest) = symbol.strip_prefix(func).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.chunks(2).all(|pair| {
        matches!(pair, [kind, num] if matches!(*kind, "isra" | "constprop" | "part")
            && num.chars().all(|c| c.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffffc0a01000 t early_drop.constprop.0\t[nf_conntrack]
ffffffffc0a02000 t gc_worker\t[nf_conntrack]
ffffffffc0a03000 t nf_ct_delete.cold\t[nf_conntrack]
ffffffffc0a04000 T nf_ct_delete\t[nf_conntrack]
ffffffff81000000 t dup\nffffffff81000010 t dup
ffffffff81000020 d nf_conntrack_max
";

    #[test]
    fn resolves_exact_clone_and_rejects_cold_and_data() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(
            k.resolve("nf_ct_delete"),
            Resolution::Found("nf_ct_delete".into())
        );
        assert_eq!(
            k.resolve("early_drop"),
            Resolution::Found("early_drop.constprop.0".into())
        );
        assert_eq!(k.resolve("dup"), Resolution::Ambiguous(2));
        assert_eq!(k.resolve("nf_conntrack_max"), Resolution::Missing);
        assert_eq!(k.resolve("gc"), Resolution::Missing);
    }

    #[test]
    fn a_single_part_clone_is_found() {
        let k = Kallsyms::parse(
            "ffffffffc028da80 t nf_ct_delete.part.0\t[nf_conntrack]\n\
             ffffffffc028db00 T nf_ct_delete\t[nf_conntrack]\n\
             ffffffffc028dc00 t two.part.0\nffffffffc028dd00 t two.part.1\n",
        );
        assert_eq!(
            k.part_of("nf_ct_delete"),
            Some("nf_ct_delete.part.0".into())
        );
        assert_eq!(k.part_of("two"), None);
        assert_eq!(k.part_of("gc_worker"), None);
    }

    #[test]
    fn hidden_symbols_and_their_clones_are_missing() {
        let mut k = Kallsyms::parse(SAMPLE);
        k.hide(["early_drop", "nf_ct_delete"].into_iter());
        assert_eq!(k.resolve("early_drop"), Resolution::Missing);
        assert_eq!(k.resolve("nf_ct_delete"), Resolution::Missing);
        assert_eq!(
            k.resolve("gc_worker"),
            Resolution::Found("gc_worker".into())
        );
    }

    #[test]
    fn clone_suffixes() {
        assert!(is_clone_of("f.isra.0", "f"));
        assert!(is_clone_of("f.constprop.0.isra.0", "f"));
        assert!(!is_clone_of("f.cold", "f"));
        assert!(!is_clone_of("f.part.0.cold", "f"));
        assert!(!is_clone_of("fg.isra.0", "f"));
    }

    #[test]
    fn every_program_has_a_target() {
        assert!(TIER1.iter().chain(TIER2).all(|h| !h.targets.is_empty()));
        for name in TIER1_ESSENTIAL {
            assert!(TIER1.iter().any(|h| h.program == *name), "{name}");
        }
        for name in TIER2_ESSENTIAL {
            assert!(TIER2.iter().any(|h| h.program == *name), "{name}");
        }
    }
}

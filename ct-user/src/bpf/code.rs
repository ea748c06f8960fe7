//! Code addresses from /proc/kallsyms for the facts BTF cannot give on older kernels
//! (5.10): whose `kfree_skb` is a netfilter drop and whose `kmem_cache_free` frees a
//! conntrack entry, when the tracepoints carry no drop reason and no cache.

use std::collections::BTreeSet;

use ct_common::{ABSENT, CodeRanges, KernelLayout};

/// Where a netfilter hook's verdict frees a dropped packet.
const NF_HOOK_SLOW: &str = "nf_hook_slow";
/// Where conntrack returns an entry to its slab.
const CT_FREE: &str = "nf_conntrack_free";
/// In a note whose fact is undecidable because /proc/kallsyms hides an address.
pub const HIDDEN: &str = "has no address in /proc/kallsyms";

/// The ranges `layout` needs (none on kernels whose tracepoints say it themselves), from
/// the text of /proc/kallsyms, with a note per range saying what it decides and where it
/// came from, or why it is missing.
pub fn ranges(layout: &KernelLayout, kallsyms: &str, notes: &mut Vec<String>) -> CodeRanges {
    let mut code = CodeRanges::none();
    let need_drop = layout.drop_reason_netfilter == ABSENT;
    let need_free = layout.kmem_free_arg_is_name == ABSENT;
    if !need_drop && !need_free {
        return code;
    }
    let symbols = TextSymbols::parse(kallsyms);
    let mut fill = |func: &str, slot: &mut [u64; 2], what: &str| match symbols.range(func) {
        Some(range) => {
            *slot = range;
            notes.push(format!(
                "{what}: decided by the caller, {func} at {:#x}..{:#x} (/proc/kallsyms)",
                range[0], range[1]
            ));
        }
        None => notes.push(format!(
            "{what}: undecidable: {func} {HIDDEN}: reading kernel addresses there takes \
             CAP_SYSLOG (or root), and kernel.kptr_restrict below 2"
        )),
    };
    if need_drop {
        fill(
            NF_HOOK_SLOW,
            &mut code.nf_hook_slow,
            "kfree_skb has no drop reason, so a netfilter drop",
        );
    }
    if need_free {
        fill(
            CT_FREE,
            &mut code.ct_free,
            "kmem_cache_free does not name the cache, so a conntrack entry's free",
        );
    }
    code
}

/// The lines of a /proc/kallsyms text as (address, kind, name), malformed lines skipped.
pub fn kallsyms_lines(text: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    text.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        Some((fields.next()?, fields.next()?, fields.next()?))
    })
}

/// Whether a kallsyms kind is a function's (text).
pub fn is_text(kind: &str) -> bool {
    matches!(kind, "t" | "T")
}

/// Text symbol addresses, and every symbol address to find where a function ends.
struct TextSymbols<'a> {
    text: Vec<(&'a str, u64)>,
    all: BTreeSet<u64>,
}

impl<'a> TextSymbols<'a> {
    fn parse(kallsyms: &'a str) -> Self {
        let mut text = Vec::new();
        let mut all = BTreeSet::new();
        for (addr, kind, name) in kallsyms_lines(kallsyms) {
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue; // Hidden: kptr_restrict, or not root.
            }
            all.insert(addr);
            if is_text(kind) {
                text.push((name, addr));
            }
        }
        Self { text, all }
    }

    /// `[start, end)` of `func`: its address up to the next symbol's. None if absent or
    /// ambiguous (two functions of that name).
    fn range(&self, func: &str) -> Option<[u64; 2]> {
        let mut starts = self
            .text
            .iter()
            .filter(|(n, _)| *n == func)
            .map(|(_, a)| *a);
        let start = starts.next()?;
        if starts.next().is_some() {
            return None;
        }
        let end = self.all.range(start + 1..).next().copied()?;
        Some([start, end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81a00000 T nf_hook_slow
ffffffff81a00100 t nf_hook_slow_list
ffffffffc0a01000 T nf_conntrack_free\t[nf_conntrack]
ffffffffc0a01080 d some_data\t[nf_conntrack]
ffffffffc0a02000 t dup
ffffffffc0a03000 t dup
0000000000000000 T hidden
";

    #[test]
    fn a_function_ends_at_the_next_symbol() {
        let s = TextSymbols::parse(SAMPLE);
        assert_eq!(
            s.range("nf_hook_slow"),
            Some([0xffffffff81a00000, 0xffffffff81a00100])
        );
        assert_eq!(
            s.range("nf_conntrack_free"),
            Some([0xffffffffc0a01000, 0xffffffffc0a01080])
        );
        assert_eq!(s.range("dup"), None);
        assert_eq!(s.range("hidden"), None);
        assert_eq!(s.range("absent"), None);
    }

    #[test]
    fn kernels_whose_tracepoints_say_it_need_no_range() {
        let mut layout = KernelLayout::absent();
        layout.drop_reason_netfilter = 12;
        layout.kmem_free_arg_is_name = 0;
        let mut notes = Vec::new();
        assert_eq!(ranges(&layout, SAMPLE, &mut notes), CodeRanges::none());
        assert!(notes.is_empty());
    }
}

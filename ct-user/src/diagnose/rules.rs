//! One function per finding. Each looks only at [`Evidence`] and returns a [`Finding`]
//! when its condition holds.

use ct_common::Cause;
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::{Evidence, Finding, Severity, mib, pct, ratio};

/// A share of the table counts as "dominating" from this fraction and [`MIN_ENTRIES`] on.
const SHARE: f64 = 0.25;
const MIN_ENTRIES: u64 = 100;
/// Fill from which the table counts as near full.
const NEAR_FULL: f64 = 0.9;
const FILL_WARN: f64 = 0.75;
const FILL_CRIT: f64 = 0.95;
/// Average entries per bucket beyond which lookups walk long chains.
const LOAD_WARN: f64 = 4.0;
/// kube-proxy's choice for nf_conntrack_tcp_timeout_established (the kernel's is 5 days).
const TCP_ESTABLISHED_SANE: u64 = 86_400;

const SYSCTL: &str = "sysctl -w net.netfilter.";

/// Every rule, in report order.
pub fn all(ev: &Evidence) -> Vec<Finding> {
    let rules: [fn(&Evidence) -> Option<Finding>; 14] = [
        table_full,
        table_fill,
        hash_buckets,
        early_drop,
        chain_too_long,
        snat_port_clash,
        dns_race,
        dns_notrack,
        insert_failed_other,
        insert_failed_causes,
        tcp_established_timeout,
        udp_unreplied,
        tcp_closing,
        helper_auto,
    ];
    rules.iter().filter_map(|rule| rule(ev)).collect()
}

/// The rules about timeouts that let entries fill the table, in report order: what
/// `ctscope timeouts` warns about (`all` runs them too).
pub fn timeouts(ev: &Evidence) -> Vec<Finding> {
    let rules: [fn(&Evidence) -> Option<Finding>; 3] =
        [tcp_established_timeout, udp_unreplied, tcp_closing];
    rules.iter().filter_map(|rule| rule(ev)).collect()
}

fn finding(
    ev: &Evidence,
    id: &'static str,
    severity: Severity,
    summary: String,
    evidence: Value,
    recommendation: String,
) -> Option<Finding> {
    Some(Finding {
        id,
        severity,
        netns: ev.netns,
        summary,
        evidence,
        recommendation,
    })
}

/// True when `part` is a dominating share of the table.
fn dominates(part: u64, ev: &Evidence) -> bool {
    part >= MIN_ENTRIES && ratio(part, ev.table.dumped) >= SHARE
}

/// The limit doubled, never below 65536: the command to raise it.
fn raise_max(ev: &Evidence) -> String {
    let new = (ev.max() * 2).max(65_536);
    let per_entry = ev.memory.per_entry_bytes;
    format!(
        "{SYSCTL}nf_conntrack_max={new} (global, run it in the initial namespace; ~{} at \
         full, estimated)",
        mib(new * per_entry + ev.memory.hash_bytes)
    )
}

/// Commands that shorten the timeouts of what fills the table.
fn timeout_cuts(ev: &Evidence) -> Vec<String> {
    let t = &ev.table;
    let mut cmds = Vec::new();
    let tcp_est = ev.sysctl("nf_conntrack_tcp_timeout_established");
    if t.tcp_state("ESTABLISHED") > 0 && tcp_est.is_some_and(|v| v > TCP_ESTABLISHED_SANE) {
        cmds.push(format!(
            "{SYSCTL}nf_conntrack_tcp_timeout_established={TCP_ESTABLISHED_SANE}"
        ));
    }
    if t.tcp_state("TIME_WAIT") > 0 && ev.sysctl("nf_conntrack_tcp_timeout_time_wait") > Some(30) {
        cmds.push(format!("{SYSCTL}nf_conntrack_tcp_timeout_time_wait=30"));
    }
    if t.udp_unreplied > 0 && ev.sysctl("nf_conntrack_udp_timeout") > Some(10) {
        cmds.push(format!("{SYSCTL}nf_conntrack_udp_timeout=10"));
    }
    cmds
}

/// Raise the limit, shorten timeouts, find who fills it.
fn make_room(ev: &Evidence) -> String {
    let mut steps = vec![format!("raise the limit: {}", raise_max(ev))];
    let cuts = timeout_cuts(ev);
    if !cuts.is_empty() {
        steps.push(format!("or shorten timeouts: {}", cuts.join("; ")));
    }
    steps.push("see who fills the table: ctscope top --by src (or --by dport)".into());
    steps.join("; ")
}

/// New flows dropped because the table is (near) full; or drops that clashes do not
/// explain, from a full table earlier.
pub fn table_full(ev: &Evidence) -> Option<Finding> {
    let (drop, failed) = (ev.counter("drop"), ev.counter("insert_failed"));
    let full = ev.fill() >= NEAR_FULL;
    if drop == 0 || (!full && drop <= failed) {
        return None;
    }
    let evidence = json!({
        "drop": drop, "insert_failed": failed, "early_drop": ev.counter("early_drop"),
        "count": ev.count(), "max": ev.max(), "fill_pct": pct(ev.count(), ev.max()),
    });
    let (severity, summary) = if full {
        (
            Severity::Crit,
            format!(
                "table full: {} of {} entries in use and {drop} packets dropped \
                 (\"nf_conntrack: table full, dropping packet\")",
                ev.count(),
                ev.max()
            ),
        )
    } else {
        (
            Severity::Warn,
            format!(
                "{drop} packets dropped, more than the {failed} insert failures explain: \
                 the table was probably full earlier (counters are cumulative)"
            ),
        )
    };
    finding(ev, "table_full", severity, summary, evidence, make_room(ev))
}

/// Table fill against the limit, and what the table costs in memory.
pub fn table_fill(ev: &Evidence) -> Option<Finding> {
    let (count, max, fill) = (ev.count(), ev.max(), ev.fill());
    let m = &ev.memory;
    let severity = match fill {
        f if f >= FILL_CRIT => Severity::Crit,
        f if f >= FILL_WARN => Severity::Warn,
        _ => Severity::Info,
    };
    let nf_conn_src = if m.nf_conn_from_btf { "BTF" } else { "assumed" };
    let summary = format!(
        "{count} of {max} entries ({}%); memory ~{} now, ~{} at the limit (estimate: entries × \
         ({} B struct nf_conn from {nf_conn_src} + {} B extensions) + {} B hash table)",
        pct(count, max),
        mib(m.now_bytes),
        mib(m.at_max_bytes),
        m.nf_conn_bytes,
        m.ext_bytes,
        m.hash_bytes
    );
    let evidence = json!({
        "count": count, "max": max, "fill_pct": pct(count, max),
        "per_entry_bytes": m.per_entry_bytes, "hash_bytes": m.hash_bytes,
        "memory_now_bytes": m.now_bytes, "memory_at_max_bytes": m.at_max_bytes,
        "estimate": true,
    });
    let recommendation = if severity == Severity::Info {
        format!(
            "nothing to do: {} entries of headroom",
            max.saturating_sub(count)
        )
    } else {
        make_room(ev)
    };
    finding(
        ev,
        "table_fill",
        severity,
        summary,
        evidence,
        recommendation,
    )
}

/// Bucket count and load factor (entries per bucket, now and at the limit).
pub fn hash_buckets(ev: &Evidence) -> Option<Finding> {
    let buckets = ev.sysctl("nf_conntrack_buckets")?;
    let load = ratio(ev.count(), buckets);
    let load_at_max = ratio(ev.max(), buckets);
    let severity = if load > LOAD_WARN {
        Severity::Warn
    } else {
        Severity::Info
    };
    let summary = format!(
        "{buckets} hash buckets: {load:.2} entries per bucket now, {load_at_max:.2} at the limit"
    );
    let evidence = json!({
        "buckets": buckets, "count": ev.count(), "max": ev.max(),
        "load_factor": round2(load), "load_factor_at_max": round2(load_at_max),
    });
    let recommendation = if severity == Severity::Info {
        "nothing to do: chains are short".to_owned()
    } else {
        format!(
            "long hash chains slow every lookup: {SYSCTL}nf_conntrack_buckets={} (initial \
             namespace; or the nf_conntrack module parameter hashsize)",
            ev.max().max(ev.count()).next_power_of_two()
        )
    };
    finding(
        ev,
        "hash_buckets",
        severity,
        summary,
        evidence,
        recommendation,
    )
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Entries evicted early to make room: the table was full enough to hurt.
pub fn early_drop(ev: &Evidence) -> Option<Finding> {
    let n = ev.counter("early_drop");
    if n == 0 {
        return None;
    }
    let summary =
        format!("{n} unassured entries were evicted early to admit new flows: the table ran full");
    let evidence = json!({ "early_drop": n, "count": ev.count(), "max": ev.max() });
    finding(
        ev,
        "early_drop",
        Severity::Warn,
        summary,
        evidence,
        make_room(ev),
    )
}

/// Inserts refused because a hash chain grew too long.
pub fn chain_too_long(ev: &Evidence) -> Option<Finding> {
    let n = ev.counter("chaintoolong");
    if n == 0 {
        return None;
    }
    let buckets = ev.sysctl("nf_conntrack_buckets").unwrap_or(0);
    let summary = format!(
        "{n} inserts failed because a hash chain was too long ({buckets} buckets for {} \
         entries; also a sign of hash flooding)",
        ev.count()
    );
    let evidence = json!({ "chaintoolong": n, "buckets": buckets, "count": ev.count() });
    let recommendation = format!(
        "more buckets: {SYSCTL}nf_conntrack_buckets={} (initial namespace)",
        (buckets * 2).max(ev.max()).next_power_of_two()
    );
    finding(
        ev,
        "chain_too_long",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

/// insert_failed with SNAT entries in the table: two flows got the same NAT mapping.
pub fn snat_port_clash(ev: &Evidence) -> Option<Finding> {
    let failed = ev.counter("insert_failed");
    let snat = ev.table.src_nat;
    if failed == 0 || snat == 0 {
        return None;
    }
    let mut summary = format!(
        "{failed} insert failures with {snat} SNAT entries in the table: SNAT port clashes \
         (two flows mapped to the same source port; the loser is dropped silently)"
    );
    if !ev.counters.contains_key("clash_resolve") {
        summary.push_str("; before 5.10 insert_failed also counts resolved clashes");
    }
    let evidence = json!({
        "insert_failed": failed, "drop": ev.counter("drop"),
        "clash_resolve": ev.counter("clash_resolve"), "src_nat_entries": snat,
    });
    let recommendation = "have the kernel pick fully random source ports: nft `masquerade \
         fully-random` or `snat to ADDR:1024-65535 fully-random`, iptables `-j MASQUERADE \
         --random-fully` or `-j SNAT --to-source ADDR:1024-65535 --random-fully`; widen the \
         port range or add SNAT addresses so the mapping has room; `ctscope events --kind \
         insert_failed` names each loser and winner"
        .to_owned();
    finding(
        ev,
        "snat_port_clash",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

const NOTRACK_DNS: &str = "nft add table inet raw; nft 'add chain inet raw pre { type filter \
     hook prerouting priority raw; }'; nft 'add chain inet raw out { type filter hook output \
     priority raw; }'; nft add rule inet raw pre udp dport 53 notrack; nft add rule inet raw \
     out udp sport 53 notrack";

/// Resolved clashes (the parallel A/AAAA race) with DNS in the table.
pub fn dns_race(ev: &Evidence) -> Option<Finding> {
    let resolved = ev.counter("clash_resolve");
    let dns = ev.table.dns_udp;
    if resolved == 0 {
        return None;
    }
    let failed = ev.counter("insert_failed");
    let severity = if failed > 0 {
        Severity::Warn
    } else {
        Severity::Info
    };
    let summary = format!(
        "{resolved} clashes of one flow sent from two CPUs at once (typically the DNS \
         A/AAAA race: parallel queries from one socket), {failed} insert failures, {dns} DNS entries"
    );
    let evidence = json!({
        "clash_resolve": resolved, "insert_failed": failed, "drop": ev.counter("drop"),
        "dns_udp_entries": dns,
    });
    let recommendation = format!(
        "in clients' /etc/resolv.conf: `options single-request-reopen` (glibc; Kubernetes: \
         dnsConfig options) or resolve over TCP (`options use-vc`); on a busy DNS server, \
         do not track DNS: {NOTRACK_DNS}"
    );
    finding(ev, "dns_race", severity, summary, evidence, recommendation)
}

/// UDP port 53 makes up much of the table: a busy DNS server or resolver.
pub fn dns_notrack(ev: &Evidence) -> Option<Finding> {
    let dns = ev.table.dns_udp;
    if !dominates(dns, ev) {
        return None;
    }
    let summary = format!(
        "{dns} of {} entries ({}%) are UDP to port 53: DNS fills the table",
        ev.table.dumped,
        pct(dns, ev.table.dumped)
    );
    let evidence = json!({
        "dns_udp_entries": dns, "dumped": ev.table.dumped,
        "udp_timeout": ev.sysctl("nf_conntrack_udp_timeout"),
    });
    let recommendation = format!(
        "a DNS server gains nothing from tracking its queries: {NOTRACK_DNS} (for a \
         resolver's outgoing queries: output `udp dport 53`, prerouting `udp sport 53`)"
    );
    finding(
        ev,
        "dns_notrack",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

/// insert_failed with neither SNAT nor DNS to explain it.
pub fn insert_failed_other(ev: &Evidence) -> Option<Finding> {
    let failed = ev.counter("insert_failed");
    if failed == 0 || ev.table.src_nat > 0 || ev.counter("clash_resolve") > 0 {
        return None;
    }
    let summary = format!("{failed} insert failures without SNAT entries or resolved clashes");
    let evidence = json!({
        "insert_failed": failed, "drop": ev.counter("drop"),
        "chaintoolong": ev.counter("chaintoolong"),
    });
    let recommendation = "watch the causes as they happen: ctscope events --kind insert_failed \
         (same-flow races, dying entries, long chains, NAT clashes)"
        .to_owned();
    finding(
        ev,
        "insert_failed",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

/// What to do about insert failures of one cause, as the agent names it.
fn remedy(cause: &str) -> &'static str {
    use serde::de::{IntoDeserializer as _, value::Error};
    let cause = Cause::deserialize(cause.into_deserializer()).map_err(|_: Error| ());
    match cause.unwrap_or(Cause::Unknown) {
        Cause::NatPortClash => {
            "SNAT gave two flows one mapping: `masquerade fully-random` / `--random-fully`, \
             a wider port range or more SNAT addresses"
        }
        Cause::SameFlowRace => {
            "one flow was sent from two CPUs at once and could not be merged (the DNS A/AAAA \
             race with NAT to different backends, or TCP): `options single-request-reopen` or \
             `use-vc` in resolv.conf"
        }
        Cause::ChainTooLong => {
            "hash chains grew too long: raise net.netfilter.nf_conntrack_buckets (and \
             nf_conntrack_max), and look for one flow key dominating `ctscope top`"
        }
        Cause::Dying => {
            "entries were deleted before their first packet was confirmed: something (a \
             `conntrack -D`/`-F`, a ctnetlink client, a netns teardown) deletes live flows"
        }
        _ => "watch them as they happen: `ctscope events --kind insert_failed`",
    }
}

/// With an agent running: the insert_failed causes its events gave, and what the biggest
/// one points to.
pub fn insert_failed_causes(ev: &Evidence) -> Option<Finding> {
    let c = ev.causes.as_ref()?;
    let total: u64 = c.insert_failed.values().sum();
    let (top, n) = c.insert_failed.iter().max_by_key(|(_, n)| **n)?;
    if total == 0 {
        return None;
    }
    let list = c
        .insert_failed
        .iter()
        .map(|(cause, n)| format!("{cause} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let summary = format!(
        "{total} insert failures in the last {:.0} minutes, by cause: {list}; {top} \
         dominates ({}%)",
        c.minutes.max(1.0),
        pct(*n, total)
    );
    let evidence = json!({
        "minutes": c.minutes, "insert_failed": c.insert_failed,
        "clash_resolved": c.clash_resolved, "table_full": c.table_full,
        "early_drop": c.early_drop,
    });
    let recommendation = remedy(top).to_owned();
    finding(
        ev,
        "insert_failed_causes",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

/// The 5-day TCP established timeout with many established entries.
pub fn tcp_established_timeout(ev: &Evidence) -> Option<Finding> {
    let timeout = ev.sysctl("nf_conntrack_tcp_timeout_established")?;
    let est = ev.table.tcp_state("ESTABLISHED");
    if timeout <= TCP_ESTABLISHED_SANE || !dominates(est, ev) {
        return None;
    }
    let summary = format!(
        "{est} ESTABLISHED TCP entries and a {timeout} s ({:.1} days) established timeout: \
         dead connections stay for days",
        timeout as f64 / 86_400.0
    );
    let evidence = json!({ "tcp_timeout_established": timeout, "established": est,
        "dumped": ev.table.dumped });
    let recommendation = format!(
        "{SYSCTL}nf_conntrack_tcp_timeout_established={TCP_ESTABLISHED_SANE} (longer than \
         the applications' idle time or keepalive interval)"
    );
    finding(
        ev,
        "tcp_established_timeout",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

/// UDP entries that never got a reply pile up.
pub fn udp_unreplied(ev: &Evidence) -> Option<Finding> {
    let n = ev.table.udp_unreplied;
    if !dominates(n, ev) {
        return None;
    }
    let timeout = ev.sysctl("nf_conntrack_udp_timeout");
    let summary = format!(
        "{n} of {} entries ({}%) are UDP flows that never saw a reply",
        ev.table.dumped,
        pct(n, ev.table.dumped)
    );
    let evidence = json!({ "udp_unreplied": n, "dumped": ev.table.dumped,
        "udp_timeout": timeout });
    let recommendation = format!(
        "shorten their timeout: {SYSCTL}nf_conntrack_udp_timeout=10; find the senders and \
         targets: ctscope top --by src / --by dst; NOTRACK stateless UDP services"
    );
    finding(
        ev,
        "udp_unreplied",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

/// Closed TCP connections (CLOSE, TIME_WAIT, ...) dominate the table.
pub fn tcp_closing(ev: &Evidence) -> Option<Finding> {
    let states = ["CLOSE", "TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT", "LAST_ACK"];
    let n: u64 = states.iter().map(|s| ev.table.tcp_state(s)).sum();
    if !dominates(n, ev) {
        return None;
    }
    let summary = format!(
        "{n} of {} entries ({}%) are closing or closed TCP connections (TIME_WAIT {}, CLOSE {})",
        ev.table.dumped,
        pct(n, ev.table.dumped),
        ev.table.tcp_state("TIME_WAIT"),
        ev.table.tcp_state("CLOSE")
    );
    let evidence = json!({
        "closing": n, "time_wait": ev.table.tcp_state("TIME_WAIT"),
        "close": ev.table.tcp_state("CLOSE"), "dumped": ev.table.dumped,
        "tcp_timeout_time_wait": ev.sysctl("nf_conntrack_tcp_timeout_time_wait"),
        "tcp_timeout_close_wait": ev.sysctl("nf_conntrack_tcp_timeout_close_wait"),
    });
    let recommendation = format!(
        "shorten the closing timeouts: {SYSCTL}nf_conntrack_tcp_timeout_time_wait=30; \
         {SYSCTL}nf_conntrack_tcp_timeout_close_wait=30; many short connections: reuse them \
         (keep-alive, pooling)"
    );
    finding(
        ev,
        "tcp_closing",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

/// Automatic helper assignment (`nf_conntrack_helper=1`, gone in 6.0).
pub fn helper_auto(ev: &Evidence) -> Option<Finding> {
    if ev.sysctl("nf_conntrack_helper") != Some(1) {
        return None;
    }
    let summary = format!(
        "automatic helper assignment is on: any flow to a helper's port gets a helper \
         ({} entries have one), which opens expectations an attacker can use",
        ev.table.with_helper
    );
    let evidence = json!({ "nf_conntrack_helper": 1, "with_helper": ev.table.with_helper });
    let recommendation = format!(
        "{SYSCTL}nf_conntrack_helper=0, then assign helpers explicitly where needed: nft \
         `ct helper set \"ftp\"` or iptables `-t raw -j CT --helper ftp`"
    );
    finding(
        ev,
        "helper_auto",
        Severity::Warn,
        summary,
        evidence,
        recommendation,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::diagnose::{Composition, Memory};

    /// A namespace with `count` of `max` entries, 65536 buckets, default timeouts and
    /// the given counters.
    #[test]
    fn insert_failed_causes_names_the_dominant_one() {
        let mut e = ev(10, 100, &[("insert_failed", 3)]);
        assert!(insert_failed_causes(&e).is_none(), "no agent, no finding");
        e.causes = Some(super::super::Causes {
            minutes: 4.0,
            insert_failed: [("nat_port_clash".into(), 2), ("dying".into(), 1)].into(),
            ..Default::default()
        });
        let f = insert_failed_causes(&e).expect("a finding");
        assert!(
            f.summary.contains("nat_port_clash dominates (66.7%)"),
            "{}",
            f.summary
        );
        assert!(
            f.recommendation.contains("random-fully"),
            "{}",
            f.recommendation
        );
    }

    fn ev(count: u64, max: u64, counters: &[(&str, u64)]) -> Evidence {
        let sysctls = [
            ("nf_conntrack_count", count),
            ("nf_conntrack_max", max),
            ("nf_conntrack_buckets", 65_536),
            ("nf_conntrack_tcp_timeout_established", 432_000),
            ("nf_conntrack_tcp_timeout_time_wait", 120),
            ("nf_conntrack_udp_timeout", 30),
        ];
        Evidence {
            netns: 7,
            sysctls: sysctls.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            counters: counters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            entries: count,
            max_entries: Some(max),
            table: Composition {
                dumped: count,
                ..Composition::default()
            },
            memory: Memory {
                per_entry_bytes: 376,
                ..Memory::default()
            },
            ..Evidence::default()
        }
    }

    fn ids(ev: &Evidence) -> Vec<&'static str> {
        all(ev).iter().map(|f| f.id).collect()
    }

    #[test]
    fn quiet_table_has_only_info_findings() {
        let e = ev(10, 262_144, &[("drop", 0), ("insert_failed", 0)]);
        assert_eq!(ids(&e), ["table_fill", "hash_buckets"]);
        assert!(all(&e).iter().all(|f| f.severity == Severity::Info));
        assert_eq!(all(&e)[0].netns, 7);
    }

    #[test]
    fn table_full_needs_drops_and_a_full_table() {
        let f = table_full(&ev(8, 8, &[("drop", 12)])).unwrap();
        assert_eq!(f.severity, Severity::Crit);
        assert_eq!(f.evidence["drop"], 12);
        assert!(
            f.recommendation
                .contains("sysctl -w net.netfilter.nf_conntrack_max=65536")
        );
        assert!(table_full(&ev(8, 8, &[("drop", 0)])).is_none());
        // One drop per SNAT clash: not a full table.
        assert!(table_full(&ev(1, 100, &[("drop", 1), ("insert_failed", 1)])).is_none());
        let earlier = table_full(&ev(1, 100, &[("drop", 5), ("insert_failed", 1)])).unwrap();
        assert_eq!(earlier.severity, Severity::Warn);
    }

    #[test]
    fn table_full_suggests_the_timeouts_of_what_fills_it() {
        let mut e = ev(8, 8, &[("drop", 3)]);
        e.table.udp_unreplied = 8;
        let f = table_full(&e).unwrap();
        assert!(
            f.recommendation.contains("nf_conntrack_udp_timeout=10"),
            "{f:?}"
        );
        assert!(!f.recommendation.contains("time_wait"), "{f:?}");
    }

    #[test]
    fn table_fill_severity_and_memory() {
        assert_eq!(
            table_fill(&ev(10, 100, &[])).unwrap().severity,
            Severity::Info
        );
        assert_eq!(
            table_fill(&ev(80, 100, &[])).unwrap().severity,
            Severity::Warn
        );
        let f = table_fill(&ev(99, 100, &[])).unwrap();
        assert_eq!(f.severity, Severity::Crit);
        assert_eq!(f.evidence["fill_pct"], 99.0);
        assert!(f.summary.contains("estimate"), "{}", f.summary);
    }

    #[test]
    fn hash_buckets_load_factor() {
        let f = hash_buckets(&ev(32_768, 262_144, &[])).unwrap();
        assert_eq!(f.evidence["load_factor"], 0.5);
        assert_eq!(f.evidence["load_factor_at_max"], 4.0);
        assert_eq!(f.severity, Severity::Info);
        let loaded = hash_buckets(&ev(300_000, 1_000_000, &[])).unwrap();
        assert_eq!(loaded.severity, Severity::Warn);
        assert!(
            loaded
                .recommendation
                .contains("nf_conntrack_buckets=1048576")
        );
    }

    #[test]
    fn early_drop_and_chain_too_long_fire_on_their_counters() {
        assert!(early_drop(&ev(1, 8, &[("early_drop", 0)])).is_none());
        assert_eq!(
            early_drop(&ev(1, 8, &[("early_drop", 3)]))
                .unwrap()
                .evidence["early_drop"],
            3
        );
        assert!(chain_too_long(&ev(1, 8, &[])).is_none());
        let f = chain_too_long(&ev(1, 8, &[("chaintoolong", 2)])).unwrap();
        assert!(
            f.recommendation.contains("nf_conntrack_buckets=131072"),
            "{f:?}"
        );
    }

    #[test]
    fn snat_clash_needs_insert_failed_and_snat_entries() {
        let mut e = ev(1, 100, &[("insert_failed", 1), ("clash_resolve", 0)]);
        assert!(snat_port_clash(&e).is_none());
        e.table.src_nat = 1;
        let f = snat_port_clash(&e).unwrap();
        assert!(f.recommendation.contains("fully-random"));
        assert!(f.recommendation.contains("--random-fully"));
        assert!(!f.summary.contains("before 5.10"));
        e.counters.remove("clash_resolve");
        assert!(snat_port_clash(&e).unwrap().summary.contains("before 5.10"));
        assert!(ids(&e).contains(&"snat_port_clash"));
        assert!(!ids(&e).contains(&"insert_failed"));
    }

    #[test]
    fn dns_race_on_resolved_clashes() {
        assert!(dns_race(&ev(1, 100, &[])).is_none());
        let f = dns_race(&ev(1, 100, &[("clash_resolve", 4)])).unwrap();
        assert_eq!(f.severity, Severity::Info);
        assert!(f.recommendation.contains("single-request-reopen"));
        assert!(f.recommendation.contains("udp dport 53 notrack"));
        let lost = dns_race(&ev(1, 100, &[("clash_resolve", 4), ("insert_failed", 1)]));
        assert_eq!(lost.unwrap().severity, Severity::Warn);
    }

    #[test]
    fn shares_need_enough_entries() {
        let mut e = ev(400, 1000, &[]);
        e.table.dns_udp = 99;
        assert!(dns_notrack(&e).is_none(), "below MIN_ENTRIES");
        e.table.dns_udp = 100;
        assert!(dns_notrack(&e).is_some());
        e.table.udp_unreplied = 90;
        assert!(udp_unreplied(&e).is_none());
        e.table.udp_unreplied = 200;
        assert!(
            udp_unreplied(&e)
                .unwrap()
                .recommendation
                .contains("udp_timeout=10")
        );
        e.table.tcp_states = BTreeMap::from([("TIME_WAIT".into(), 150), ("CLOSE".into(), 10)]);
        assert_eq!(tcp_closing(&e).unwrap().evidence["closing"], 160);
    }

    #[test]
    fn timeouts_runs_only_the_timeout_rules() {
        let mut e = ev(400, 1000, &[("drop", 5)]);
        e.table.dns_udp = 200;
        e.table.udp_unreplied = 200;
        e.table.tcp_states = BTreeMap::from([("ESTABLISHED".into(), 150)]);
        let got: Vec<_> = timeouts(&e).iter().map(|f| f.id).collect();
        assert_eq!(got, ["tcp_established_timeout", "udp_unreplied"]);
        assert!(ids(&e).contains(&"dns_notrack"));
        assert!(ids(&e).contains(&"udp_unreplied"));
    }

    #[test]
    fn tcp_established_timeout_needs_long_timeout_and_many_established() {
        let mut e = ev(400, 1000, &[]);
        e.table.tcp_states = BTreeMap::from([("ESTABLISHED".into(), 300)]);
        let f = tcp_established_timeout(&e).unwrap();
        assert!(f.recommendation.contains("tcp_timeout_established=86400"));
        e.sysctls
            .insert("nf_conntrack_tcp_timeout_established".into(), 3600);
        assert!(tcp_established_timeout(&e).is_none());
    }

    #[test]
    fn helper_auto_only_when_on() {
        let mut e = ev(1, 100, &[]);
        assert!(helper_auto(&e).is_none(), "absent since 6.0");
        e.sysctls.insert("nf_conntrack_helper".into(), 0);
        assert!(helper_auto(&e).is_none());
        e.sysctls.insert("nf_conntrack_helper".into(), 1);
        assert!(
            helper_auto(&e)
                .unwrap()
                .recommendation
                .contains("nf_conntrack_helper=0")
        );
    }

    #[test]
    fn other_insert_failures_point_at_events() {
        let f = insert_failed_other(&ev(1, 100, &[("insert_failed", 2)])).unwrap();
        assert!(
            f.recommendation
                .contains("ctscope events --kind insert_failed")
        );
    }
}

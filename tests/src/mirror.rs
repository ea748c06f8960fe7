//! The agent's table against the kernel's: `ctscope list` from the agent and `conntrack -L`
//! in one namespace, line by line.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{agent::Agent, netns::Netns};

/// `conntrack -L` lines keyed by everything but the timeout (the third field) and the
/// reference count (`use=`): 5.10's dump holds a reference on the entry where each batch
/// ends, so one listing shows `use=2` where another, cut elsewhere, shows `use=1`.
pub fn by_line(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f: Vec<&str> = l
                .split_whitespace()
                .filter(|f| !f.starts_with("use="))
                .collect();
            let timeout = f.get(2).and_then(|t| t.parse().ok()).unwrap_or(0);
            if f.len() > 2 {
                f.remove(2);
            }
            (f.join(" "), timeout)
        })
        .collect()
}

/// The agent's `ctscope list` against `conntrack -L` in `ns`: the same lines, timeouts
/// within 1 s. The agent is asked before and after the kernel (listing thousands of
/// entries takes seconds in an emulated VM), and the kernel's timeout must lie within
/// 1 s of that bracket. The number of entries, or `Err` saying what differs (also when
/// the agent cannot list the namespace yet).
pub fn compare(agent: &Agent, ns: &Netns) -> Result<usize, String> {
    let list = || -> Result<BTreeMap<String, u64>, String> {
        let out = agent.try_ctscope(&["list", "--netns", ns.name()])?;
        Ok(by_line(&String::from_utf8_lossy(&out.stdout)))
    };
    let before = list()?;
    let kernel = by_line(&ns.exec(&["conntrack", "-L"]));
    let after = list()?;
    let only = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| -> Vec<String> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    for listed in [&before, &after] {
        let (missing, extra) = (only(&kernel, listed), only(listed, &kernel));
        if !missing.is_empty() || !extra.is_empty() {
            return Err(format!(
                "agent lacks {} entries, has {} extra\nlacks: {missing:#?}\nextra: {extra:#?}",
                missing.len(),
                extra.len()
            ));
        }
    }
    for (line, &t) in &kernel {
        let (early, late) = (before[line], after[line]);
        if t + 1 < late || t > early + 1 {
            return Err(format!(
                "timeout {early}..{late} (agent, before and after) vs kernel {t}: {line}\n\
                 the agent's row: {}",
                agent_row(agent, ns, line)
            ));
        }
    }
    Ok(kernel.len())
}

/// The agent's JSON row for a `conntrack -L` line (same original source and
/// destination ports), to show where its fields came from.
fn agent_row(agent: &Agent, ns: &Netns, line: &str) -> String {
    let port = |key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .and_then(|p| p.parse::<u64>().ok())
    };
    let (sport, dport) = (port("sport="), port("dport="));
    let Ok(out) = agent.try_ctscope(&["list", "--json", "--netns", ns.name()]) else {
        return "unknown (the agent did not list the namespace)".into();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["orig"]["sport"].as_u64() == sport && e["orig"]["dport"].as_u64() == dport)
        .map_or_else(|| "none".into(), |e| e.to_string())
}

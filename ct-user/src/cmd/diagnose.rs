//! `ctscope diagnose`: reads sysctls (inside each namespace), per-CPU counters, what the
//! table holds (counted by a running agent from its table, else from one ctnetlink dump)
//! and, with an agent running, the insert_failed causes its events gave, and prints the
//! findings of [`crate::diagnose::rules`].

use std::{cmp::Reverse, collections::BTreeMap, io, path::Path};

use ct_netlink::CpuStats;
use serde::Serialize;
use serde_json::Value;

use super::{Target, agent_census, say_census_source};
use crate::{
    agent::{
        self,
        protocol::{Request, Scope},
    },
    cli::DiagnoseArgs,
    diagnose::{Causes, Evidence, Finding, Memory, StructSizes, census::Census, rules},
    render::findings::{block, header},
    sys::stdout,
};

/// `--json`: every finding, and what each namespace's findings were drawn from.
#[derive(Serialize)]
struct Report {
    findings: Vec<Finding>,
    evidence: Vec<Evidence>,
}

pub async fn run(args: &DiagnoseArgs) -> anyhow::Result<()> {
    let sizes = struct_sizes();
    let mut report = Report {
        findings: Vec::new(),
        evidence: Vec::new(),
    };
    let targets = Target::from_args(&args.from.netns)?;
    let mut counted = agent_census(&args.from.agent, &targets).await?;
    let mut agents = 0;
    for target in &targets {
        let census = counted.remove(&target.inode()?);
        let agent_counted = census.is_some();
        let Some(mut ev) = gather(target, &sizes, census).await? else {
            continue;
        };
        agents += usize::from(agent_counted);
        if let Some(path) = args.from.agent.socket() {
            ev.causes = causes(&path, ev.netns).await?;
        }
        let mut findings = rules::all(&ev);
        findings.sort_by_key(|f| Reverse(f.severity));
        report.findings.extend(findings);
        report.evidence.push(ev);
    }
    if args.json {
        stdout::line(serde_json::to_string(&report)?)?;
    } else {
        stdout::print(text(&report))?;
    }
    say_census_source(agents, report.evidence.len());
    Ok(())
}

/// What the agent's events said about namespace `netns`, if an agent runs and watches it.
async fn causes(socket: &Path, netns: u64) -> io::Result<Option<Causes>> {
    let request = Request::Stats {
        scope: Scope::Netns(netns as u32),
        json: true,
    };
    let mut body = match agent::client::ask(socket, &request).await {
        Ok(Some(body)) => body,
        Ok(None) => return Ok(None),
        // The agent is extra evidence: without it the report still stands.
        Err(e) => {
            eprintln!("ctscope: warning: no causes from the agent: {e:#}");
            return Ok(None);
        }
    };
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut body, &mut line).await?;
    let Ok(stats) = serde_json::from_str::<Value>(&line) else {
        return Ok(None);
    };
    let a = &stats["agent"];
    let counts = |v: &Value| -> BTreeMap<String, u64> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
            .collect()
    };
    let now = crate::clock::wall_now();
    Ok(Some(Causes {
        minutes: (now - a["watched_since"].as_f64().unwrap_or(now)) / 60.0,
        insert_failed: counts(&a["attributed"]["insert_failed"]),
        clash_resolved: counts(&a["attributed"]["clash_resolved"]),
        table_full: a["attributed"]["table_full"].as_u64().unwrap_or(0),
        early_drop: a["attributed"]["early_drop"].as_u64().unwrap_or(0),
    }))
}

/// Reads one namespace, its table as `counted` by the agent, else dumped; `None` when
/// --all-netns skips it.
async fn gather(
    target: &Target,
    sizes: &StructSizes,
    counted: Option<Census>,
) -> anyhow::Result<Option<Evidence>> {
    let read = target
        .run(async move |ct| {
            let cpus = ct.stats_cpu().await?;
            let global = ct.stats_global().await?;
            let table = match counted {
                Some(census) => census.composition,
                None => Census::of(&ct.dump(None).await?).composition,
            };
            Ok((cpus, global, table))
        })
        .await?;
    let Some((cpus, global, table)) = read else {
        return Ok(None);
    };
    let Some(sysctls) = target.sysctls()? else {
        return Ok(None);
    };
    let inode = target.inode()?;
    let entries_now = u64::from(global.entries);
    let max_entries = global.max_entries.map(u64::from);
    let count = sysctls
        .get("nf_conntrack_count")
        .copied()
        .unwrap_or(entries_now);
    let max = sysctls
        .get("nf_conntrack_max")
        .copied()
        .or(max_entries)
        .unwrap_or(0);
    let listed = target.listed(inode);
    Ok(Some(Evidence {
        netns: inode,
        names: listed.as_ref().map(|n| n.names.clone()).unwrap_or_default(),
        workload: listed.map(|n| n.workload()).unwrap_or_default(),
        memory: Memory::estimate(sizes, &sysctls, count, max),
        sysctls,
        counters: CpuStats::totals(&cpus)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        entries: entries_now,
        max_entries,
        table,
        causes: None,
    }))
}

/// Per namespace a header line, then one block per finding.
fn text(report: &Report) -> String {
    let mut s = String::new();
    for ev in &report.evidence {
        s.push_str(&header(ev));
        for f in report.findings.iter().filter(|f| f.netns == ev.netns) {
            s.push_str(&block(f));
        }
    }
    s
}

/// Sizes for the memory estimate; missing BTF leaves them to the fallbacks.
fn struct_sizes() -> StructSizes {
    let Ok(btf) = ct_btf::KernelBtf::load() else {
        return StructSizes::default();
    };
    let size = |name: &str| btf.type_size(name).ok();
    StructSizes {
        nf_conn: size("nf_conn"),
        nf_ct_ext: size("nf_ct_ext"),
        acct: size("nf_conn_acct"),
        tstamp: size("nf_conn_tstamp"),
        ecache: size("nf_conntrack_ecache"),
    }
}

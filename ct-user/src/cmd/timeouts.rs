//! `ctscope timeouts`: per namespace, the conntrack timeout sysctls (read inside it) next
//! to what the table holds (entries and the seconds they have left, per protocol and
//! state, beside the sysctl that sets them: counted by a running agent from its table,
//! else from one ctnetlink dump), how long ended flows lived (only the agent sees flows
//! end), and `ctscope diagnose`'s timeout findings.

use std::{collections::BTreeMap, io::Write};

use super::{Target, agent_census, say_census_source};
use crate::{
    agent::{
        self,
        protocol::{NsLifetimes, Request},
    },
    cli::TimeoutsArgs,
    diagnose::{Evidence, census::Census, rules},
    lifetimes::Lifetimes,
    render::timeouts::{Report, rows, shown, write},
    sys::stdout,
};

pub async fn run(args: &TimeoutsArgs) -> anyhow::Result<()> {
    let targets = Target::from_args(&args.from.netns)?;
    let mut counted = agent_census(&args.from.agent, &targets).await?;
    let mut reports = Vec::new();
    let mut agents = 0;
    for target in &targets {
        let census = counted.remove(&target.inode()?);
        let agent_counted = census.is_some();
        if let Some(report) = gather(target, census).await? {
            agents += usize::from(agent_counted);
            reports.push(report);
        }
    }
    let inodes: Vec<u64> = reports.iter().map(|r| r.netns).collect();
    if let Some(mut by_netns) = lifetimes_from_agent(args, &inodes).await? {
        for r in &mut reports {
            // The agent answered: a namespace it has nothing for has no ended flows yet.
            r.lifetimes = Some(by_netns.remove(&r.netns).unwrap_or_default());
        }
    }
    let mut out = stdout::writer();
    let written = reports
        .iter()
        .try_for_each(|r| write(&mut out, r, args.json));
    stdout::check(written.and_then(|()| out.flush()))?;
    say_census_source(agents, reports.len());
    Ok(())
}

/// How long the flows that ended in each of the namespaces `netns` lived, by namespace
/// inode, from the agent (`ctscope watch`: only it sees flows end); `None` when no agent
/// runs.
async fn lifetimes_from_agent(
    args: &TimeoutsArgs,
    netns: &[u64],
) -> anyhow::Result<Option<BTreeMap<u64, Lifetimes>>> {
    let Some(path) = args.from.agent.socket() else {
        return Ok(None);
    };
    let request = Request::Lifetimes {
        netns: netns.iter().map(|&n| n as u32).collect(),
    };
    let Some(mut body) = agent::client::ask(&path, &request).await? else {
        return Ok(None);
    };
    let lines = agent::client::json_lines::<NsLifetimes>(&mut body).await?;
    Ok(Some(
        lines
            .into_iter()
            .map(|ns| (u64::from(ns.netns), ns.lifetimes))
            .collect(),
    ))
}

/// Reads one namespace, its table as `counted` by the agent, else dumped; `None` when
/// --all-netns skips it.
async fn gather(target: &Target, counted: Option<Census>) -> anyhow::Result<Option<Report>> {
    let table = target
        .run(async move |ct| match counted {
            // Still asks the kernel something, so a namespace without ctnetlink is
            // skipped, and missing privileges named, as the dump would.
            Some(census) => ct.stats_global().await.map(|_| census),
            None => Ok(Census::of(&ct.dump(None).await?)),
        })
        .await?;
    let Some(table) = table else {
        return Ok(None);
    };
    let Some(sysctls) = target.sysctls()? else {
        return Ok(None);
    };
    let netns = target.inode()?;
    let listed = target.listed(netns);
    let evidence = Evidence {
        netns,
        names: listed.as_ref().map(|n| n.names.clone()).unwrap_or_default(),
        workload: listed.map(|n| n.workload()).unwrap_or_default(),
        entries: table.composition.dumped,
        table: table.composition,
        sysctls,
        ..Evidence::default()
    };
    Ok(Some(Report {
        netns,
        names: evidence.names.clone(),
        workload: evidence.workload.clone(),
        dumped: evidence.table.dumped,
        sysctls: shown(&evidence.sysctls),
        table: rows(table.states, &evidence.sysctls),
        lifetimes: None,
        findings: rules::timeouts(&evidence),
        evidence,
    }))
}

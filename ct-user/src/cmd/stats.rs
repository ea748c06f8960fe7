//! `ctscope stats`: per-CPU counters in `conntrack -S` format, then the table size and
//! limit; JSON with per-CPU objects and totals. With an agent running, it answers, and
//! adds what its events explained of insert_failed, drop, early_drop and clash_resolve.

use super::{Target, agent_scope};
use crate::{
    agent::{self, protocol::Request},
    cli::StatsArgs,
    render::stats::NsStats,
    sys::stdout,
};

pub async fn run(args: &StatsArgs) -> anyhow::Result<()> {
    if let Some(path) = args.agent.socket() {
        let scope = agent_scope(&args.netns)?;
        let request = Request::Stats {
            scope,
            json: args.json,
        };
        if let Some(mut body) = agent::client::ask(&path, &request).await? {
            agent::client::copy_lines(&mut body).await?;
            return Ok(());
        }
    }
    for target in Target::from_args(&args.netns)? {
        let read = target
            .run(async |ct| Ok((ct.stats_cpu().await?, ct.stats_global().await?)))
            .await?;
        let Some((cpus, global)) = read else {
            continue;
        };
        let stats = NsStats::new(cpus, global, target.tag.as_ref());
        if args.json {
            stdout::line(serde_json::to_string(&stats)?)?;
        } else {
            stdout::print(stats.text())?;
        }
    }
    Ok(())
}

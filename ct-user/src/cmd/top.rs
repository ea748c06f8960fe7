//! `ctscope top`: who fills the table. Groups the entries of one ctnetlink dump per
//! namespace (or, with an agent running, of its live table) by a key and prints the
//! biggest groups, like
//! `sed -ne 's/^.*src=\([^ ]*\).*/\1/p' /proc/net/nf_conntrack | sort | uniq -c | sort -rn`.

use super::{Target, agent_scope};
use crate::{
    agent::{self, protocol::Request},
    cli::TopArgs,
    render::top::{Counter, render},
    sys::stdout,
};

pub async fn run(args: &TopArgs) -> anyhow::Result<()> {
    if let Some(path) = args.agent.socket() {
        let request = Request::Top {
            scope: agent_scope(&args.netns)?,
            by: args.by,
            n: args.n,
            json: args.json,
        };
        if let Some(mut body) = agent::client::ask(&path, &request).await? {
            agent::client::copy_lines(&mut body).await?;
            return Ok(());
        }
    }
    let mut counter = Counter::new(args.by);
    for target in Target::from_args(&args.netns)? {
        let Some(dump) = target.run(async |ct| ct.dump(None).await).await? else {
            continue;
        };
        let inode = target.inode()?;
        dump.iter().for_each(|e| counter.add(e, inode));
    }
    let top = counter.top(args.n);
    stdout::bytes(&render(&top, args.json))?;
    if !args.json {
        eprintln!(
            "ctscope: {} entries, {} distinct {} values.",
            top.entries, top.keys, top.by
        );
    }
    Ok(())
}

//! `ctscope top`: who fills the table. Groups the entries of one ctnetlink dump per
//! namespace (or, with an agent running, of its live table) by a key and prints the
//! biggest groups, like
//! `sed -ne 's/^.*src=\([^ ]*\).*/\1/p' /proc/net/nf_conntrack | sort | uniq -c | sort -rn`.

use tokio::io::AsyncReadExt as _;

use super::{Target, agent_scope};
use crate::{
    agent::{self, protocol::Request},
    cli::TopArgs,
    render::top::{Counter, Top, TopBy, render},
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
            if !tagged(args) {
                agent::client::copy_lines(&mut body).await?;
                return Ok(());
            }
            let mut json = Vec::new();
            body.read_to_end(&mut json).await?;
            let mut top: Top = serde_json::from_slice(&json)?;
            top.tag_namespaces();
            stdout::bytes(&render(&top, true))?;
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
    let mut top = counter.top(args.n);
    if tagged(args) {
        top.tag_namespaces();
    }
    stdout::bytes(&render(&top, args.json))?;
    if !args.json {
        eprintln!(
            "ctscope: {} entries, {} distinct {} values.",
            top.entries, top.keys, top.by
        );
    }
    Ok(())
}

/// `--by netns --json`: each row also says who lives in its namespace.
fn tagged(args: &TopArgs) -> bool {
    args.json && args.by == TopBy::Netns
}

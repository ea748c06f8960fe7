//! `ctscope list`: the conntrack table through ctnetlink, as `conntrack -L` text or JSON
//! Lines, from one namespace or all of them.

use std::io::Write;

use super::{Target, agent_scope};
use crate::{
    agent::{self, protocol::Request},
    cli::ListArgs,
    render::list::{write_json, write_text},
    sys::{netns::Tags, stdout},
};

pub async fn run(args: &ListArgs) -> anyhow::Result<()> {
    let filter = args.filter.tuple_filter();
    if let Some(path) = args.agent.socket() {
        let request = Request::List {
            scope: agent_scope(&args.netns)?,
            filter: filter.clone(),
            json: args.json,
        };
        if let Some(mut body) = agent::client::ask(&path, &request).await? {
            let shown = if args.json && args.netns.all_netns {
                // The agent knows namespaces by inode: who lives there is added here.
                agent::client::copy_json_lines(&mut body, &mut Tags::default()).await?
            } else {
                agent::client::copy_lines(&mut body).await?
            };
            eprintln!("ctscope: {shown} flow entries have been shown (from the agent).");
            return Ok(());
        }
    }
    let now = crate::clock::unix_secs();
    let mut out = stdout::writer();
    let mut shown = 0;
    for target in Target::from_args(&args.netns)? {
        let Some(entries) = target.run(async |ct| ct.list(&filter).await).await? else {
            continue;
        };
        // Read once per namespace, not per entry.
        let tag = target.tag.as_ref().map(|ns| ns.tag());
        let netns = tag.as_ref().map(|t| t.netns);
        for entry in &entries {
            let written = if args.json {
                write_json(&mut out, entry, tag.as_ref())
            } else {
                write_text(&mut out, entry, netns, now)
            };
            stdout::check(written)?;
        }
        shown += entries.len();
    }
    stdout::check(out.flush())?;
    // conntrack prints its summary on stderr, so stdout stays parseable.
    eprintln!("ctscope: {shown} flow entries have been shown.");
    Ok(())
}

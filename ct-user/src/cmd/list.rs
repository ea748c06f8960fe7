//! `ctscope list`: the conntrack table through ctnetlink, as `conntrack -L` text or JSON
//! Lines, from one namespace or all of them.

use std::{
    io::{self, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use ct_netlink::Entry;
use serde::Serialize;

use super::{Target, agent_scope};
use crate::{
    agent::{self, protocol::Request},
    cli::ListArgs,
    stdout, table_text,
};

/// An entry as `--json` prints it: ct-netlink's fields, plus `netns` with --all-netns.
#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
}

pub async fn run(args: &ListArgs) -> anyhow::Result<()> {
    let filter = args.filter.tuple_filter();
    if let Some(path) = args.agent.socket() {
        let request = Request::List {
            scope: agent_scope(&args.netns)?,
            filter: filter.clone(),
            json: args.json,
        };
        if let Some(mut body) = agent::client::ask(&path, &request).await? {
            let shown = agent::client::copy_lines(&mut body).await?;
            eprintln!("ctscope: {shown} flow entries have been shown (from the agent).");
            return Ok(());
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = stdout::writer();
    let mut shown = 0;
    for target in Target::from_args(&args.netns)? {
        let Some(entries) = target.run(async |ct| ct.list(&filter).await).await? else {
            continue;
        };
        let netns = target.tag.as_ref().map(|ns| ns.inode);
        for entry in &entries {
            let written = if args.json {
                write_json(&mut out, entry, netns)
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

pub fn write_text(out: &mut impl Write, e: &Entry, netns: Option<u32>, now: u64) -> io::Result<()> {
    let line = table_text::entry_line(e, now);
    match netns {
        Some(inode) => writeln!(out, "{line} netns={inode}"),
        None => writeln!(out, "{line}"),
    }
}

fn write_json(out: &mut impl Write, entry: &Entry, netns: Option<u32>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Tagged { entry, netns })?;
    out.write_all(b"\n")
}

//! Table entries as `ctscope list` writes them: `conntrack -L` lines, or JSON Lines, each
//! tagged with its namespace under --all-netns.

use std::io::{self, Write};

use ct_netlink::Entry;
use serde::Serialize;

use crate::render::conntrack_text;

/// An entry as `--json` prints it: ct-netlink's fields, plus `netns` with --all-netns.
#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
}

pub fn write_text(out: &mut impl Write, e: &Entry, netns: Option<u32>, now: u64) -> io::Result<()> {
    let line = conntrack_text::entry_line(e, now);
    match netns {
        Some(inode) => writeln!(out, "{line} netns={inode}"),
        None => writeln!(out, "{line}"),
    }
}

pub fn write_json(out: &mut impl Write, entry: &Entry, netns: Option<u32>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Tagged { entry, netns })?;
    out.write_all(b"\n")
}

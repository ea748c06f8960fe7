//! Table entries as `ctscope list` writes them: `conntrack -L` lines, or JSON Lines, each
//! tagged with its namespace under --all-netns.

use std::io::{self, Write};

use ct_netlink::Entry;
use serde::Serialize;

use crate::{render::conntrack_text, sys::netns::Tag};

/// An entry as `--json` prints it: ct-netlink's fields, plus with --all-netns its
/// namespace (`netns`, `names`, who lives there).
#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    #[serde(flatten)]
    tag: Option<&'a Tag>,
}

pub fn write_text(out: &mut impl Write, e: &Entry, netns: Option<u32>, now: u64) -> io::Result<()> {
    let line = conntrack_text::entry_line(e, now);
    match netns {
        Some(inode) => writeln!(out, "{line} netns={inode}"),
        None => writeln!(out, "{line}"),
    }
}

pub fn write_json(out: &mut impl Write, entry: &Entry, tag: Option<&Tag>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Tagged { entry, tag })?;
    out.write_all(b"\n")
}

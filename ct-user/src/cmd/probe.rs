//! `ctscope probe`.

use crate::{cli::ProbeArgs, probe, stdout};

pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let report = probe::run();
    if args.json {
        stdout::line(serde_json::to_string(&report)?)
    } else {
        stdout::print(probe::text(&report))
    }
}

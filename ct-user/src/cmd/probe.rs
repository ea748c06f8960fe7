//! `ctscope probe`.

use crate::{cli::ProbeArgs, probe};

pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let report = probe::run();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", probe::text(&report));
    }
    Ok(())
}

//! `cargo xtask build [--debug]`: builds ctscope (optimised unless `--debug`); ct-user's
//! build script builds the BPF object with the pinned BPF toolchain and bpf-linker and
//! embeds it.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{cargo, setup};

#[derive(Args)]
pub struct Options {
    /// Build unoptimised (the dev profile). The default is the release build: a debug
    /// ctscope reads its ring buffer too slowly for a busy host and loses events.
    #[arg(long)]
    pub debug: bool,
}

/// Ensures the build prerequisites, builds, and returns the path of the `ctscope` binary.
pub fn cmd(opts: &Options) -> Result<PathBuf> {
    setup::ensure(&setup::Needs {
        tests: false,
        vm: false,
    })?;
    let ctscope = cargo::build_ctscope(!opts.debug)?;
    eprintln!("build: {}", ctscope.display());
    Ok(ctscope)
}

//! `cargo xtask build [--release]`: builds ctscope; ct-user's build script builds the BPF
//! object with the pinned BPF toolchain and bpf-linker and embeds it.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{cargo, setup};

#[derive(Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Ensures the build prerequisites, builds, and returns the path of the `ctscope` binary.
pub fn cmd(opts: &Options) -> Result<PathBuf> {
    setup::ensure(&setup::Needs { vm: false })?;
    let ctscope = cargo::build_ctscope(opts.release)?;
    eprintln!("build: {}", ctscope.display());
    Ok(ctscope)
}

//! `cargo xtask run [--debug] -- ARGS`: the README's main command. Sets up what is
//! missing, builds (optimised unless `--debug`), and runs `ctscope ARGS` as root
//! (through `sudo -E` when not root).
use std::{ffi::OsString, process};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{build, cmd};

#[derive(Args)]
pub struct Options {
    /// Run an unoptimised (dev profile) build; the default is the release build.
    #[arg(long)]
    debug: bool,
    /// Arguments for ctscope, after `--` (e.g. `cargo xtask run -- events --json`).
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub fn cmd(opts: &Options) -> Result<()> {
    let ctscope = build::cmd(&build::Options { debug: opts.debug })?;
    let mut run = cmd::as_root(&ctscope);
    run.args(&opts.args);
    eprintln!("$ {}", cmd::show(&run));
    let mut child = run
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::show(&run)))?;
    // Ctrl-C reaches ctscope too (same process group); it stops cleanly and we report its
    // status instead of dying first. Set after spawn so that the child does not inherit it.
    ignore_interrupts();
    let status = child.wait()?;
    process::exit(cmd::exit_code(status));
}

fn ignore_interrupts() {
    // SAFETY: SIG_IGN is a valid disposition; nothing else in xtask handles signals.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

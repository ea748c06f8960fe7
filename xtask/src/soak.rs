//! `cargo xtask soak [--minutes M] [--json FILE]`: the churn soak of the agent. Builds
//! the release `ctscope` (what `cargo xtask run` runs) and the soak driver
//! (`tests/src/bin/ctscope-soak.rs`, which does the work and says what it checks), and
//! runs the driver as root. Exits with the driver's status: nonzero on any divergence,
//! leak or uncounted loss.
use std::{ffi::OsString, path::PathBuf, process};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{build, cargo, cmd, vm_test};

#[derive(Args)]
pub struct Options {
    /// How long to run, in minutes, 2 to 1440 (CI runs 2; 30 is a good run by hand).
    #[arg(long, default_value_t = 30.0, value_parser = minutes)]
    pub minutes: f64,
    /// Also write the checkpoints, episodes and verdict as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

fn minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if (2.0..=1440.0).contains(&m) => Ok(m),
        _ => Err(format!(
            "{s:?}: give minutes from 2 to 1440 (shorter runs have too few \
             checkpoints for the leak checks)"
        )),
    }
}

/// Runs the soak; `Err` when it fails (the driver has printed why).
pub fn run(opts: &Options) -> Result<()> {
    let status = cmd::status(&mut command(opts)?)?;
    if !status.success() {
        anyhow::bail!("the soak failed: {}", cmd::describe(status));
    }
    Ok(())
}

/// `cargo xtask soak`: like [`run`], but Ctrl-C goes to the driver alone, which stops at
/// the next checkpoint and cleans up, and its exit status becomes ours.
pub fn cmd(opts: &Options) -> Result<()> {
    let mut soak = command(opts)?;
    eprintln!("$ {}", cmd::show(&soak));
    let mut child = soak
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::show(&soak)))?;
    // SAFETY: SIG_IGN is a valid disposition; set after spawn so the driver keeps its own.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait()?;
    process::exit(cmd::exit_code(status));
}

/// The driver's command line, run as root, with both binaries built.
fn command(opts: &Options) -> Result<process::Command> {
    let ctscope = build::cmd(&build::Options { debug: false })?;
    let driver = cargo::build_bin(vm_test::TESTS_PACKAGE, "ctscope-soak", false)?;
    let mut soak = cmd::as_root(&driver);
    soak.arg("--minutes")
        .arg(opts.minutes.to_string())
        .env("CTSCOPE_BIN", &ctscope)
        // ctscope insert and delete talk to the kernel, never to an agent of this machine.
        .env("CTSCOPE_SOCKET", "/nonexistent/ctscope-soak.sock");
    if let Some(path) = &opts.json {
        soak.args([OsString::from("--json"), path.into()]);
    }
    Ok(soak)
}

//! Cargo builds whose outputs xtask needs by path: paths come from cargo's JSON messages
//! rather than from guessing `target/<profile>/…`, so CARGO_TARGET_DIR, build.target-dir
//! and test-binary hashes are all handled.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

/// Builds the `ctscope` binary (ct-user's build script builds the BPF object) and returns
/// its path.
pub fn build_ctscope(release: bool) -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args(["build", "-p", "ct-user", "--bin", "ctscope"]);
    profile(&mut build, release);
    let exes = executables(&mut build, |a| a["target"]["name"] == "ctscope")?;
    exes.into_iter()
        .next()
        .context("cargo built no `ctscope` executable")
}

/// Builds the binary `bin` of `package` and returns its path.
pub fn build_bin(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args(["build", "-p", package, "--bin", bin]);
    profile(&mut build, release);
    let exes = executables(&mut build, |a| a["target"]["name"] == bin)?;
    exes.into_iter()
        .next()
        .with_context(|| format!("cargo built no `{bin}` executable"))
}

/// Builds the integration test targets (`tests/*.rs`, `[[test]]`) of `package` without
/// running them and returns their executables.
pub fn build_tests(package: &str, release: bool) -> Result<Vec<PathBuf>> {
    let mut build = cmd::cargo();
    build.args(["test", "-p", package, "--no-run"]);
    profile(&mut build, release);
    let is_test = |a: &Value| {
        a["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
    };
    let exes = executables(&mut build, is_test)?;
    if exes.is_empty() {
        bail!("`{}` produced no test executable", cmd::show(&build));
    }
    Ok(exes)
}

/// The target directory cargo uses for this workspace.
pub fn target_dir() -> Result<PathBuf> {
    let mut meta = cmd::cargo();
    meta.args(["metadata", "--format-version", "1", "--no-deps"]);
    let json: Value =
        serde_json::from_str(&cmd::output(&mut meta)?).context("parsing cargo metadata")?;
    json["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn profile(cmd: &mut Command, release: bool) {
    if release {
        cmd.arg("--release");
    }
}

/// Runs a cargo build with JSON messages on stdout (diagnostics still rendered on stderr)
/// and returns the executables of the artifacts `wanted` selects.
fn executables(build: &mut Command, wanted: impl Fn(&Value) -> bool) -> Result<Vec<PathBuf>> {
    build
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("$ {}", cmd::show(build));
    let mut child = build
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::show(build)))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut exes = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let msg: Value = match serde_json::from_str(&line?) {
            Ok(v) => v,
            Err(_) => continue, // a build script's stray output, not a cargo message
        };
        let artifact = msg["reason"] == "compiler-artifact" && wanted(&msg);
        if let Some(exe) = msg["executable"].as_str().filter(|_| artifact) {
            exes.push(PathBuf::from(exe));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed: {}", cmd::show(build), cmd::describe(status));
    }
    Ok(exes)
}

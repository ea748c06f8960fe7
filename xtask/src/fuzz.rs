//! `cargo xtask fuzz [--seconds N] [--dev] [TARGET...]`: builds the cargo-fuzz targets in
//! `fuzz/` and runs each for a bounded time, stopping at the first crash.
//!
//! Each run writes the inputs libFuzzer finds to a temporary directory and only reads the
//! seed corpus in `fuzz/corpus/<target>/`, so the repository's corpus never grows. A
//! crasher is left in `fuzz/artifacts/<target>/` (ignored by git): after the fix, copy it
//! into the seed corpus so every later run replays it.
use std::{
    env, fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use crate::{cmd, setup};

#[derive(Args, Clone)]
pub struct Options {
    /// How long to run each target, in seconds.
    #[arg(long, value_name = "N", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Build without optimisation (debug assertions and overflow checks stay on): compiles
    /// in about half the time but runs fewer inputs a second. CI uses it.
    #[arg(long)]
    pub dev: bool,
    /// Targets to run (default: all).
    #[arg(value_enum, value_name = "TARGET")]
    pub targets: Vec<Target>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// ct-netlink's decoders on one received datagram.
    #[value(name = "netlink")]
    Netlink,
    /// ct-btf's reader and the lookups ctscope makes at start.
    #[value(name = "btf")]
    Btf,
    /// A ring-buffer record, raw `nf_conn` copies parsed with arbitrary offsets.
    #[value(name = "raw_record")]
    RawRecord,
    /// One agent socket request line.
    #[value(name = "protocol")]
    Protocol,
    /// `ctscope conntrack`'s conntrack(8) argument parser.
    #[value(name = "conntrack_args")]
    ConntrackArgs,
}

/// libFuzzer flags per run: a leak or a runaway allocation is a finding, as is an input
/// that takes longer than `-timeout` seconds. `-print_funcs=0` keeps the log to coverage
/// progress lines instead of every newly reached function.
const LIBFUZZER_FLAGS: [&str; 4] = [
    "-rss_limit_mb=2048",
    "-malloc_limit_mb=256",
    "-timeout=10",
    "-print_funcs=0",
];

pub fn cmd(opts: &Options) -> Result<()> {
    setup::ensure_cargo_fuzz()?;
    let targets = if opts.targets.is_empty() {
        Target::value_variants().to_vec()
    } else {
        opts.targets.clone()
    };
    let start = Instant::now();
    cmd::run(&mut cargo_fuzz("build", opts.dev))?;
    eprintln!("fuzz: built in {:.1} s", start.elapsed().as_secs_f64());
    let mut results = Vec::new();
    for target in targets {
        results.push(run_target(opts, target)?);
    }
    for r in &results {
        eprintln!(
            "fuzz: {:<15} {:>9} runs, {:>5} new inputs, no crash",
            r.target.name(),
            r.runs.map_or("?".into(), |n| n.to_string()),
            r.new_inputs
        );
    }
    eprintln!("fuzz: done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

struct Outcome {
    target: Target,
    runs: Option<u64>,
    new_inputs: usize,
}

/// `cargo fuzz` with the flags every invocation shares. Without `--dev`, cargo-fuzz's
/// default: optimised, with debug assertions and overflow checks (`--release` would drop
/// them, and an overflow is a finding). cargo-fuzz needs nightly rustc
/// flags (`-Zsanitizer=address`): the stable toolchain accepts them in bootstrap mode, as
/// the BPF build does. The fuzz targets never load BPF, so ct-user's build script skips
/// building the BPF object.
fn cargo_fuzz(subcommand: &str, dev: bool) -> Command {
    let mut fuzz = cmd::cargo();
    fuzz.args(["fuzz", subcommand])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("AYA_BUILD_SKIP", "1")
        // fuzz/ is its own workspace with its own target dir.
        .env_remove("CARGO_TARGET_DIR");
    if dev {
        fuzz.arg("--dev");
    }
    fuzz
}

fn run_target(opts: &Options, target: Target) -> Result<Outcome> {
    let name = target.name();
    let seeds = cmd::workspace_root().join("fuzz/corpus").join(name);
    let scratch = Scratch::new(name)?;
    let mut run = cargo_fuzz("run", opts.dev);
    run.arg(name)
        .arg(&scratch.0)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", opts.seconds))
        .args(LIBFUZZER_FLAGS);
    let (status, runs) = run_counting(&mut run)?;
    if !status.success() {
        bail!(
            "fuzz target {name} failed ({}): the crashing input is in fuzz/artifacts/{name}/; \
             reproduce it with `cargo fuzz run{} {name} FILE` (RUSTC_BOOTSTRAP=1 \
             AYA_BUILD_SKIP=1), fix it with a unit test, then copy the input into \
             fuzz/corpus/{name}/",
            cmd::describe(status),
            if opts.dev { " --dev" } else { "" },
        );
    }
    let new_inputs = fs::read_dir(&scratch.0)?.count();
    Ok(Outcome {
        target,
        runs,
        new_inputs,
    })
}

/// Runs `run`, passing libFuzzer's output (stderr) through, and picks the number of runs
/// from its closing "Done N runs in S second(s)" line.
fn run_counting(run: &mut Command) -> Result<(std::process::ExitStatus, Option<u64>)> {
    eprintln!("$ {}", cmd::show(run));
    let mut child = run
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::show(run)))?;
    let mut runs = None;
    let stderr = child.stderr.take().context("libFuzzer's stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(n) = done_runs(&line) {
            runs = Some(n);
        }
    }
    Ok((child.wait()?, runs))
}

fn done_runs(line: &str) -> Option<u64> {
    line.strip_prefix("Done ")?
        .split_once(" runs")?
        .0
        .parse()
        .ok()
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Netlink => "netlink",
            Target::Btf => "btf",
            Target::RawRecord => "raw_record",
            Target::Protocol => "protocol",
            Target::ConntrackArgs => "conntrack_args",
        }
    }
}

/// A temporary directory for one run's new inputs, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(target: &str) -> Result<Self> {
        let dir = env::temp_dir().join(format!("ctscope-fuzz-{target}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_run_count() {
        assert_eq!(done_runs("Done 5717 runs in 16 second(s)"), Some(5717));
        assert_eq!(done_runs("#5717 DONE cov: 12"), None);
    }

    /// Every target has a seed corpus and a `[[bin]]` in fuzz/Cargo.toml.
    #[test]
    fn every_target_has_seeds_and_a_bin() {
        let root = cmd::workspace_root().join("fuzz");
        let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
        for t in Target::value_variants() {
            let seeds = root.join("corpus").join(t.name());
            let n = fs::read_dir(&seeds).map_or(0, |d| d.count());
            assert!(n > 0, "no seeds in {}", seeds.display());
            assert!(
                manifest.contains(&format!("name = \"{}\"", t.name())),
                "fuzz/Cargo.toml has no [[bin]] {}",
                t.name()
            );
            assert!(root.join(format!("fuzz_targets/{}.rs", t.name())).exists());
        }
    }
}

//! `cargo xtask test`: the README's test command and what CI (`.ci/run`) runs. Sets up
//! what is missing, then runs the stages in order, stopping at the first failure and
//! saying how long each stage took.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use crate::{cargo, cmd, disk, fuzz, kernels::Series, setup, soak, vm_test};

#[derive(Args)]
pub struct Options {
    /// Skip the VM tests (the `vm` stage).
    #[arg(long)]
    no_vm: bool,
    /// Run only these stages (repeatable); `setup` always runs first.
    #[arg(long, value_enum)]
    only: Vec<Stage>,
    /// Kernels for the `vm` stage (repeatable); default: 6.1 and 6.12 (5.10 only when named).
    #[arg(long, value_enum)]
    kernel: Vec<Series>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Stage {
    /// Install what is missing (`cargo xtask setup`).
    Setup,
    /// `cargo fmt --all -- --check`
    Fmt,
    /// clippy -D warnings on every crate but the BPF one, all targets.
    Clippy,
    /// clippy -D warnings on ct-ebpf, for the BPF target with the pinned BPF toolchain.
    ClippyBpf,
    /// Unit tests of every crate that runs anywhere.
    Unit,
    /// Every fuzz target for a short bounded time (`cargo xtask fuzz --dev --seconds 20`).
    Fuzz,
    /// Integration tests on this machine's kernel, as root.
    Host,
    /// The agent's churn soak on this machine's kernel, as root, for 2 minutes
    /// (`cargo xtask soak --minutes 2`).
    Soak,
    /// Integration tests inside the VM kernels.
    Vm,
}

const ORDER: [Stage; 9] = [
    Stage::Setup,
    Stage::Fmt,
    Stage::Clippy,
    Stage::ClippyBpf,
    Stage::Unit,
    Stage::Fuzz,
    Stage::Host,
    Stage::Soak,
    Stage::Vm,
];

/// The `soak` stage's length: enough checkpoints for every episode and the leak checks
/// after warm-up, a small part of CI's time budget.
const SOAK_MINUTES: f64 = 2.0;

/// Seconds per fuzz target in the `fuzz` stage: long enough to replay the seeds and
/// crashers and explore a little, short enough for CI's time budget.
const FUZZ_SECONDS: u64 = 20;

pub fn cmd(opts: &Options) -> Result<()> {
    let stages: Vec<Stage> = ORDER.into_iter().filter(|s| selected(opts, *s)).collect();
    let mut done: Vec<(Stage, Duration)> = Vec::new();
    for stage in stages {
        println!("\n==> {}", stage.name());
        let start = Instant::now();
        let result = run_stage(opts, stage);
        let took = start.elapsed();
        if let Err(e) = result {
            print_times(&done);
            bail!(
                "stage `{}` failed after {:.1} s: {e:#}",
                stage.name(),
                took.as_secs_f64()
            );
        }
        println!("<== {} ok ({:.1} s)", stage.name(), took.as_secs_f64());
        done.push((stage, took));
    }
    print_times(&done);
    println!("test: all stages passed");
    Ok(())
}

fn selected(opts: &Options, stage: Stage) -> bool {
    let vm_ok = !(opts.no_vm && stage == Stage::Vm);
    vm_ok && (stage == Stage::Setup || opts.only.is_empty() || opts.only.contains(&stage))
}

fn run_stage(opts: &Options, stage: Stage) -> Result<()> {
    match stage {
        Stage::Setup => {
            disk::ensure_room(
                &cargo::target_dir()?,
                disk::TEST_RUN_GIB,
                "`cargo xtask test`",
            )?;
            setup::ensure(&setup::Needs {
                tests: true,
                vm: selected(opts, Stage::Vm),
            })
        }
        Stage::Fmt => {
            cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
            // fuzz/ is its own workspace, outside `--all`.
            cmd::run(cmd::cargo().args([
                "fmt",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--",
                "--check",
            ]))
        }
        Stage::Clippy => cmd::run(cmd::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--exclude",
            "ct-ebpf",
            "--",
            "-D",
            "warnings",
        ])),
        Stage::ClippyBpf => clippy_bpf(),
        Stage::Unit => unit_tests(),
        Stage::Fuzz => fuzz::cmd(&fuzz::Options {
            seconds: FUZZ_SECONDS,
            dev: true,
            targets: Vec::new(),
        }),
        Stage::Host => host_tests(),
        Stage::Soak => soak::run(&soak::Options {
            minutes: SOAK_MINUTES,
            json: None,
        }),
        Stage::Vm => vm_test::cmd(&vm_test::Options {
            kernel: opts.kernel.clone(),
            ..Default::default()
        }),
    }
}

/// The unit tests. Everything the tests need is installed by now, so a test that would
/// skip (not root, no conntrack binary, no kernel BTF) fails instead of counting as a
/// pass. On the 6.18 reference kernel, ct-btf's check of KERNEL.md's values runs too.
fn unit_tests() -> Result<()> {
    cmd::run(cmd::cargo().env("CTSCOPE_REQUIRE_ALL", "1").args([
        "test",
        "--workspace",
        "--exclude",
        "ctscope-tests",
        "--exclude",
        "ct-ebpf",
    ]))?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !release.starts_with("6.18") {
        println!("unit: not the 6.18 reference kernel; ct-btf's reference values not checked");
        return Ok(());
    }
    cmd::run(cmd::cargo().env("CTSCOPE_REQUIRE_ALL", "1").args([
        "test",
        "-p",
        "ct-btf",
        "--lib",
        "--",
        "--ignored",
        "--exact",
        "tests::reference_kernel_values",
    ]))
}

/// ct-ebpf only builds for bpfel-unknown-none with `-Z build-std=core`: the pinned BPF
/// toolchain in bootstrap mode, as ct-user/build.rs builds it. `rustup run` rather than
/// `cargo +toolchain`: CARGO points at stable's cargo, not rustup's proxy.
fn clippy_bpf() -> Result<()> {
    let toolchain = setup::bpf_toolchain()?;
    let mut clippy = Command::new("rustup");
    clippy
        .args(["run", &toolchain, "cargo", "clippy", "-p", "ct-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(cmd::workspace_root());
    cmd::run(&mut clippy)
}

/// The tier the host stage requires (README "Hook tiers": the project's hosts reach 2).
const HOST_TIER: &str = "2";

/// The integration tests on this machine's kernel. They create network namespaces and
/// load BPF, so they run as root; one at a time, because some change global sysctls.
fn host_tests() -> Result<()> {
    // The release build, what `cargo xtask run` runs: `flood` measures that binary.
    let ctscope = cargo::build_ctscope(true)?;
    for test in cargo::build_tests(vm_test::TESTS_PACKAGE, false)? {
        let mut run = cmd::as_root(&test);
        run.args(["--test-threads", "1"])
            .env("CTSCOPE_BIN", &ctscope)
            // The table commands under test talk to the kernel, not to an agent this
            // machine may be running; the agent tests give their own --socket.
            .env("CTSCOPE_SOCKET", "/nonexistent/ctscope-tests.sock")
            // The project's hosts have no kprobes but tracepoints: a tier-2 trial that
            // cannot run here is a regression, not a skip.
            .env("CTSCOPE_REQUIRE_TIER", HOST_TIER)
            // Where `cargo test` would run them.
            .current_dir(cmd::workspace_root().join("tests"));
        cmd::run(&mut run).context("host integration tests failed")?;
    }
    Ok(())
}

fn print_times(done: &[(Stage, Duration)]) {
    if done.is_empty() {
        return;
    }
    println!("\nstage times:");
    for (stage, took) in done {
        println!("  {:<11} {:>7.1} s", stage.name(), took.as_secs_f64());
    }
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Setup => "setup",
            Stage::Fmt => "fmt",
            Stage::Clippy => "clippy",
            Stage::ClippyBpf => "clippy-bpf",
            Stage::Unit => "unit",
            Stage::Fuzz => "fuzz",
            Stage::Host => "host",
            Stage::Soak => "soak",
            Stage::Vm => "vm",
        }
    }
}

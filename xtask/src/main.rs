//! ctscope's developer tasks: `cargo xtask <command>` (the alias is in .cargo/config.toml).
//!
//! One module per subcommand (`bench` also has its sender, `src/bin/ct-flood.rs`); `apt`, `cmd`, `cargo`, `kernels`, `initramfs`, `cpio` and `qemu`
//! are the helpers they share.
mod apt;
mod bench;
mod build;
mod cargo;
mod cmd;
mod cpio;
mod disk;
mod fuzz;
mod initramfs;
mod kernels;
mod qemu;
mod run;
mod setup;
mod soak;
mod test;
mod vm_run;
mod vm_test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "ctscope's developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh Debian 12 machine needs (apt packages, the BPF toolchain's rust-src,
    /// bpf-linker, VM kernels); skips what is present.
    Setup(setup::Options),
    /// Build ctscope (and, through its build script, the BPF object).
    Build(build::Options),
    /// Set up what is missing, build, and run ctscope as root with the arguments after `--`.
    Run(run::Options),
    /// Boot a Debian kernel under qemu and run a script inside as root.
    VmRun(vm_run::Options),
    /// Run the integration tests inside the VM kernels.
    VmTest(vm_test::Options),
    /// Everything CI runs: fmt, clippy, unit tests, fuzzing, host integration tests, the soak
    /// and VM integration tests.
    Test(test::Options),
    /// Run the fuzz targets in fuzz/ (cargo-fuzz), each for a bounded time.
    Fuzz(fuzz::Options),
    /// Flood new UDP flows and compare the flow rate and the events received with no
    /// listener, with `ctscope events` and with `conntrack -E` (root).
    Bench(bench::Options),
    /// Churn soak of the agent (root): steady flows in several namespaces, namespaces created
    /// and deleted every second, ctnetlink deletes and inserts, table-full episodes, the agent
    /// killed and restarted, ring-buffer overflow. At every checkpoint (about every 10 s,
    /// the load paused) each agent's table must equal `conntrack -L` in every namespace;
    /// the long-running agent's memory and open fds must stay flat after warm-up, and
    /// every lost event must be counted. Prints a table of checkpoints; exits 1 on any
    /// divergence, leak or uncounted loss.
    Soak(soak::Options),
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line, without a backtrace even when
            // RUST_BACKTRACE is set for the builds.
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup(opts) => setup::cmd(&opts),
        Command::Build(opts) => build::cmd(&opts).map(drop),
        Command::Run(opts) => run::cmd(&opts),
        Command::VmRun(opts) => vm_run::cmd(&opts),
        Command::VmTest(opts) => vm_test::cmd(&opts),
        Command::Test(opts) => test::cmd(&opts),
        Command::Fuzz(opts) => fuzz::cmd(&opts),
        Command::Bench(opts) => bench::cmd(&opts),
        Command::Soak(opts) => soak::cmd(&opts),
    }
}

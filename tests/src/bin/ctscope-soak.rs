//! `ctscope-soak`: the churn soak that `cargo xtask soak` runs (as root, with `CTSCOPE_BIN`
//! the release ctscope). Prints a checkpoint table, optionally writes it as JSON, and
//! exits 1 on any divergence, leak or uncounted loss.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use clap::Parser;
use ctscope_tests::{cmd, soak};
use nix::sys::signal::{SigHandler, Signal, signal};

/// Churn soak of the ctscope agent: steady flows in several namespaces, namespaces
/// created and deleted every second, ctnetlink deletes and inserts, table-full episodes,
/// an agent killed and restarted, ring-buffer overflow. At each checkpoint (the load
/// paused) every agent's table must equal `conntrack -L` in every namespace, the kept
/// agent's VmRSS and open fds must stay flat after warm-up, and every lost event must be
/// counted.
#[derive(Parser)]
#[command(name = "ctscope-soak")]
struct Options {
    /// How long to run, in minutes, 2 to 1440 (CI runs 2; 30 is a good run by hand).
    #[arg(long, default_value_t = 2.0, value_parser = minutes)]
    minutes: f64,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Seconds of load between checkpoints.
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Seconds a checkpoint waits for the agents to equal the kernel before it fails.
    #[arg(long, default_value_t = 20)]
    settle: u64,
}

fn minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if (2.0..=1440.0).contains(&m) => Ok(m),
        _ => Err(format!(
            "{s:?}: minutes from 2 to 1440 (shorter runs have too few \
             checkpoints for the leak checks)"
        )),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let opts = Options::parse();
    if let Some(why) = cannot_run() {
        eprintln!("ctscope-soak: cannot run: {why}");
        return ExitCode::FAILURE;
    }
    // Ctrl-C and SIGTERM end the soak at the next checkpoint, so the guards clean up.
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal(sig, SigHandler::Handler(on_signal)) }.expect("installing a handler");
    }
    let cfg = soak::Config {
        duration: Duration::from_secs_f64(opts.minutes * 60.0),
        every: Duration::from_secs(opts.every),
        settle: Duration::from_secs(opts.settle),
    };
    let report = soak::run(&cfg, &STOP);
    report.print();
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("JSON");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("ctscope-soak: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Why the soak cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, BPF, sysctls)".into());
    }
    let missing: Vec<&str> = ["ip", "nft", "conntrack"]
        .into_iter()
        .filter(|t| !cmd::on_path(t))
        .collect();
    if !missing.is_empty() {
        return Some(format!("missing tools on PATH: {}", missing.join(", ")));
    }
    ctscope_tests::ctscope::binary()
        .is_none()
        .then(|| "no ctscope binary: set CTSCOPE_BIN (cargo xtask soak does)".into())
}

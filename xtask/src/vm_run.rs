//! `cargo xtask vm-run --kernel 5.10|6.1|6.12 --script FILE [--timeout SECS] [--keep]`:
//! builds ctscope and an initramfs, boots the kernel under qemu, runs FILE as root inside
//! and exits with FILE's exit status.
use std::{
    fs,
    path::{Path, PathBuf},
    process,
    time::Duration,
};

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    cargo, initramfs,
    kernels::{self, Series},
    qemu, setup,
};

#[derive(Args)]
pub struct Options {
    /// Which Debian kernel to boot.
    #[arg(long, value_enum)]
    kernel: Series,
    /// Shell script (or executable) to run as root inside the VM. Inside, `ctscope`,
    /// `ip`, `nft` and `conntrack` are on PATH, CTSCOPE_BIN and CTSCOPE_VM_KERNEL are set.
    #[arg(long)]
    script: PathBuf,
    /// Kill the VM and fail after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Keep the staged root and the initramfs image (their path is printed).
    #[arg(long)]
    keep: bool,
    /// Build ctscope unoptimised (dev profile); the default is the release build.
    #[arg(long)]
    debug: bool,
}

/// One boot of one kernel.
pub struct Job<'a> {
    pub series: Series,
    pub script: &'a Path,
    /// ctscope first, then any other binaries the script runs (copied to /usr/local/bin).
    pub binaries: Vec<PathBuf>,
    pub timeout: Duration,
    pub keep: bool,
}

pub fn cmd(opts: &Options) -> Result<()> {
    setup::ensure(&setup::Needs {
        tests: true,
        vm: true,
    })?;
    let ctscope = cargo::build_ctscope(!opts.debug)?;
    let job = Job {
        series: opts.kernel,
        script: &opts.script,
        binaries: vec![ctscope],
        timeout: Duration::from_secs(opts.timeout),
        keep: opts.keep,
    };
    let outcome = run(&job)?;
    match check(&job, &outcome)? {
        0 => Ok(()),
        code => {
            eprintln!("vm-run: the script exited with status {code}");
            process::exit(code);
        }
    }
}

/// Boots `job.series` with a fresh initramfs and runs the script; the caller has ensured
/// setup and built the binaries.
pub fn run(job: &Job) -> Result<qemu::Outcome> {
    let kernel = kernels::require(job.series)?;
    // Per process: two runs of the same kernel at once must not share a staging tree.
    let work =
        cargo::target_dir()?
            .join("vm")
            .join(format!("{}-{}", kernel.release, process::id()));
    fs::create_dir_all(&work)?;
    let spec = initramfs::Spec {
        kernel: &kernel,
        binaries: job.binaries.clone(),
        script: job.script,
        env: env(job)?,
    };
    println!(
        "vm: building the initramfs for {} in {}",
        kernel.release,
        work.display()
    );
    let image = initramfs::build(&spec, &work)?;
    println!(
        "vm: booting {} ({} MB initramfs)",
        kernel.release,
        fs::metadata(&image)?.len() >> 20
    );
    let prefix = format!("[{}] ", job.series.name());
    let outcome = qemu::boot(&kernel.vmlinuz(), &image, job.timeout, &prefix)?;
    report(&kernel.release, &outcome);
    if job.keep {
        println!("vm: kept {}", work.display());
    } else {
        fs::remove_dir_all(&work)?;
    }
    Ok(outcome)
}

/// The script's exit code, or an error saying why there is none.
pub fn check(job: &Job, outcome: &qemu::Outcome) -> Result<i32> {
    if outcome.timed_out {
        bail!(
            "the {} VM timed out after {} s and was killed",
            job.series,
            job.timeout.as_secs()
        );
    }
    match outcome.exit_code {
        Some(code) => Ok(code),
        None => bail!(
            "the {} VM stopped without reporting the script's exit status \
             (kernel panic or init failure: see the console output above)",
            job.series
        ),
    }
}

fn env(job: &Job) -> Result<Vec<(String, String)>> {
    let Some(ctscope) = job.binaries.first().and_then(|b| b.file_name()) else {
        bail!("no ctscope binary for the VM");
    };
    // The test switch that hides kernel symbols (ct-user/src/bpf/hooks.rs) goes along, so a
    // broken probe can be shown to fail the VM stage.
    let forwarded = std::env::var("CTSCOPE_HIDE_SYMBOL")
        .ok()
        .map(|v| ("CTSCOPE_HIDE_SYMBOL".to_owned(), v));
    Ok(vec![
        (
            "CTSCOPE_BIN".into(),
            format!("{}/{}", initramfs::BIN_DIR, ctscope.to_string_lossy()),
        ),
        ("CTSCOPE_VM_KERNEL".into(), job.series.name().into()),
        (
            "CTSCOPE_REQUIRE_TIER".into(),
            job.series.required_tier().to_string(),
        ),
    ]
    .into_iter()
    .chain(forwarded)
    .collect())
}

fn report(release: &str, outcome: &qemu::Outcome) {
    let boot = outcome
        .boot
        .map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "vm: {release}: boot to script {boot}, total {:.1} s, exit status {}",
        outcome.total.as_secs_f64(),
        outcome
            .exit_code
            .map_or("unknown".into(), |c| c.to_string())
    );
}

//! `cargo xtask vm-test [--kernel 5.10|6.1|6.12 ...] [-- TEST_ARGS]`: runs the integration test
//! binary of `ctscope-tests` inside each VM kernel (default: 6.1 and 6.12) with `--test-threads 1`
//! and prints a per-kernel summary.
use std::{ffi::OsString, fs, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{cargo, initramfs, kernels::Series, setup, vm_run};

pub const TESTS_PACKAGE: &str = "ctscope-tests";
/// Per kernel: boot takes 5–10 s under TCG, the scenarios the rest (1 190–1 320 s on
/// this machine with the IPv6 twins, and runs vary by 25 % or more under load). The
/// other stages of a cold run take ~25 min, so a kernel hitting this limit still ends
/// CI within an hour.
const DEFAULT_TIMEOUT: u64 = 2100;

#[derive(Args, Clone)]
pub struct Options {
    /// Kernels to test on (repeatable); default: 6.1 and 6.12 (5.10 only when named).
    #[arg(long, value_enum)]
    pub kernel: Vec<Series>,
    /// Kill a VM and fail after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT)]
    pub timeout: u64,
    /// Keep the staged roots and initramfs images.
    #[arg(long)]
    pub keep: bool,
    /// Boot the kernels one after the other instead of side by side (their console
    /// lines are prefixed with the kernel either way).
    #[arg(long)]
    pub serial: bool,
    /// Build ctscope unoptimised (dev profile). The default is the release build, what
    /// `cargo xtask run` runs; the test binaries are always dev builds.
    #[arg(long)]
    pub debug: bool,
    /// Arguments for the test binary, after `--` (a name filter, `--exact`, …).
    #[arg(last = true)]
    pub test_args: Vec<OsString>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernel: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            keep: false,
            serial: false,
            debug: false,
            test_args: Vec::new(),
        }
    }
}

/// How one kernel's run ended.
struct Summary {
    series: Series,
    ok: bool,
    text: String,
}

pub fn cmd(opts: &Options) -> Result<()> {
    setup::ensure(&setup::Needs {
        tests: true,
        vm: true,
    })?;
    let ctscope = cargo::build_ctscope(!opts.debug)?;
    let tests = cargo::build_tests(TESTS_PACKAGE, false)?;
    let script = cargo::target_dir()?
        .join("vm")
        .join(format!("vm-test-{}.sh", std::process::id()));
    fs::create_dir_all(script.parent().expect("script path has a parent"))?;
    fs::write(&script, test_script(&tests, &opts.test_args)?)?;
    let kernels = if opts.kernel.is_empty() {
        Series::DEFAULT.to_vec()
    } else {
        opts.kernel.clone()
    };
    let mut binaries = vec![ctscope];
    binaries.extend(tests);
    let jobs: Vec<vm_run::Job> = kernels
        .into_iter()
        .map(|series| vm_run::Job {
            series,
            script: &script,
            binaries: binaries.clone(),
            timeout: Duration::from_secs(opts.timeout),
            keep: opts.keep,
        })
        .collect();
    // Each VM is one single-threaded TCG process: with a core each, the kernels run side
    // by side. One kernel failing must not hide the other's results.
    let summaries: Vec<Summary> = if opts.serial {
        jobs.iter().map(run_one).collect()
    } else {
        std::thread::scope(|s| {
            let running: Vec<_> = jobs.iter().map(|j| s.spawn(|| run_one(j))).collect();
            running
                .into_iter()
                .zip(&jobs)
                .map(|(t, j)| {
                    t.join().unwrap_or_else(|_| Summary {
                        series: j.series,
                        ok: false,
                        text: "FAILED: the VM's thread panicked".into(),
                    })
                })
                .collect()
        })
    };
    let _ = fs::remove_file(&script);
    print_summaries(&summaries);
    let failed: Vec<_> = summaries
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.series.name())
        .collect();
    if !failed.is_empty() {
        bail!("VM tests failed on {}", failed.join(", "));
    }
    Ok(())
}

fn run_one(job: &vm_run::Job) -> Summary {
    let outcome = vm_run::run(job);
    let checked = outcome
        .as_ref()
        .map_err(|e| format!("{e:#}"))
        .and_then(|o| vm_run::check(job, o).map_err(|e| format!("{e:#}")));
    let results = outcome.as_ref().map(test_results).unwrap_or_default();
    let timing = outcome.as_ref().map_or(String::new(), |o| {
        let boot = o
            .boot
            .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        format!(" (boot {boot}, total {:.1} s)", o.total.as_secs_f64())
    });
    let (ok, verdict) = match checked {
        Ok(0) => (true, "ok".to_owned()),
        Ok(code) => (false, format!("FAILED (exit status {code})")),
        Err(e) => (false, format!("FAILED: {e}")),
    };
    Summary {
        series: job.series,
        ok,
        text: format!("{verdict}{timing}{results}"),
    }
}

/// libtest's summary lines ("test result: ok. 5 passed; 0 failed; …").
fn test_results(outcome: &crate::qemu::Outcome) -> String {
    outcome
        .lines
        .iter()
        .filter_map(|l| l.find("test result:").map(|i| &l[i..]))
        .map(|l| format!("\n    {l}"))
        .collect()
}

fn print_summaries(summaries: &[Summary]) {
    println!("\nvm-test summary:");
    for s in summaries {
        println!("  {:<5} {}", s.series.name(), s.text);
    }
}

/// Runs every test executable in turn; the script fails if any of them does.
fn test_script(tests: &[PathBuf], args: &[OsString]) -> Result<String> {
    let mut script = String::from("# generated by cargo xtask vm-test\ncd /tmp\nrc=0\n");
    let args: String = args
        .iter()
        .map(|a| format!(" {}", quote(&a.to_string_lossy())))
        .collect();
    for test in tests {
        let name = test
            .file_name()
            .context("test executable without a name")?
            .to_string_lossy();
        let path = quote(&format!("{}/{name}", initramfs::BIN_DIR));
        script.push_str(&format!("{path} --test-threads 1{args} || rc=$?\n"));
    }
    script.push_str("exit $rc\n");
    Ok(script)
}

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

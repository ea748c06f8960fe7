//! Room on the disk before a long run: a build that runs out of space dies minutes in
//! with a linker's bus error, far from its cause.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// What `cargo xtask test` writes at most into a fresh target directory (debug and
/// release builds, the BPF build, fuzz builds, VM kernels and images), with a margin.
pub const TEST_RUN_GIB: u64 = 10;

const GIB: u64 = 1 << 30;

/// Fails, saying what to free, when the filesystem holding `dir` has less than `gib` GiB.
pub fn ensure_room(dir: &Path, gib: u64, what: &str) -> Result<()> {
    let free = free_bytes(dir)?;
    if free < gib * GIB {
        bail!(
            "only {:.1} GiB free on the filesystem of {} and {what} needs about {gib} GiB: \
             free space there (e.g. `cargo clean` in other checkouts) and run it again",
            free as f64 / GIB as f64,
            dir.display()
        );
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem, from `df`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let out = cmd::output(
        Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(existing),
    )?;
    parse_df(&out).with_context(|| format!("reading `df` for {}: {out:?}", existing.display()))
}

fn parse_df(out: &str) -> Option<u64> {
    out.lines().nth(1)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_available_column() {
        assert_eq!(parse_df("Avail\n3614257152\n"), Some(3_614_257_152));
        assert_eq!(parse_df("Avail\n"), None);
    }
}

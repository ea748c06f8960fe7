//! Builds the BPF object (`ct-ebpf`) with bpf-linker and places it in OUT_DIR, where
//! `src/bpf/loader.rs` embeds it.
//!
//! The toolchain is the one pinned in ct-ebpf/bpf-toolchain (its LLVM must match
//! bpf-linker's), run with RUSTC_BOOTSTRAP=1 so that it accepts `-Z build-std=core`.
//!
//! `AYA_BUILD_SKIP=1` skips the BPF build and embeds an empty object instead, so the
//! userspace code can be checked, linted and unit-tested on a machine without bpf-linker;
//! such a binary says so when asked to load programs.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        fs::write(out_dir.join("ct-ebpf"), []).context("writing the empty BPF object stub")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "ct-ebpf")
        .ok_or_else(|| anyhow!("ct-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("ct-ebpf manifest has no parent"))?
        .as_str();
    let toolchain_file = format!("{root_dir}/bpf-toolchain");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let toolchain = read_toolchain(&toolchain_file)?;
    // SAFETY: build scripts are single-threaded; aya-build reads this variable and the
    // cargo it spawns inherits it (it enables `-Z build-std` on a release toolchain).
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ct-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the BPF programs (needs the {toolchain} toolchain with rust-src, and \
             bpf-linker: run `cargo xtask setup`)"
        )
    })
}

/// The first line of ct-ebpf/bpf-toolchain that is not a comment.
fn read_toolchain(path: &str) -> anyhow::Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .ok_or_else(|| anyhow!("{path} names no toolchain"))
}

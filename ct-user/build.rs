//! Builds the BPF object (`ct-ebpf`) with nightly and bpf-linker, and places it in OUT_DIR
//! where `src/loader.rs` embeds it.
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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ct-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the BPF programs (needs nightly + rust-src and bpf-linker: `cargo xtask setup`)",
    )
}

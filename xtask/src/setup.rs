//! `cargo xtask setup [--check]`: installs what a fresh Debian 12 machine needs, skipping
//! what is present, and saying what it does. Other subcommands call [`ensure`] so that
//! `cargo xtask run` / `test` work on a fresh clone.
use std::{env, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    apt::{self, Apt},
    cargo, cmd,
    kernels::{self, Series},
};

#[derive(Args)]
pub struct Options {
    /// Only report what is missing; exit non-zero if anything is.
    #[arg(long)]
    check: bool,
}

/// What a caller is about to do, hence what must be present.
#[derive(Clone, Copy)]
pub struct Needs {
    /// Running the tests: the tools they drive.
    pub tests: bool,
    /// Booting VM kernels: qemu, busybox, cpio, kmod, xz and the kernels themselves.
    pub vm: bool,
}

/// Building: the BPF object with bpf-linker (which links LLVM 22), and protoc for the
/// CRI client (pod names).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "protobuf-compiler",
];
/// The host integration tests: they drive nft, conntrack and ip, drop capabilities with
/// util-linux's setpriv, scrape the agent's metrics with a real Prometheus, check them
/// with its promtool and compare them with node_exporter's (on a systemd machine
/// Debian's packages also start `prometheus` on :9090 and node_exporter on :9100, which
/// the tests leave alone: they run their own on free loopback ports), verify the unit in
/// deploy/ with `systemd-analyze`, validate the manifests with kubernetes-validate (in a
/// python3 venv), and make pods the way the kubelet does with containerd, runc, the CNI
/// plugins and a static busybox (their pause image). `cargo xtask bench --workload
/// http|dns` drives wrk, nginx, dnsperf and dnsmasq: it starts its own nginx and dnsmasq
/// in its namespaces, never the system's services (dnsmasq-base is dnsmasq without the
/// service; on a systemd machine Debian's nginx package starts one on :80, left alone).
/// Not installed for `cargo xtask run`.
const TEST_PACKAGES: &[&str] = &[
    "conntrack",
    "nftables",
    "iproute2",
    "util-linux",
    "prometheus",
    "prometheus-node-exporter",
    "systemd",
    "python3-venv",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "wrk",
    "nginx",
    "dnsperf",
    "dnsmasq-base",
];
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
];
/// rust-src for `-Z build-std=core`; clippy to lint the BPF crate for its own target.
const BPF_TOOLCHAIN_COMPONENTS: &[&str] = &["rust-src", "clippy"];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo xtask fuzz` drives the targets in fuzz/ with it.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Validates deploy/kubernetes against the Kubernetes schemas it bundles (PyPI), for the
/// `deploy_manifests` trial, which looks for it in [`KUBERNETES_VALIDATE_DIR`].
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// A virtual environment under the target directory: nothing installed system-wide.
const KUBERNETES_VALIDATE_DIR: &str = "tools/kubernetes-validate";

pub fn cmd(opts: &Options) -> Result<()> {
    // Everything, cargo-fuzz included (`cargo xtask fuzz` installs it itself otherwise).
    let mut all = items(Needs {
        tests: true,
        vm: true,
    });
    all.push(Item::CargoFuzz);
    if opts.check {
        let missing = report(all)?;
        if !missing.is_empty() {
            bail!("missing: {} (run `cargo xtask setup`)", names(&missing));
        }
        eprintln!("setup: nothing missing");
        return Ok(());
    }
    let start = Instant::now();
    let missing = report(all)?;
    install(&missing)?;
    eprintln!("setup: done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Installs whatever `needs` requires and is missing; silent when nothing is.
pub fn ensure(needs: &Needs) -> Result<()> {
    let mut missing = Vec::new();
    for item in items(*needs) {
        if item.missing()?.is_some() {
            missing.push(item);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: missing: {}; installing", names(&missing));
    install(&missing)
}

/// Prints the state of every item and returns the missing ones.
fn report(items: Vec<Item>) -> Result<Vec<Item>> {
    let mut missing = Vec::new();
    for item in items {
        match item.missing()? {
            None => eprintln!("setup: {}: present{}", item.name(), item.detail()?),
            Some(what) => {
                eprintln!("setup: {}: missing {what}", item.name());
                missing.push(item);
            }
        }
    }
    Ok(missing)
}

fn install(missing: &[Item]) -> Result<()> {
    let mut apt = Apt::default();
    for item in missing {
        eprintln!("setup: installing {}", item.name());
        match item.install(&mut apt) {
            // Only `vm-test --kernel 5.10` boots it: a mirror that no longer serves
            // bullseye must not stop the tests that do not.
            Err(e) if item.optional() => eprintln!(
                "setup: warning: {} not installed ({e:#}); only `--kernel` naming it needs it",
                item.name()
            ),
            r => r?,
        }
    }
    Ok(())
}

fn names(items: &[Item]) -> String {
    items.iter().map(Item::name).collect::<Vec<_>>().join(", ")
}

/// One thing setup can check and install. Order matters: apt first (bpf-linker links
/// LLVM 22 from apt; kernels need apt-get download).
enum Item {
    Apt(Vec<&'static str>),
    BpfToolchain,
    BpfLinker,
    CargoFuzz,
    KubernetesValidate,
    Kernel(Series),
}

fn items(needs: Needs) -> Vec<Item> {
    let mut packages = BUILD_PACKAGES.to_vec();
    if needs.tests {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    if needs.vm {
        packages.extend_from_slice(VM_PACKAGES);
    }
    let mut items = vec![Item::Apt(packages), Item::BpfToolchain, Item::BpfLinker];
    if needs.tests {
        items.push(Item::KubernetesValidate);
    }
    if needs.vm {
        items.extend(Series::ALL.map(Item::Kernel));
    }
    items
}

impl Item {
    fn name(&self) -> String {
        match self {
            Item::Apt(_) => "apt packages".into(),
            Item::BpfToolchain => format!(
                "BPF toolchain {} with {}",
                bpf_toolchain().unwrap_or_default(),
                BPF_TOOLCHAIN_COMPONENTS.join(", ")
            ),
            Item::BpfLinker => format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"),
            Item::CargoFuzz => format!("cargo-fuzz {CARGO_FUZZ_VERSION}"),
            Item::KubernetesValidate => {
                format!("kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (PyPI)")
            }
            Item::Kernel(series) => format!("{series} VM kernel"),
        }
    }

    /// None if present, otherwise what is missing.
    fn missing(&self) -> Result<Option<String>> {
        Ok(match self {
            Item::Apt(packages) => {
                let absent = apt::absent(packages);
                (!absent.is_empty()).then(|| absent.join(" "))
            }
            Item::BpfToolchain => missing_bpf_toolchain(),
            Item::BpfLinker => (!bpf_linker_present()).then(|| "bpf-linker".into()),
            Item::CargoFuzz => (!cargo_fuzz_present()).then(|| "cargo-fuzz".into()),
            Item::KubernetesValidate => {
                (!kubernetes_validate_present()?).then(|| "kubernetes-validate".into())
            }
            Item::Kernel(series) => match kernels::cached(*series)? {
                Some(_) => None,
                None => Some(format!("(none in {})", kernels::cache_dir()?.display())),
            },
        })
    }

    /// Which one is present, where that is worth saying.
    fn detail(&self) -> Result<String> {
        Ok(match self {
            Item::Kernel(series) => match kernels::cached(*series)? {
                Some(k) => format!(" ({} in {})", k.release, k.dir.display()),
                None => String::new(),
            },
            _ => String::new(),
        })
    }

    /// Whether the default tests can run without it: a VM kernel the VM stage does not
    /// boot unless named.
    fn optional(&self) -> bool {
        matches!(self, Item::Kernel(s) if !Series::DEFAULT.contains(s))
    }

    fn install(&self, apt: &mut Apt) -> Result<()> {
        match self {
            Item::Apt(packages) => apt.install(&apt::absent(packages)),
            Item::BpfToolchain => install_bpf_toolchain(),
            Item::BpfLinker => install_bpf_linker(),
            Item::CargoFuzz => install_cargo_fuzz(),
            Item::KubernetesValidate => install_kubernetes_validate(),
            Item::Kernel(series) => kernels::install(*series, apt).map(drop),
        }
    }
}

/// The toolchain named in ct-ebpf/bpf-toolchain (first line that is not a comment).
pub fn bpf_toolchain() -> Result<String> {
    let path = cmd::workspace_root().join("ct-ebpf/bpf-toolchain");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .with_context(|| format!("{} names no toolchain", path.display()))
}

fn missing_bpf_toolchain() -> Option<String> {
    let Ok(toolchain) = bpf_toolchain() else {
        return Some("ct-ebpf/bpf-toolchain unreadable".into());
    };
    let installed = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            &toolchain,
        ])
        .output();
    let installed = match installed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => return Some(format!("the {toolchain} toolchain")),
    };
    let absent: Vec<_> = BPF_TOOLCHAIN_COMPONENTS
        .iter()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.starts_with(&format!("{c}-")) || l == **c)
        })
        .copied()
        .collect();
    (!absent.is_empty()).then(|| absent.join(", "))
}

/// Installs the pinned BPF toolchain and its components. A pinned version never updates
/// itself to a newer LLVM, which `rustup toolchain install nightly` would.
fn install_bpf_toolchain() -> Result<()> {
    let toolchain = bpf_toolchain()?;
    let mut install = Command::new("rustup");
    // --profile minimal: the default profile would also fetch the docs.
    install.args(["toolchain", "install", &toolchain, "--profile", "minimal"]);
    for c in BPF_TOOLCHAIN_COMPONENTS {
        install.args(["--component", c]);
    }
    cmd::run(&mut install)
}

fn bpf_linker_present() -> bool {
    let out = Command::new("bpf-linker").arg("--version").output();
    let major_minor = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(mm, _)| mm);
    out.is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).contains(&format!(" {major_minor}."))
    })
}

/// Installs cargo-fuzz unless the pinned version is present (for `cargo xtask fuzz`).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_present() {
        return Ok(());
    }
    eprintln!("setup: missing: {}; installing", Item::CargoFuzz.name());
    install_cargo_fuzz()
}

fn cargo_fuzz_present() -> bool {
    let out = cmd::cargo().args(["fuzz", "--version"]).output();
    out.is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).trim()
                == format!("cargo-fuzz {CARGO_FUZZ_VERSION}")
    })
}

/// From crates.io with its lock file; built in a temporary directory, as bpf-linker is.
fn install_cargo_fuzz() -> Result<()> {
    let mut install = cmd::cargo();
    install
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .env_remove("CARGO_TARGET_DIR");
    cmd::run(&mut install)?;
    if !cargo_fuzz_present() {
        bail!(
            "cargo-fuzz was installed but `cargo fuzz` does not run it: add ~/.cargo/bin to PATH"
        );
    }
    Ok(())
}

/// Without LLVM_PREFIX, llvm-sys picks LLVM 14 from /usr/bin and the linker it builds
/// cannot link what rustc's LLVM 22 emits.
fn install_bpf_linker() -> Result<()> {
    let mut install = cmd::cargo();
    install
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"]);
    // Without CARGO_TARGET_DIR, cargo install builds in a temporary directory: keep this
    // 2-minute tool build out of the workspace's target dir (and its lock).
    install.env_remove("CARGO_TARGET_DIR");
    cmd::run(&mut install)?;
    if !bpf_linker_present() {
        let home = env::var("CARGO_HOME").unwrap_or_else(|_| "~/.cargo".into());
        bail!("bpf-linker was installed but is not on PATH: add {home}/bin to PATH");
    }
    Ok(())
}

/// The virtual environment kubernetes-validate lives in.
fn kubernetes_validate_venv() -> Result<std::path::PathBuf> {
    Ok(cargo::target_dir()?.join(KUBERNETES_VALIDATE_DIR))
}

fn kubernetes_validate_present() -> Result<bool> {
    let bin = kubernetes_validate_venv()?.join("bin/kubernetes-validate");
    let out = Command::new(bin).arg("--version").output();
    Ok(out.is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&[o.stdout, o.stderr].concat())
                .contains(KUBERNETES_VALIDATE_VERSION)
    }))
}

/// `python3 -m venv` (Debian's python3-venv, from the apt step), then pip from PyPI.
fn install_kubernetes_validate() -> Result<()> {
    let venv = kubernetes_validate_venv()?;
    cmd::run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            )),
    )?;
    if !kubernetes_validate_present()? {
        bail!(
            "kubernetes-validate was installed in {} but does not run",
            venv.display()
        );
    }
    Ok(())
}

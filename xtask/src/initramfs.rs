//! The VM's root filesystem: a gzipped cpio (newc) archive the kernel unpacks into its
//! rootfs. It holds busybox-static (mount, modprobe, poweroff…) and bash, the kernel's
//! netfilter/veth modules with a fresh modules.dep, the host's `ip`, `nft` and `conntrack`
//! with their shared libraries, our own binaries, the kernel config, a script to run and
//! the init that runs it.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, kernels::Kernel};

/// Marker lines the init prints on the console; `qemu.rs` looks for them.
pub const READY_MARKER: &str = "CTSCOPE-VM-READY";
pub const EXIT_MARKER: &str = "CTSCOPE-VM-EXIT=";

/// Where our own binaries go inside the VM.
pub const BIN_DIR: &str = "/usr/local/bin";

/// Module directories the conntrack/nftables/NAT/veth scenarios draw from; their
/// dependencies (libcrc32c, nf_defrag_*, …) are added from modules.dep.
const MODULE_PREFIXES: &[&str] = &[
    "kernel/net/netfilter/",
    "kernel/net/ipv4/netfilter/",
    "kernel/net/ipv6/netfilter/",
    "kernel/drivers/net/veth.ko",
];

/// Loaded at boot so that every scenario finds conntrack, ctnetlink, nf_tables and NAT in
/// place; the kernel autoloads anything else through /sbin/modprobe.
const BOOT_MODULES: &[&str] = &[
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_chain_nat",
    "nf_nat",
    "veth",
];

/// Host tools the scenarios drive, copied with their shared libraries.
const HOST_TOOLS: &[&str] = &["ip", "nft", "conntrack", "setpriv"];

/// What goes into one initramfs.
pub struct Spec<'a> {
    pub kernel: &'a Kernel,
    /// Host executables, copied to [`BIN_DIR`] under their file names.
    pub binaries: Vec<PathBuf>,
    /// A shell script (or an executable) run as root once the VM is up.
    pub script: &'a Path,
    /// Exported before the script runs.
    pub env: Vec<(String, String)>,
}

/// Stages the tree in `work/root` and writes `work/initramfs.img`; returns the latter.
pub fn build(spec: &Spec, work: &Path) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    skeleton(&root)?;
    busybox(&root)?;
    modules(&root, spec.kernel)?;
    copy(
        &spec.kernel.config(),
        &root.join(format!("boot/config-{}", spec.kernel.release)),
        0o644,
    )?;
    for tool in HOST_TOOLS {
        let host = cmd::find_program(tool)
            .with_context(|| format!("`{tool}` not found: run `cargo xtask setup`"))?;
        elf(&root, &host, &format!("/usr/sbin/{tool}"))?;
    }
    for binary in &spec.binaries {
        let name = binary
            .file_name()
            .context("binary without a file name")?
            .to_string_lossy();
        elf(&root, binary, &format!("{BIN_DIR}/{name}"))?;
    }
    script(&root, spec)?;
    write(
        &root.join("init"),
        INIT.replace("@MODULES@", &BOOT_MODULES.join(" ")),
        0o755,
    )?;
    let image = work.join("initramfs.img");
    crate::cpio::write_gz(&root, &image)?;
    Ok(image)
}

fn skeleton(root: &Path) -> Result<()> {
    let dirs = [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "lib",
        "lib64",
        "etc",
        "boot",
        "root",
        "tmp",
        "run",
        "dev",
        "proc",
        "sys",
        "xtask",
    ];
    for dir in dirs {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::create_dir_all(root.join("var"))?;
    symlink("../run", root.join("var/run"))?; // `ip netns` and friends use /var/run
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write(&root.join("etc/group"), "root:x:0:\n", 0o644)?;
    write(
        &root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
        0o644,
    )?;
    // nft and conntrack translate protocol and service names through these.
    for file in ["etc/protocols", "etc/services"] {
        let host = Path::new("/").join(file);
        if host.is_file() {
            copy(&host, &root.join(file), 0o644)?;
        }
    }
    Ok(())
}

/// busybox-static plus a link for each applet at the path busybox itself lists, except
/// the shell: Debian's busybox sh runs its own applets before searching PATH
/// (FEATURE_SH_STANDALONE), so `ip` in a script would be busybox's, not iproute2's.
/// The host's bash is /bin/sh instead.
fn busybox(root: &Path) -> Result<()> {
    let host =
        cmd::find_program("busybox").context("busybox not found: run `cargo xtask setup`")?;
    copy(&host, &root.join("bin/busybox"), 0o755)?;
    let bash = cmd::find_program("bash").context("bash not found")?;
    elf(root, &bash, "/bin/bash")?;
    symlink("bash", root.join("bin/sh"))?;
    let applets = cmd::output(Command::new(&host).arg("--list-full"))?;
    let skip = ["bin/busybox", "bin/sh", "bin/bash"];
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !skip.contains(a))
    {
        let link = root.join(applet);
        fs::create_dir_all(link.parent().expect("applet path has a parent"))?;
        symlink("/bin/busybox", &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// The module closure of [`MODULE_PREFIXES`], decompressed (busybox modprobe cannot read
/// .ko.xz), with modules.dep/alias regenerated by `depmod -b` for the kernel's autoloading.
fn modules(root: &Path, kernel: &Kernel) -> Result<()> {
    let src = kernel.modules_dir();
    let dest = root.join("lib/modules").join(&kernel.release);
    let deps = read_modules_dep(&src.join("modules.dep"))?;
    let wanted = closure(&deps, |m| MODULE_PREFIXES.iter().any(|p| m.starts_with(p)));
    let mut compressed = Vec::new();
    for module in &wanted {
        let to = dest.join(module);
        fs::create_dir_all(to.parent().expect("module path has a parent"))?;
        copy(&src.join(module), &to, 0o644)?;
        if to.extension().is_some_and(|e| e != "ko") {
            compressed.push(to);
        }
    }
    decompress(&compressed)?;
    for meta in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if src.join(meta).is_file() {
            copy(&src.join(meta), &dest.join(meta), 0o644)?;
        }
    }
    cmd::output(
        Command::new(crate::kernels::depmod_program())
            .arg("-b")
            .arg(root)
            .arg(&kernel.release),
    )?;
    Ok(())
}

/// modules.dep: `kernel/a.ko: kernel/b.ko kernel/c.ko`.
fn read_modules_dep(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parse = |line: &str| {
        let (module, deps) = line.split_once(':')?;
        Some((
            module.to_owned(),
            deps.split_whitespace().map(str::to_owned).collect(),
        ))
    };
    Ok(text.lines().filter_map(parse).collect())
}

fn closure(deps: &BTreeMap<String, Vec<String>>, root: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut todo: Vec<&String> = deps.keys().filter(|m| root(m)).collect();
    let mut seen = BTreeSet::new();
    while let Some(module) = todo.pop() {
        if seen.insert(module.clone()) {
            todo.extend(deps.get(module).into_iter().flatten());
        }
    }
    seen
}

/// Decompresses modules in place, one process per format (hundreds of files).
fn decompress(files: &[PathBuf]) -> Result<()> {
    let by_tool = [
        ("xz", ["xz", "-d", "-f", "-q"]),
        ("zst", ["zstd", "-d", "-f", "-q"]),
        ("gz", ["gzip", "-d", "-f", "-q"]),
    ];
    for (ext, argv) in by_tool {
        let batch: Vec<_> = files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == ext))
            .collect();
        if batch.is_empty() {
            continue;
        }
        let mut tool = Command::new(argv[0]);
        tool.args(&argv[1..]).arg("--").args(&batch);
        if argv[0] == "zstd" {
            tool.arg("--rm");
        }
        cmd::output(&mut tool).with_context(|| {
            format!(
                "decompressing .ko.{ext} modules (is {} installed?)",
                argv[0]
            )
        })?;
    }
    Ok(())
}

/// Copies a host executable to `dest` inside the VM, with every shared library and the
/// dynamic loader it needs, at the paths ldd reports (the loader searches those).
fn elf(root: &Path, host: &Path, dest: &str) -> Result<()> {
    let to = root.join(dest.trim_start_matches('/'));
    if to.symlink_metadata().is_ok() {
        fs::remove_file(&to)?; // a busybox applet of the same name (ip): the real tool wins
    }
    copy(host, &to, 0o755)?;
    libraries(root, host)
}

fn libraries(root: &Path, binary: &Path) -> Result<()> {
    for lib in shared_libraries(binary)? {
        let to = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if !to.exists() {
            fs::create_dir_all(to.parent().expect("library path has a parent"))?;
            copy(&lib, &to, 0o755)?;
        }
    }
    Ok(())
}

fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), all.trim());
    }
    let mut libs = Vec::new();
    for line in stdout.lines() {
        if line.contains("not found") {
            bail!("{}: shared library {}", binary.display(), line.trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next());
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn script(root: &Path, spec: &Spec) -> Result<()> {
    let bytes =
        fs::read(spec.script).with_context(|| format!("reading {}", spec.script.display()))?;
    let elf = bytes.starts_with(b"\x7fELF");
    if elf {
        libraries(root, spec.script)?;
    }
    write(&root.join("xtask/script"), bytes, 0o755)?;
    // Sourced by init: how to run the script (an executable runs as is, anything else is
    // handed to sh, so a script needs neither a shebang nor an exec bit) and its env.
    let mut env = format!("XTASK_SCRIPT_IS_ELF={}\n", u8::from(elf));
    for (key, value) in &spec.env {
        env.push_str(&format!(
            "export {key}='{}'\n",
            value.replace('\'', r"'\''")
        ));
    }
    write(&root.join("xtask/env"), env, 0o644)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// PID 1 (bash). Prints READY once the system is up, then the script's exit status
/// on a line of its own, then powers off (qemu exits thanks to -no-reboot).
const INIT: &str = r#"#!/bin/sh
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
# devtmpfs lacks the fd links udev would add; conntrack -R - reads /dev/stdin.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
builtin=/lib/modules/$(uname -r)/modules.builtin
for m in @MODULES@; do
    # Built-in ones have nothing to load; anything else that fails is worth a line.
    modprobe "$m" 2>/dev/null || grep -q "/$m\.ko" "$builtin" || echo "xtask-init: cannot load module $m"
done
echo "CTSCOPE-VM-READY $(uname -r)"
. /xtask/env
cd /root
if [ "$XTASK_SCRIPT_IS_ELF" = 1 ]; then /xtask/script; else sh /xtask/script; fi
rc=$?
echo
echo "CTSCOPE-VM-EXIT=$rc"
sync
poweroff -f
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_dependencies() {
        let deps = BTreeMap::from([
            (
                "kernel/net/netfilter/nft_ct.ko".to_owned(),
                vec!["kernel/net/netfilter/nf_conntrack.ko".to_owned()],
            ),
            (
                "kernel/net/netfilter/nf_conntrack.ko".to_owned(),
                vec!["kernel/lib/libcrc32c.ko".to_owned()],
            ),
            ("kernel/lib/libcrc32c.ko".to_owned(), vec![]),
            ("kernel/fs/unrelated.ko".to_owned(), vec![]),
        ]);
        let wanted = closure(&deps, |m| m.starts_with("kernel/net/netfilter/"));
        let wanted: Vec<_> = wanted.iter().map(String::as_str).collect();
        assert_eq!(
            wanted,
            [
                "kernel/lib/libcrc32c.ko",
                "kernel/net/netfilter/nf_conntrack.ko",
                "kernel/net/netfilter/nft_ct.ko"
            ]
        );
    }
}

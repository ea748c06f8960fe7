//! The deployment files under deploy/ (Kubernetes manifests, systemd unit), read as the
//! deploy trials check them, and the tools that validate them.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

use crate::cmd;

/// The workspace's deploy/ directory.
pub fn dir() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).join("deploy")
}

/// deploy/kubernetes/*.yaml, sorted.
pub fn manifests() -> Vec<PathBuf> {
    let k8s = dir().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&k8s)
        .unwrap_or_else(|e| panic!("reading {}: {e}", k8s.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of a YAML file, as JSON values.
pub fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// deploy/kubernetes/daemonset.yaml, built in: `least_privilege` also runs in the VMs,
/// where the checkout is not.
const DAEMONSET: &str = include_str!("../../deploy/kubernetes/daemonset.yaml");

/// The DaemonSet's one container.
pub fn agent_container() -> Value {
    let ds: Value = serde_yaml_ng::from_str(DAEMONSET).expect("daemonset.yaml");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(containers.len(), 1, "the DaemonSet runs one container");
    containers.into_iter().next().unwrap_or_default()
}

/// The capabilities the DaemonSet adds (after dropping ALL), as Kubernetes names them
/// (`NET_ADMIN`, ...).
pub fn capabilities() -> Vec<String> {
    let caps = &agent_container()["securityContext"]["capabilities"];
    assert_eq!(
        caps["drop"],
        serde_json::json!(["ALL"]),
        "the DaemonSet drops every capability it does not add"
    );
    caps["add"]
        .as_array()
        .expect("the DaemonSet adds capabilities")
        .iter()
        .map(|c| c.as_str().expect("a capability name").to_owned())
        .collect()
}

/// The systemd unit.
pub fn unit() -> PathBuf {
    dir().join("systemd/ctscope.service")
}

/// `kubernetes-validate` (PyPI): on PATH, else where `cargo xtask setup` installs it (a
/// virtual environment in the target directory, beside the test binary's).
pub fn kubernetes_validate() -> Option<PathBuf> {
    cmd::find_on_path("kubernetes-validate").or_else(|| {
        let exe = std::env::current_exe().ok()?;
        // <target>/debug/deps/integration-HASH
        let target = exe.parent()?.parent()?.parent()?;
        Some(target.join("tools/kubernetes-validate/bin/kubernetes-validate"))
            .filter(|p| p.is_file())
    })
}

/// Why the manifests cannot be validated here, if they cannot.
pub fn kubernetes_validate_missing() -> Option<String> {
    if !dir().join("kubernetes").is_dir() {
        return Some(format!("no {} here", dir().join("kubernetes").display()));
    }
    kubernetes_validate().is_none().then(|| {
        "no `kubernetes-validate` (PyPI; `cargo xtask setup` installs it into \
         target/tools/kubernetes-validate)"
            .into()
    })
}

/// Why the unit cannot be verified here, if it cannot.
pub fn systemd_analyze_missing() -> Option<String> {
    if !unit().is_file() {
        return Some(format!("no {} here", unit().display()));
    }
    (!cmd::on_path("systemd-analyze"))
        .then(|| "no `systemd-analyze` on PATH (Debian's `systemd`; `cargo xtask setup`)".into())
}

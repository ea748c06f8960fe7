//! Who lives in a network namespace: whether it is the host's, and, from the cgroup of a
//! process inside it, the container (containerd, CRI-O, Docker, Podman) and the
//! Kubernetes pod. The names under /run/netns are [`super::netns::Netns::names`].
//!
//! Container runtimes name a container's cgroup after it, with the systemd driver
//! (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
//! `libpod-<id>.scope`) or the cgroupfs one (`.../<id>`, `/docker/<id>`), and the kubelet
//! puts a pod's containers under `kubepods-<qos>-pod<uid>.slice` (systemd, the uid's
//! dashes written as underscores) or `kubepods/<qos>/pod<uid>` (cgroupfs).

use std::fs;

use serde::{Deserialize, Serialize};

use super::cri;

/// What lives in one namespace; empty when nothing is known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workload {
    /// The host's own namespace, the kernel's initial one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The Kubernetes pod's UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The pod's name and Kubernetes namespace, from the container runtime
    /// ([`super::cri`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
}

/// A container, by the runtime that made it and its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    Podman,
    /// A 64-hex-digit cgroup under `kubepods` (cgroupfs driver): a container, runtime
    /// unknown.
    Unknown,
}

impl Workload {
    /// The workload of namespace `inode`, from process `pid` inside it (if one is).
    pub fn of(inode: u32, pid: Option<u32>) -> Self {
        let cgroup = pid
            .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
            .unwrap_or_default();
        Workload {
            host: is_initial(inode),
            ..Self::of_cgroup(&cgroup)
        }
    }

    /// From `/proc/PID/cgroup` text: the container and pod its path names.
    pub fn of_cgroup(text: &str) -> Self {
        // cgroup v2 has one line, `0::PATH`; under v1 every hierarchy names the same
        // container, so the first line that names one will do.
        let mut w = Workload::default();
        for path in text.lines().filter_map(|l| l.splitn(3, ':').nth(2)) {
            for part in path.split('/') {
                w.pod_uid = w.pod_uid.or_else(|| pod_uid(part));
                w.container = w.container.or_else(|| container(part, path));
            }
            if w.container.is_some() {
                break;
            }
        }
        w
    }

    pub fn is_empty(&self) -> bool {
        *self == Workload::default()
    }

    /// With the pod named by the container runtime, from its UID ([`cri::pod_name`]);
    /// no runtime is asked when there is no pod.
    pub fn named(mut self) -> Self {
        if let Some(p) = self.pod_uid.as_deref().and_then(cri::pod_name) {
            self.pod_name = Some(p.name);
            self.pod_namespace = Some(p.namespace);
        }
        self
    }
}

/// Whether `inode` is the kernel's initial network namespace: PID 1's, where /proc/1/ns
/// can be read (sandboxes forbid it), else the inode recent kernels give the initial
/// namespace for good (`PROC_NET_INIT_INO`; older ones number it like any other, as
/// Debian 12's 6.1 does).
fn is_initial(inode: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    const PROC_NET_INIT_INO: u32 = 0xEFFF_FFF9;
    match fs::metadata("/proc/1/ns/net") {
        Ok(m) => m.ino() == u64::from(inode),
        Err(_) => inode == PROC_NET_INIT_INO,
    }
}

/// `kubepods-burstable-pod<uid>.slice` or `pod<uid>`.
fn pod_uid(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let uid = part.rsplit_once("-pod").map_or_else(
        || part.strip_prefix("pod"),
        |(kubepods, uid)| kubepods.starts_with("kubepods").then_some(uid),
    )?;
    let uid = uid.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// `8-4-4-4-12` hex digits.
fn is_uid(s: &str) -> bool {
    let lens: Vec<usize> = s.split('-').map(str::len).collect();
    lens == [8, 4, 4, 4, 12] && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// One path component that names a container; `path` is the whole cgroup path.
fn container(part: &str, path: &str) -> Option<Container> {
    let scoped = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    if let Some(name) = part.strip_suffix(".scope") {
        let (runtime, id) = scoped
            .iter()
            .find_map(|(prefix, r)| Some((*r, name.strip_prefix(prefix)?)))?;
        // conmon, the monitor CRI-O and Podman run beside a container, is not it.
        return (is_container_id(id)).then(|| Container {
            runtime,
            id: id.to_owned(),
        });
    }
    if !is_container_id(part) {
        return None;
    }
    let runtime = if path.starts_with("/docker/") {
        Runtime::Docker
    } else if path.contains("/kubepods") {
        Runtime::Unknown
    } else {
        return None;
    };
    Some(Container {
        runtime,
        id: part.to_owned(),
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4b1c2e3f5a6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

    fn of(path: &str) -> Workload {
        Workload::of_cgroup(&format!("0::{path}\n"))
    }

    fn container_of(path: &str) -> Option<(Runtime, String)> {
        of(path).container.map(|c| (c.runtime, c.id))
    }

    #[test]
    fn kubernetes_with_the_systemd_driver() {
        let w = of(&format!(
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/\
             cri-containerd-{ID}.scope"
        ));
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789")
        );
        assert_eq!(
            w.container,
            Some(Container {
                runtime: Runtime::Containerd,
                id: ID.into()
            })
        );
        let guaranteed = of(&format!(
            "/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/crio-{ID}.scope"
        ));
        assert!(guaranteed.pod_uid.is_some());
        assert_eq!(guaranteed.container.unwrap().runtime, Runtime::Crio);
    }

    #[test]
    fn kubernetes_with_the_cgroupfs_driver() {
        let w = of(&format!(
            "/kubepods/besteffort/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{ID}"
        ));
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789")
        );
        assert_eq!(w.container.unwrap().runtime, Runtime::Unknown);
    }

    #[test]
    fn docker_and_podman() {
        let docker = Some((Runtime::Docker, ID.to_owned()));
        assert_eq!(
            container_of(&format!("/system.slice/docker-{ID}.scope")),
            docker
        );
        assert_eq!(container_of(&format!("/docker/{ID}")), docker);
        assert_eq!(
            container_of(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            Some((Runtime::Podman, ID.to_owned()))
        );
        assert_eq!(
            container_of(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None,
            "conmon is not the container"
        );
    }

    #[test]
    fn cgroup_v1_names_the_container_in_any_hierarchy() {
        let text = format!("12:pids:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n0::/system.slice\n");
        assert_eq!(
            Workload::of_cgroup(&text).container.unwrap().runtime,
            Runtime::Docker
        );
    }

    #[test]
    fn plain_processes_have_no_workload() {
        for path in [
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/ssh.service",
            "/",
            "/init.scope",
            "/pod-not-a-uid",
        ] {
            assert!(of(path).is_empty(), "{path}");
        }
        assert!(Workload::of_cgroup("").is_empty());
    }
}

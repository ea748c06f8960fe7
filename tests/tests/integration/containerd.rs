//! A real containerd (Debian's package) with its CRI plugin, for the pod-name trials: it
//! runs in a namespace of its own (the CNI bridge it makes for pods stays there), with
//! its state, images and CNI configuration in a temporary directory, its sandboxes'
//! cgroups under the kubelet's cgroupfs layout (`/kubepods/besteffort/pod<uid>`), and a
//! pause image made here from busybox-static (nothing is pulled). Pods are made through
//! the CRI, as the kubelet makes them; everything is removed on drop.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint, Uri};

use ctscope_tests::{cmd, netns::Netns, wait};

/// The sandbox (pause) image, imported from a tarball made here.
const PAUSE_IMAGE: &str = "ctscope.test/pause:1";
/// A static busybox: the pause image needs no libraries.
const BUSYBOX: &str = "/bin/busybox";
const CNI_BIN: &str = "/usr/lib/cni";

/// Why containerd cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    let mut absent: Vec<String> = ["containerd", "ctr", "runc", "nsenter"]
        .into_iter()
        .filter(|t| !cmd::on_path(t))
        .map(str::to_owned)
        .collect();
    for path in [
        BUSYBOX.to_owned(),
        format!("{CNI_BIN}/bridge"),
        format!("{CNI_BIN}/host-local"),
    ] {
        if !Path::new(&path).exists() {
            absent.push(path);
        }
    }
    (!absent.is_empty()).then(|| {
        format!(
            "no {} (Debian's containerd, runc, busybox-static and containernetworking-plugins; \
             `cargo xtask setup` installs them)",
            absent.join(", ")
        )
    })
}

/// A pod sandbox: its CRI id and the pid of its pause process.
pub struct Pod {
    pub id: String,
    pub pid: u32,
    pub uid: String,
}

impl Pod {
    /// The inode of the pod's network namespace.
    pub fn netns_inode(&self) -> u64 {
        fs::metadata(format!("/proc/{}/ns/net", self.pid))
            .expect("the pod's network namespace")
            .ino()
    }
}

pub struct Containerd {
    daemon: Child,
    pods: Vec<Pod>,
    rt: tokio::runtime::Runtime,
    dir: TempDir,
    _ns: Netns,
}

impl Containerd {
    /// Starts containerd and imports the pause image. `subnet`: the pods' 10.200.X.0/24.
    pub fn start(subnet: u8) -> Self {
        let ns = Netns::new();
        let dir = tempfile::Builder::new()
            .prefix("ctscope-containerd-")
            .tempdir()
            .expect("a temporary directory");
        write_config(dir.path(), subnet);
        let log = fs::File::create(dir.path().join("containerd.log")).expect("its log");
        let daemon = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["containerd", "--config"])
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let ctd = Containerd {
            daemon,
            pods: Vec::new(),
            rt,
            dir,
            _ns: ns,
        };
        let socket = ctd.socket();
        if wait::poll(Duration::from_secs(20), Duration::from_millis(100), || {
            socket.exists().then_some(())
        })
        .is_none()
        {
            panic!("containerd did not start: {}", ctd.log());
        }
        ctd.import_pause();
        ctd
    }

    /// The CRI socket (give it to ctscope as `CTSCOPE_CRI_SOCKET`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Makes the pod sandbox the kubelet would for pod `namespace/name` with UID `uid`.
    pub fn run_pod(&mut self, name: &str, namespace: &str, uid: &str) -> &Pod {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.dir.path().join("logs").display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let socket = self.socket();
        let (id, pid) = self.rt.block_on(async {
            let mut c = RuntimeServiceClient::new(connect(&socket).await);
            let id = c
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
                .into_inner()
                .pod_sandbox_id;
            let status = c
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.clone(),
                    verbose: true,
                })
                .await
                .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
                .into_inner();
            (id, sandbox_pid(&status.info))
        });
        self.pods.push(Pod {
            id,
            pid,
            uid: uid.into(),
        });
        self.pods.last().expect("just pushed")
    }

    /// `ctr images import` of a pause image holding busybox, which sleeps.
    fn import_pause(&self) {
        let tar = self.dir.path().join("pause.tar");
        fs::write(&tar, pause_image()).expect("writing the pause image");
        let socket = self.socket();
        let mut ctr = Command::new("ctr");
        ctr.arg("-a")
            .arg(&socket)
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "native",
            ])
            .arg(&tar);
        let out = ctr.output().expect("running ctr");
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn remove_pods(&mut self) {
        let socket = self.socket();
        let pods = std::mem::take(&mut self.pods);
        self.rt.block_on(async {
            let mut c = RuntimeServiceClient::new(connect(&socket).await);
            for p in &pods {
                let id = p.id.clone();
                let _ = c
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
                let _ = c
                    .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await;
            }
        });
        for p in &pods {
            remove_cgroups(&format!("kubepods/besteffort/pod{}", p.uid));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_pods();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.daemon.wait();
    }
}

/// containerd's configuration: state under `dir`, the CRI plugin with the native
/// snapshotter (no overlayfs needed), sandboxes that keep the caller's OOM score (not
/// every root may lower it), and a CNI bridge for the pods.
fn write_config(dir: &Path, subnet: u8) {
    let d = dir.display();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni"
"#
    );
    fs::write(dir.join("config.toml"), config).expect("writing containerd's config");
    fs::create_dir_all(dir.join("cni")).expect("the CNI directory");
    let cni = format!(
        r#"{{"cniVersion":"0.4.0","name":"ctscope-test","plugins":[{{"type":"bridge","bridge":"ctst-cni0","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.200.{subnet}.0/24"}}]],"dataDir":"{d}/ipam"}}}}]}}"#
    );
    fs::write(dir.join("cni/10-ctscope-test.conflist"), cni).expect("writing the CNI config");
}

/// The pause process's pid, from containerd's verbose sandbox status.
fn sandbox_pid(info: &std::collections::HashMap<String, String>) -> u32 {
    let info: serde_json::Value = info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_else(|| panic!("no `info` in the sandbox status: {info:?}"));
    info["pid"]
        .as_u64()
        .filter(|&p| p > 0)
        .unwrap_or_else(|| panic!("no pid in the sandbox status: {info}")) as u32
}

async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to containerd: {e}"))
}

/// An OCI image layout tarball: one layer with busybox as `/busybox`, run as `sleep`.
fn pause_image() -> Vec<u8> {
    let busybox = fs::read(BUSYBOX).expect("reading busybox");
    let layer = tar_of(&[("busybox", &busybox, 0o755)]);
    let layer_digest = sha256(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/busybox", "sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob_ref("application/vnd.oci.image.config.v1+json", config.as_bytes()),
        "layers": [blob_ref("application/vnd.oci.image.layer.v1.tar", &layer)],
    })
    .to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256(manifest.as_bytes())),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": PAUSE_IMAGE},
        }],
    })
    .to_string();
    let blob = |data: &[u8]| format!("blobs/sha256/{}", sha256(data));
    let (layer_path, config_path, manifest_path) = (
        blob(&layer),
        blob(config.as_bytes()),
        blob(manifest.as_bytes()),
    );
    tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
        ("index.json", index.as_bytes(), 0o644),
        (&layer_path, &layer, 0o644),
        (&config_path, config.as_bytes(), 0o644),
        (&manifest_path, manifest.as_bytes(), 0o644),
    ])
}

fn blob_ref(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256(data)),
        "size": data.len(),
    })
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("a tar entry");
    }
    let mut out = b.into_inner().expect("the tarball");
    out.flush().expect("flushed");
    out
}

/// Removes `rel` and its empty parents from every cgroup hierarchy (runc leaves the
/// parents it made for a sandbox).
fn remove_cgroups(rel: &str) {
    let Ok(mounts) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = mounts.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let mut dir = root.join(rel);
        while dir != root && fs::remove_dir(&dir).is_ok() {
            dir.pop();
        }
    }
}

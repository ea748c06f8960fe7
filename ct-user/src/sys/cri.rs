//! Pod names from the container runtime's CRI socket (containerd, CRI-O), as the kubelet
//! made them: `ListPodSandbox` gives every pod sandbox's name, Kubernetes namespace and
//! UID, and the UID joins them to the network namespaces [`super::workload`] found from
//! cgroups. Without a socket there are no names, and nothing else changes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{ListPodSandboxRequest, runtime_service_client::RuntimeServiceClient};
use serde::Serialize;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

/// Where containerd and CRI-O listen, tried in turn.
const SOCKETS: [&str; 2] = ["/run/containerd/containerd.sock", "/run/crio/crio.sock"];

/// Overrides [`SOCKETS`] (a runtime elsewhere, or tests).
pub const SOCKET_ENV: &str = "CTSCOPE_CRI_SOCKET";

/// A runtime that does not answer in this time is skipped: names are a nicety, never
/// worth stalling a listing or a scrape.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A UID not in the last list is asked for again only after this: a namespace of a pod
/// the runtime does not know (static pods of another kubelet, a test's cgroup) must not
/// make every lookup a round trip.
const REFRESH: Duration = Duration::from_secs(5);

/// The name of the pod with UID `uid`, from the runtime's last list, asked for again when
/// the UID is new (a pod made since) and [`REFRESH`] has passed. Blocks for at most
/// [`TIMEOUT`], on any thread (the list is read on a thread of its own); one list for the
/// whole process, so a listing of many namespaces asks once.
pub fn pod_name(uid: &str) -> Option<PodName> {
    static LAST: Mutex<Option<(PodNames, Instant)>> = Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((names, at)) = last.as_ref()
        && (names.get(uid).is_some() || at.elapsed() < REFRESH)
    {
        return names.get(uid).cloned();
    }
    let names = query_blocking();
    let found = names.get(uid).cloned();
    *last = Some((names, Instant::now()));
    found
}

/// [`PodNames::query`] from sync code, inside a tokio runtime or not.
fn query_blocking() -> PodNames {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(PodNames::query()))
                .unwrap_or_default()
        })
        .join()
        .unwrap_or_default()
    })
}

/// A pod, as `kubectl` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// Pod names by pod UID.
#[derive(Clone, Debug, Default)]
struct PodNames(HashMap<String, PodName>);

impl PodNames {
    /// Every pod sandbox the runtime knows; none when no runtime socket is there or it
    /// does not answer (said once at debug level: most hosts have no Kubernetes).
    async fn query() -> Self {
        let Some(socket) = socket() else {
            return PodNames::default();
        };
        match tokio::time::timeout(TIMEOUT, list(&socket)).await {
            Ok(Ok(names)) => PodNames(names),
            Ok(Err(e)) => {
                log::debug!("no pod names from {}: {e}", socket.display());
                PodNames::default()
            }
            Err(_) => {
                log::debug!(
                    "no pod names: {} did not answer in {TIMEOUT:?}",
                    socket.display()
                );
                PodNames::default()
            }
        }
    }

    fn get(&self, uid: &str) -> Option<&PodName> {
        self.0.get(uid)
    }
}

/// `$CTSCOPE_CRI_SOCKET`, else the first runtime socket that exists.
fn socket() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SOCKET_ENV) {
        return Some(PathBuf::from(p));
    }
    SOCKETS.iter().map(PathBuf::from).find(|p| p.exists())
}

async fn list(socket: &Path) -> anyhow::Result<HashMap<String, PodName>> {
    let mut client = RuntimeServiceClient::new(connect(socket).await?);
    let sandboxes = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    Ok(sandboxes
        .into_iter()
        .filter_map(|s| s.metadata)
        .map(|m| {
            let name = PodName {
                namespace: m.namespace,
                name: m.name,
            };
            (m.uid, name)
        })
        .collect())
}

/// A gRPC channel over the runtime's Unix socket (the URI is a placeholder tonic needs).
async fn connect(socket: &Path) -> anyhow::Result<tonic::transport::Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(channel)
}

//! Who lives in a namespace: a process in a fresh namespace, put into a cgroup laid out
//! as the kubelet and containerd lay a pod's container, must make `count`, `stats`,
//! `list`, `top` and `diagnose` name the container and the pod, and the agent's metrics
//! carry them as labels of that namespace's series; the host's namespace says `host`.
//! And a pod sandbox made through a real containerd's CRI is named as `kubectl` names it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ctscope_tests::{
    agent::Agent,
    ctscope::{self, Events, EventsOpts},
    netns::Netns,
    prometheus, wait,
};
use serde_json::Value;

use crate::containerd::Containerd;

const POD_UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
const CONTAINER: &str = "4b1c2e3f5a6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

pub fn run() {
    let ns = Netns::new();
    let cgroup = Cgroup2::mounted();
    let leaf = cgroup.root.join(format!(
        "ctscope-test-{}.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
         cri-containerd-{CONTAINER}.scope",
        std::process::id(),
        POD_UID.replace('-', "_")
    ));
    let _dirs = Dirs::create(&cgroup.root, &leaf);
    let member = Member::start(&ns, &leaf);

    let count = all_netns(&["count", "--all-netns", "--json"]);
    let row = by_inode(&count, ns.inode());
    assert_eq!(row["pod_uid"], POD_UID, "the pod: {row}");
    assert_eq!(row["container"]["runtime"], "containerd", "{row}");
    assert_eq!(row["container"]["id"], CONTAINER, "{row}");
    assert!(row.get("host").is_none(), "not the host's: {row}");
    let host = count
        .iter()
        .find(|r| r["host"] == true)
        .unwrap_or_else(|| panic!("no namespace marked host in {count:#?}"));
    assert!(host.get("container").is_none(), "{host}");

    let stats = all_netns(&["stats", "--all-netns", "--json", "--no-agent"]);
    assert_eq!(by_inode(&stats, ns.inode())["pod_uid"], POD_UID);

    let diagnose = ctscope_json(&["diagnose", "--json", "--no-agent", "--netns", ns.name()]);
    let evidence = &diagnose["evidence"][0];
    assert_eq!(evidence["container"]["id"], CONTAINER, "{evidence}");

    // One entry, so `list` and `top` have a row of this namespace; its `new` event is
    // seen at tier 3 (ctnetlink) in that namespace.
    let events = Events::start(&EventsOpts {
        extra: vec!["--tier".into(), "3".into()],
        ..EventsOpts::netns(ns.inode())
    });
    ns.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "10.200.78.1",
        "-d",
        "10.200.78.2",
        "--sport",
        "41000",
        "--dport",
        "53",
        "-t",
        "600",
    ]);
    let seen = events.wait_until(Duration::from_secs(10), |evs| !evs.is_empty());
    let finished = events.stop();
    assert!(seen, "no event of the inserted entry: {}", finished.stderr);
    has_pod(&finished.events[0], "events");
    let list = all_netns(&["list", "--all-netns", "--json", "--no-agent"]);
    has_pod(by_inode(&list, ns.inode()), "list");
    let top = ctscope_json(&[
        "top",
        "--all-netns",
        "--by",
        "netns",
        "--json",
        "--no-agent",
    ]);
    has_pod(top_row(&top, ns.inode()), "top");

    let agent = metric_labels(&ns);
    // The agent knows inodes only: the client adds who lives there.
    let lines = agent.ctscope(&["list", "--all-netns", "--json"]).stdout;
    let list: Vec<Value> = String::from_utf8_lossy(&lines)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    has_pod(by_inode(&list, ns.inode()), "list from the agent");
    let top = agent
        .ctscope(&["top", "--all-netns", "--by", "netns", "--json"])
        .stdout;
    let top: Value = serde_json::from_slice(&top).expect("top --json from the agent");
    has_pod(top_row(&top, ns.inode()), "top from the agent");
    agent.stop();
    drop(member);
}

/// The pods' 10.200.X.0/24 (the CNI bridge inside containerd's own namespace).
const POD_SUBNET: u8 = 78;

/// A pod sandbox made through containerd's CRI, as the kubelet makes one: `count
/// --all-netns --json` names its namespace's pod (name, Kubernetes namespace, UID, from
/// `ListPodSandbox` on `CTSCOPE_CRI_SOCKET`) and its sandbox container; with no runtime
/// socket, the UID and container still come from the cgroup, and no name.
pub fn pod_names() {
    let mut ctd = Containerd::start(POD_SUBNET);
    let socket = ctd.socket();
    let pod = ctd.run_pod("web-0", "shop", POD_UID);
    let (inode, sandbox) = (pod.netns_inode(), pod.id.clone());

    let named = all_netns_with(&["count", "--all-netns", "--json"], Some(&socket));
    let row = by_inode(&named, inode);
    assert_eq!(row["pod_uid"], POD_UID, "{row}");
    assert_eq!(row["pod_name"], "web-0", "{row}");
    assert_eq!(row["pod_namespace"], "shop", "{row}");
    assert_eq!(
        row["container"]["id"],
        sandbox.as_str(),
        "the sandbox: {row}"
    );

    let absent = Path::new("/nonexistent/ctscope-test-cri.sock");
    let unnamed = all_netns_with(&["count", "--all-netns", "--json"], Some(absent));
    let row = by_inode(&unnamed, inode);
    assert_eq!(row["pod_uid"], POD_UID, "{row}");
    assert!(row.get("pod_name").is_none(), "no runtime, no name: {row}");
}

fn has_pod(row: &Value, what: &str) {
    assert_eq!(row["pod_uid"], POD_UID, "{what}: {row}");
    assert_eq!(row["container"]["id"], CONTAINER, "{what}: {row}");
}

/// The row of `top --by netns --json` for namespace `inode`.
fn top_row(top: &Value, inode: u64) -> &Value {
    let key = inode.to_string();
    top["top"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == key.as_str()))
        .unwrap_or_else(|| panic!("no row for netns {inode} in {top}"))
}

/// The agent's scrape labels the namespace's series with its workload, and the root
/// namespace's with `host="true"`. Tier 3 is enough: it dumps every namespace.
fn metric_labels(ns: &Netns) -> Agent {
    let addr = format!("127.0.0.1:{}", prometheus::free_port());
    let agent = Agent::start(&["--tier", "3", "--resync", "1", "--metrics", &addr]);
    let prefix = format!("ctscope_conntrack_entries{{netns=\"{}\"", ns.inode());
    let mut text = String::new();
    let served = wait::poll(Duration::from_secs(20), Duration::from_millis(250), || {
        text = prometheus::get(addr.parse().unwrap(), "/metrics", None)
            .map(|r| r.body)
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .map(str::to_owned)
    });
    let line = served.unwrap_or_else(|| panic!("no {prefix}...}} in:\n{text}"));
    for label in [
        format!("netns_name=\"{}\"", ns.name()),
        format!("container_id=\"containerd://{CONTAINER}\""),
        format!("pod_uid=\"{POD_UID}\""),
    ] {
        assert!(line.contains(&label), "{label} not in {line}");
    }
    assert!(!line.contains("host="), "not the host's: {line}");
    let host = text
        .lines()
        .filter(|l| l.starts_with("ctscope_kernel_found_total{"))
        .filter(|l| l.contains("host=\"true\""))
        .count();
    assert_eq!(host, 1, "one namespace is the host's:\n{text}");
    agent
}

/// `ctscope ARGS` printing one JSON object per line.
fn all_netns(args: &[&str]) -> Vec<Value> {
    all_netns_with(args, None)
}

/// The same, with `CTSCOPE_CRI_SOCKET` set to `cri`.
fn all_netns_with(args: &[&str], cri: Option<&Path>) -> Vec<Value> {
    let out = ctscope_out_with(args, cri);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: {e}: {l}")))
        .collect()
}

fn ctscope_json(args: &[&str]) -> Value {
    let out = ctscope_out(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn ctscope_out(args: &[&str]) -> String {
    ctscope_out_with(args, None)
}

fn ctscope_out_with(args: &[&str], cri: Option<&Path>) -> String {
    let mut cmd = Command::new(ctscope::binary_or_panic());
    cmd.args(args);
    if let Some(socket) = cri {
        cmd.env("CTSCOPE_CRI_SOCKET", socket);
    }
    let out = cmd.output().expect("running ctscope");
    assert!(
        out.status.success(),
        "ctscope {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn by_inode(rows: &[Value], inode: u64) -> &Value {
    rows.iter()
        .find(|r| r["netns"] == inode)
        .unwrap_or_else(|| panic!("no row for netns {inode} in {rows:#?}"))
}

/// A cgroup2 hierarchy: the one mounted (alone, or as `unified` beside v1), else one
/// mounted here for the trial and unmounted after.
struct Cgroup2 {
    root: PathBuf,
    ours: Option<tempfile::TempDir>,
}

impl Cgroup2 {
    fn mounted() -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
        if let Some(root) = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        }) {
            return Cgroup2 { root, ours: None };
        }
        let dir = tempfile::tempdir().expect("a mount point");
        let ok = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(ok.success(), "mount -t cgroup2 failed");
        Cgroup2 {
            root: dir.path().to_owned(),
            ours: Some(dir),
        }
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if self.ours.is_some() {
            let _ = Command::new("umount").arg(&self.root).status();
        }
    }
}

/// The cgroup directories from `root` down to `leaf`, removed leaf first on drop.
struct Dirs(Vec<PathBuf>);

impl Dirs {
    fn create(root: &Path, leaf: &Path) -> Self {
        let mut made = Vec::new();
        let mut at = root.to_owned();
        for part in leaf.strip_prefix(root).expect("leaf under root") {
            at.push(part);
            fs::create_dir(&at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
            made.push(at.clone());
        }
        Dirs(made)
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("warning: rmdir {}: {e}", dir.display());
            }
        }
    }
}

/// A process in namespace `ns`, moved into cgroup `leaf`; killed on drop.
struct Member(Child);

impl Member {
    fn start(ns: &Netns, leaf: &Path) -> Self {
        let child = ns
            .command("sleep")
            .arg("60")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting sleep");
        // `ip netns exec` becomes the sleep (it execs), so this pid is the member's.
        let pid = child.id();
        fs::write(leaf.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", leaf.display()));
        let inside = || {
            use std::os::unix::fs::MetadataExt as _;
            let m = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
            (m.ino() == ns.inode()).then_some(())
        };
        let joined = wait::poll(Duration::from_secs(5), Duration::from_millis(10), inside);
        assert!(joined.is_some(), "sleep {pid} never entered {}", ns.name());
        Member(child)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

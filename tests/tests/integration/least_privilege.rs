//! `least_privilege`: the agent as the DaemonSet runs it — root with exactly the
//! capabilities deploy/kubernetes/daemonset.yaml adds and no others (util-linux `setpriv`:
//! that bounding set, no inheritable or ambient ones, no new privileges) — reaches the
//! tier `ctscope probe` gives as root, counts the `new` events of flows in another
//! namespace, serves metrics and sees every namespace, a process-only one included. Then,
//! for each of those capabilities, without it: the agent exits 1 or warns, naming it, and
//! loses exactly what README "Deploy" says that capability is for.

use std::{
    net::{SocketAddr, SocketAddrV4},
    process::{Child, Command},
    time::Duration,
};

use ctscope_tests::{
    agent::Agent,
    ctscope::Probe,
    deploy, kernel,
    netns::Pair,
    nft,
    prometheus::{self, free_port},
    traffic, wait,
};

use crate::common::{UDP_PORT, event_wait};

/// The subnet of the trial's pair (10.200.71.0/24).
const SUBNET: u8 = 71;

/// UDP flows sent from the client namespace.
const FLOWS: u16 = 5;

/// `setpriv` arguments that leave root with only `caps` (Kubernetes names, `NET_ADMIN`).
fn only(caps: &[String]) -> Vec<String> {
    let keep: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_ascii_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", keep.join(",")),
        "--inh-caps=-all".into(),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// The capability mask of `caps` (bits as in /proc/PID/status).
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "NET_ADMIN" => 12,
            "SYS_PTRACE" => 19,
            "SYS_ADMIN" => 21,
            "SYS_RESOURCE" => 24,
            "SYSLOG" => 34,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("least_privilege does not know capability {other}: add it"),
        })
        .fold(0, |m, bit| m | 1 << bit)
}

/// Process `pid`'s effective capabilities.
fn effective(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff")
}

/// The values of the series `name` whose labels include `netns="INODE"`.
fn series(text: &str, name: &str, inode: u64, more: &str) -> Vec<f64> {
    let netns = format!("netns=\"{inode}\"");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| {
            s.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter(|(s, _)| s.contains(&netns) && s.contains(more))
        .filter_map(|(_, v)| v.parse().ok())
        .collect()
}

/// The agent's metrics now.
fn scrape(addr: SocketAddr) -> String {
    let answer = prometheus::get(addr, "/metrics", None).expect("scrape");
    assert_eq!(answer.status, 200, "/metrics: {}", answer.body);
    answer.body
}

/// A `sleep` in a namespace of its own with no name: found only through /proc/PID/ns/net
/// of a process holding every capability. Killed on drop.
struct Hidden {
    child: Child,
    inode: u64,
}

impl Hidden {
    fn start() -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .expect("unshare --net sleep");
        let path = format!("/proc/{}/ns/net", child.id());
        let own = std::fs::metadata("/proc/self/ns/net")
            .expect("own netns")
            .ino();
        let inode = wait::poll(Duration::from_secs(10), Duration::from_millis(10), || {
            let ino = std::fs::metadata(&path).ok()?.ino();
            (ino != own).then_some(ino)
        })
        .expect("unshare's namespace");
        Hidden { child, inode }
    }
}

impl Drop for Hidden {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the trial sets up once: a pair with conntrack on, a server, a hidden namespace.
struct Scene {
    pair: Pair,
    hidden: Hidden,
    dst: SocketAddrV4,
    _sink: traffic::UdpSink,
    next_port: u16,
}

impl Scene {
    /// Sends [`FLOWS`] new UDP flows from the client namespace.
    fn flows(&mut self) {
        let ports: Vec<u16> = (self.next_port..self.next_port + FLOWS).collect();
        self.next_port += FLOWS;
        for r in traffic::udp_flows(&self.pair.c, self.pair.c_addr, &ports, self.dst) {
            r.expect("UDP flow");
        }
    }
}

/// The agent with `caps`, its metrics address, and its stderr once ready; `Err` with its
/// exit status and stderr when it does not start.
fn start(caps: &[String]) -> Result<(Agent, SocketAddr), (Option<i32>, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let wrap = only(caps);
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let metrics = addr.to_string();
    Agent::try_start_wrapped(&wrap, &["--metrics", &metrics])
        .map(|a| (a, addr))
        .map_err(|e| (e.status.code(), e.stderr))
}

pub fn run() {
    let mut caps = deploy::capabilities();
    // The DaemonSet's comment: kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, and
    // only CAP_SYS_RESOURCE lets the agent raise it.
    if kernel::bpf_maps_charge_memlock() {
        caps.push("SYS_RESOURCE".into());
    }
    let probe = Probe::run().expect("probe");
    // And where the kernel's tracepoints do not say what a drop or a free is (5.10), the
    // caller's address in /proc/kallsyms does, which only CAP_SYSLOG may read.
    if probe.notes().iter().any(|n| n.contains("/proc/kallsyms")) {
        caps.push("SYSLOG".into());
    }
    let tier = probe.tier().expect("a tier");
    let pair = Pair::new(SUBNET);
    nft::apply(&pair.c, nft::CT_ENABLE);
    let dst = SocketAddrV4::new(pair.s_addr, UDP_PORT);
    let sink = traffic::UdpSink::bind(&pair.s, dst);
    let mut scene = Scene {
        pair,
        hidden: Hidden::start(),
        dst,
        _sink: sink,
        next_port: 24000,
    };

    all_of_them(&mut scene, &caps, tier);
    for cap in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        without(&mut scene, &fewer, cap, tier);
    }
}

/// With the DaemonSet's set: its tier, no warning, events, metrics, every namespace.
fn all_of_them(scene: &mut Scene, caps: &[String], tier: u64) {
    let (agent, addr) =
        start(caps).unwrap_or_else(|(code, err)| panic!("the agent exited {code:?}:\n{err}"));
    assert_eq!(
        effective(agent.pid()),
        mask(caps),
        "the agent holds exactly {caps:?}"
    );
    let err = agent.stderr();
    assert!(
        err.contains(&format!("watching (tier {tier}:")) && !err.contains("warning"),
        "with {caps:?} the agent reaches tier {tier} without a warning:\n{err}"
    );
    scene.flows();
    let c = scene.pair.c.inode();
    let counted = wait::poll(event_wait(), Duration::from_millis(200), || {
        let text = scrape(addr);
        let new = series(&text, "ctscope_new_total", c, "proto=\"udp\"");
        (new == [f64::from(FLOWS)]).then_some(text)
    });
    let text = counted.unwrap_or_else(|| {
        panic!(
            "ctscope_new_total{{netns=\"{c}\",proto=\"udp\"}} never reached {FLOWS}:\n{}",
            scrape(addr)
        )
    });
    assert!(
        text.contains(&format!("tier=\"{tier}\"")),
        "ctscope_build_info at tier {tier}"
    );
    for (what, inode) in [("the named", c), ("the process-only", scene.hidden.inode)] {
        assert!(
            !series(&text, "ctscope_conntrack_entries", inode, "").is_empty(),
            "{what} namespace {inode} is in the metrics:\n{text}"
        );
    }
}

/// Without `cap`: the agent names it, and loses what it is for.
fn without(scene: &mut Scene, fewer: &[String], cap: &str, tier: u64) {
    let named = format!("CAP_{cap}");
    let (agent, addr) = match start(fewer) {
        Ok(up) => up,
        Err((code, err)) => {
            assert!(
                ["NET_ADMIN", "SYS_RESOURCE"].contains(&cap),
                "only without CAP_NET_ADMIN or CAP_SYS_RESOURCE may it not start:\n{err}"
            );
            assert_eq!(code, Some(1), "exit 1 without {named}:\n{err}");
            assert!(err.contains(&named), "the error names {named}:\n{err}");
            return;
        }
    };
    assert!(
        !["NET_ADMIN", "SYS_RESOURCE"].contains(&cap),
        "the agent started without CAP_{cap}"
    );
    let err = agent.stderr();
    assert!(
        err.contains(&format!("warning: without {named}")),
        "a warning names {named}:\n{err}"
    );
    scene.flows();
    // Let events arrive, were they to come.
    std::thread::sleep(Duration::from_secs(2));
    let text = scrape(addr);
    let (c, hidden) = (scene.pair.c.inode(), scene.hidden.inode);
    let seen = |inode| !series(&text, "ctscope_conntrack_entries", inode, "").is_empty();
    match cap {
        // It also stands in for CAP_BPF and CAP_PERFMON: no BPF tier, and no other
        // namespace is entered, so the client's flows are not even counted.
        "SYS_ADMIN" => {
            assert!(err.contains("watching (tier 3:"), "tier 3:\n{err}");
            assert!(
                err.contains("or CAP_SYS_ADMIN"),
                "says CAP_SYS_ADMIN would do:\n{err}"
            );
            assert!(!seen(c) && !seen(hidden), "only its own namespace:\n{text}");
            assert!(
                series(&text, "ctscope_new_total", c, "")
                    .iter()
                    .all(|&v| v == 0.0),
                "no events of other namespaces at tier 3:\n{text}"
            );
        }
        "SYS_PTRACE" => {
            assert!(
                err.contains(&format!("watching (tier {tier}:")),
                "tier {tier}:\n{err}"
            );
            assert!(seen(c), "the named namespace is still seen:\n{text}");
            assert!(!seen(hidden), "the process-only namespace is not:\n{text}");
        }
        // Drops and destroys that only a kallsyms address tells go unseen; the rest stays.
        "SYSLOG" => {
            assert!(
                err.contains(&format!("watching (tier {tier}:")),
                "tier {tier}:\n{err}"
            );
            assert!(seen(c), "the named namespace is still seen:\n{text}");
        }
        "BPF" | "PERFMON" => {
            assert!(err.contains("watching (tier 3:"), "tier 3:\n{err}");
        }
        other => panic!("least_privilege does not know what {other} is for: add it"),
    }
    drop(agent);
}

//! What every scenario shares: deciding what can run here, and a client/server namespace
//! pair with conntrack enabled in the client and (optionally) ctscope watching it.

use std::{net::SocketAddrV4, time::Duration};

use ctscope_tests::{
    cmd,
    ctscope::{self, Events, EventsOpts, Probe},
    deploy, events, kernel,
    netns::{self, Family, Netns, Pair},
    nft, prometheus, traffic, wait,
};
use serde_json::Value;

/// ctscope's switch that keeps tier 1 on kprobes (ct-user/src/bpf/trampoline.rs).
pub const NO_FENTRY_ENV: &str = "CTSCOPE_NO_FENTRY";

/// UDP port of the sink in the server namespace.
pub const UDP_PORT: u16 = 5300;
/// TCP port of the server namespace's listener.
pub const TCP_PORT: u16 = 8080;

/// Whether ctscope watches a scenario (at the best tier, or forced to tier 2) or only
/// the kernel's counters are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    Ctscope,
    /// Tier 1 kept on kprobes (`CTSCOPE_NO_FENTRY=1`): the fallback where fentry is refused.
    Kprobes,
    Tier2,
    /// Tier 2 reading entry fields one by one in BPF (`--parsed-records`), as on kernels
    /// whose `struct nf_conn` does not fit a raw record.
    Tier2Parsed,
    KernelOnly,
}

impl Watch {
    /// ctscope's options for watching namespace `inode`, or `None` when not watching.
    pub fn opts(self, inode: u64) -> Option<EventsOpts> {
        let mut opts = EventsOpts::netns(inode);
        match self {
            Watch::Ctscope => Some(opts),
            Watch::Kprobes => {
                opts.wrapper = vec!["env".into(), format!("{NO_FENTRY_ENV}=1")];
                opts.extra.extend(["--tier".into(), "1".into()]);
                Some(opts)
            }
            Watch::Tier2 | Watch::Tier2Parsed => {
                opts.extra.extend(["--tier".into(), "2".into()]);
                if self == Watch::Tier2Parsed {
                    opts.extra.push("--parsed-records".into());
                }
                Some(opts)
            }
            Watch::KernelOnly => None,
        }
    }

    /// True when ctscope watches at tier 2 (either way of reading entries).
    pub fn is_tier2(self) -> bool {
        matches!(self, Watch::Tier2 | Watch::Tier2Parsed)
    }

    /// Starts ctscope on namespace `inode` when watching.
    pub fn start(self, inode: u64) -> Option<Events> {
        self.opts(inode).map(|o| Events::start(&o))
    }
}

/// What a trial needs from this machine.
#[derive(Clone, Copy, Debug)]
pub enum Needs {
    /// Root and the `ip`, `nft`, `conntrack` tools.
    Root,
    /// Root, tools, and ctscope at tier 1 (kprobes).
    Tier1,
    /// Root, tools, and ctscope's tier 2 (tracepoints only) working.
    Tier2,
    /// Nothing, but it repeats the named scenario, which runs here.
    Redundant(&'static str),
    /// Root, tools, and util-linux `setpriv` to run ctscope with fewer capabilities.
    Setpriv,
    /// Tier 2 and `setpriv`.
    Tier2Setpriv,
    /// Tier 2, and Debian's `prometheus` and `promtool` on PATH (not in the VMs).
    Tier2Prometheus,
    /// Only `promtool` on PATH (not in the VMs): no root, no kernel.
    Promtool,
    /// Not root: deploy/, `kubernetes-validate` (not in the VMs) and a ctscope binary.
    KubernetesValidate,
    /// Not root: deploy/, `systemd-analyze` and a ctscope binary.
    SystemdAnalyze,
    /// Root, and Debian's containerd, runc, busybox-static and CNI plugins (not in the
    /// VMs).
    Containerd,
    /// Root, tools, and Debian's `prometheus-node-exporter` on PATH.
    NodeExporter,
}

/// The tier this kernel must reach (see [`Env::required`]).
pub const REQUIRE_TIER_ENV: &str = "CTSCOPE_REQUIRE_TIER";

/// Facts about this machine, gathered once before the trials are built.
#[derive(Debug)]
pub struct Env {
    root: bool,
    missing_tools: Vec<&'static str>,
    probe: Result<Probe, String>,
}

impl Env {
    pub fn detect() -> Self {
        let root = nix::unistd::geteuid().is_root();
        let missing_tools: Vec<&str> = ["ip", "nft", "conntrack"]
            .into_iter()
            .filter(|t| !cmd::on_path(t))
            .collect();
        let probe = if root {
            Probe::run()
        } else {
            Err("not root".into())
        };
        if root && missing_tools.is_empty() {
            netns::remove_stale();
        }
        Env {
            root,
            missing_tools,
            probe,
        }
    }

    /// One line on what runs here, for logs from VMs.
    pub fn describe(&self) {
        let bin = ctscope::binary().map_or("none".into(), |b| b.display().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let probe = match &self.probe {
            Ok(p) => format!("kprobes={:?} tier={:?}", p.kprobes(), p.tier()),
            Err(e) => format!("unavailable ({e})"),
        };
        println!(
            "ctscope-tests: kernel {} (CTSCOPE_VM_KERNEL={}), ctscope {bin}, probe {probe}",
            kernel.trim(),
            std::env::var("CTSCOPE_VM_KERNEL").unwrap_or_else(|_| "-".into()),
        );
    }

    /// Whether a trial with `needs` must run here: `CTSCOPE_REQUIRE_TIER=N` says this
    /// kernel reaches tier N (each VM kernel and the host stage state theirs), so a
    /// trial of tier N or a lower-numbered tier, or one needing only root, that cannot
    /// run is a regression (a probe that stopped attaching), not a skip.
    pub fn required(&self, needs: Needs) -> Option<u8> {
        let tier: u8 = std::env::var(REQUIRE_TIER_ENV).ok()?.trim().parse().ok()?;
        let covered = match needs {
            Needs::Root => true,
            Needs::Tier1 => tier <= 1,
            Needs::Tier2 => tier <= 2,
            // Setpriv trials need a tool the VMs may lack; they skip with the reason.
            Needs::Redundant(_) | Needs::Setpriv | Needs::Tier2Setpriv => false,
            // Tools the VMs lack; on the host `cargo xtask setup` installs them.
            Needs::KubernetesValidate | Needs::SystemdAnalyze | Needs::NodeExporter => {
                std::env::var_os("CTSCOPE_VM_KERNEL").is_none()
            }
            // The host stage has it (`cargo xtask setup`); the VMs' initramfs does not.
            Needs::Tier2Prometheus => tier <= 2 && std::env::var_os("CTSCOPE_VM_KERNEL").is_none(),
            Needs::Promtool => std::env::var_os("CTSCOPE_VM_KERNEL").is_none(),
            Needs::Containerd => std::env::var_os("CTSCOPE_VM_KERNEL").is_none(),
        };
        covered.then_some(tier)
    }

    /// `None` if `needs` is met, else the reason.
    pub fn unmet(&self, needs: Needs) -> Option<String> {
        if let Needs::Redundant(name) = needs {
            return Some(format!(
                "kernel-only twin of `{name}`, which runs with ctscope here"
            ));
        }
        if let Needs::Promtool = needs {
            return prometheus::promtool_missing();
        }
        let tool = match needs {
            Needs::KubernetesValidate => Some(deploy::kubernetes_validate_missing()),
            Needs::SystemdAnalyze => Some(deploy::systemd_analyze_missing()),
            _ => None,
        };
        if let Some(missing) = tool {
            // Both run the binary: the agent parses the DaemonSet's arguments, and the
            // unit's ExecStart must exist.
            return missing.or_else(|| {
                ctscope::binary()
                    .is_none()
                    .then(|| "no ctscope binary (set CTSCOPE_BIN or build ctscope)".into())
            });
        }
        if !self.root {
            return Some("needs root (network namespaces, nft, sysctls, BPF)".into());
        }
        if !self.missing_tools.is_empty() {
            return Some(format!(
                "missing tools on PATH: {}",
                self.missing_tools.join(", ")
            ));
        }
        if matches!(needs, Needs::Setpriv | Needs::Tier2Setpriv)
            && let Some(why) = setpriv_missing()
        {
            return Some(why);
        }
        if matches!(needs, Needs::Tier2Prometheus)
            && let Some(why) = prometheus::missing()
        {
            return Some(why);
        }
        if matches!(needs, Needs::Containerd)
            && let Some(why) = crate::containerd::missing()
        {
            return Some(why);
        }
        if matches!(needs, Needs::NodeExporter)
            && let Some(why) = crate::node_exporter::missing()
        {
            return Some(why);
        }
        match (needs, &self.probe) {
            (Needs::Tier1, Err(e)) => Some(format!("needs tier 1, but the probe failed: {e}")),
            (Needs::Tier1, Ok(p)) => p.tier1_missing(),
            (Needs::Tier2 | Needs::Tier2Setpriv | Needs::Tier2Prometheus, Err(e)) => {
                Some(format!("needs tier 2, but the probe failed: {e}"))
            }
            (Needs::Tier2 | Needs::Tier2Setpriv | Needs::Tier2Prometheus, Ok(p)) => {
                p.tier_missing(2)
            }
            _ => None,
        }
    }
}

/// Why util-linux `setpriv` cannot drop capabilities from the bounding set here, if it
/// cannot: absent, or busybox's applet (as in the VMs), which has no `--bounding-set`.
fn setpriv_missing() -> Option<String> {
    let Ok(out) = cmd::output(&["setpriv", "--help"], None) else {
        return Some("no `setpriv` (util-linux) on PATH to drop capabilities".into());
    };
    let help = [out.stdout, out.stderr].concat();
    let bounding = String::from_utf8_lossy(&help).contains("--bounding-set");
    (!bounding).then(|| "`setpriv` has no --bounding-set (busybox's, not util-linux's)".into())
}

/// Prints a scenario's measurements when `CTSCOPE_TEST_VERBOSE` is set or inside the VMs
/// (`CTSCOPE_VM_KERNEL`), whose logs are the record; quiet otherwise so libtest's
/// one-line-per-test output stays readable.
pub fn note(msg: impl AsRef<str>) {
    let verbose = ["CTSCOPE_TEST_VERBOSE", "CTSCOPE_VM_KERNEL"];
    if verbose.iter().any(|v| std::env::var_os(v).is_some()) {
        eprintln!("  note: {}", msg.as_ref());
    }
}

/// How long ctscope may take to deliver events after the kernel acted.
pub fn event_wait() -> Duration {
    wait::env_secs("CTSCOPE_TEST_EVENT_SECS", 20)
}

/// A pair on 10.200.`subnet`.0/24 whose client holds up to `cap` UDP entries (600 s
/// timeout) to the server's sink, kept 1 000 below the global table limit: the big tables
/// the agent's answers are tested on. Returns the pair, the sink (keep it) and how many
/// entries were made.
pub fn big_udp_table(subnet: u8, cap: u16) -> (Ctx, traffic::UdpSink, u16) {
    let ctx = Ctx::new(Watch::KernelOnly, subnet, |p| {
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
    });
    let p = &ctx.pair;
    let sink = traffic::UdpSink::bind(&p.s, SocketAddrV4::new(p.s_addr, UDP_PORT));
    let max: u16 = kernel::read_global("net.netfilter.nf_conntrack_max")
        .parse::<u32>()
        .map_or(8000, |m| {
            m.saturating_sub(1000).clamp(1000, u32::from(cap)) as u16
        });
    let (failed, _) = traffic::udp_spray(
        &p.c,
        SocketAddrV4::new(p.c_addr, 40000),
        p.s_addr,
        20000..20000 + max,
    );
    assert_eq!(failed, 0, "sends failed");
    (ctx, sink, max)
}

/// A client namespace `c` (conntrack enabled) and server `s` over veth, and ctscope
/// watching `c` when asked (or the other way round: [`Ctx::server`]). ctscope is
/// declared first so it stops before the namespaces are deleted (fields drop in order).
pub struct Ctx {
    pub events: Option<Events>,
    pub pair: Pair,
    /// Inode of the watched namespace (`c`, or `s` for [`Ctx::server`]): what ctscope
    /// reports in `netns`.
    pub inode: u64,
    watch: Watch,
}

impl Ctx {
    /// Builds the pair on 10.200.`subnet`.0/24, enables conntrack in `c`, runs `setup`
    /// (rulesets, timeouts), then starts ctscope filtered to `c` if `watch` says so.
    pub fn new(watch: Watch, subnet: u8, setup: impl FnOnce(&Pair)) -> Self {
        Self::watching(watch, Pair::new(subnet), |p| &p.c, setup)
    }

    /// [`Ctx::new`] on a pair of `family` (IPv6: dual-stack, see [`Pair::of`]).
    pub fn of(watch: Watch, family: Family, subnet: u8, setup: impl FnOnce(&Pair)) -> Self {
        Self::watching(watch, Pair::of(family, subnet), |p| &p.c, setup)
    }

    /// Like [`Ctx::of`], but conntrack runs in the server namespace `s` instead, and
    /// ctscope watches `s`: entries made by inbound traffic, whose first packet to leave
    /// is the server's answer.
    pub fn server(watch: Watch, family: Family, subnet: u8, setup: impl FnOnce(&Pair)) -> Self {
        Self::watching(watch, Pair::of(family, subnet), |p| &p.s, setup)
    }

    fn watching(
        watch: Watch,
        pair: Pair,
        side: fn(&Pair) -> &Netns,
        setup: impl FnOnce(&Pair),
    ) -> Self {
        nft::apply(side(&pair), nft::CT_ENABLE);
        setup(&pair);
        let inode = side(&pair).inode();
        let events = watch.start(inode);
        Ctx {
            events,
            pair,
            inode,
            watch,
        }
    }

    /// Waits until `done` holds for the events so far (true at once when not watching).
    pub fn wait_events(&self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        self.events
            .as_ref()
            .is_none_or(|ev| ev.wait_until(limit, done))
    }

    /// Number of events of `kind` (and `proto`) in `c` so far.
    pub fn count(events: &[Value], kind: &str, inode: u64, proto: Option<&str>) -> usize {
        events::select(events, kind, inode, proto).len()
    }

    /// Stops ctscope; checks it exited cleanly, printed only JSON and lost nothing.
    /// `None` when not watching.
    pub fn finish(&mut self) -> Option<Vec<Value>> {
        let finished = self.events.take()?.stop();
        finished.assert_clean();
        if self.watch == Watch::Tier2Parsed {
            // Else the twin would only repeat `t2_<name>` on the raw-record path.
            assert!(
                finished.stderr.contains("reads entry fields one by one"),
                "--parsed-records not announced; stderr:\n{}",
                finished.stderr
            );
        }
        events::assert_no_loss(&finished.events);
        let all: Vec<&Value> = finished.events.iter().collect();
        note(format!(
            "ctscope events by kind: {}",
            events::histogram(&all, "kind")
        ));
        Some(finished.events)
    }
}

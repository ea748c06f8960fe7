//! `cargo xtask bench --scale N`: the agent (`ctscope watch`, release build) holding N
//! entries spread over [`NAMESPACES`] client namespaces, each wired to its own server as
//! the flood bench's pair is (`host::configure_with`; veths on 10.200.99.0/24, the flows
//! to 10.200.95.0/24 through 10.200.98.0/24, UDP timeout one hour so nothing expires
//! meanwhile). It reports:
//!
//! - memory: the agent's resident memory outside BPF maps (smaps: mappings of
//!   `anon_inode:bpf-map`, the ring buffer's included, are left out; they are the
//!   kernel's memory, mapped) with the namespaces empty, full and drained again, and per
//!   entry;
//! - `ctscope list` from the agent against `conntrack -L` of the same namespaces: time,
//!   lines, and lines that differ once the countdown (the third field) is set aside;
//! - latency of `top`, `stats`, `diagnose`, `timeouts` (all `--all-netns`), a metrics
//!   scrape and `watch --status` while a churn of new and deleted flows runs, and of
//!   `watch --status` while a `list --all-netns` renders;
//! - the agent's CPU: while the table fills, and idle (its resyncs), as a share of one CPU,
//!   with `status`'s `resync`;
//! - events the agent lost (`status`'s `totals.lost`) through it all.

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ctscope_tests::netns::Netns;
use serde_json::{Value, json};

use super::host::{Wiring, check_interrupt, configure_with, entries, raise_conntrack_max};
use super::listener::signal;
use super::procfs::{bpf_mapped_bytes, cpu_seconds, rss_bytes};
use super::{Prepared, READY_TIMEOUT, SPORT, prepare};
use crate::cmd;

/// Client namespaces the entries are spread over.
pub(super) const NAMESPACES: usize = 4;
/// Flows per destination address (ct-flood's ports 1..=65535).
const PORTS: u64 = 65_535;
/// Flows per churn step: created, then deleted.
const CHURN_STEP: u64 = 20_000;
/// The churn's destination, past the addresses the fill uses in namespace 0.
const CHURN_DST: &str = "10.200.95.200";
/// How long the agent is left idle to measure what its resyncs cost.
const IDLE: Duration = Duration::from_secs(30);
/// How often each command is timed.
const TRIES: usize = 3;
/// How long the agent may take to take in the flood or the drain.
const CATCH_UP: Duration = Duration::from_secs(300);

/// One client namespace and its server.
struct Pair {
    client: Netns,
    _server: Netns,
    first_dst: String,
}

pub(super) fn cmd(n: u64, json_out: bool, command: &str) -> Result<()> {
    if n > 250 * PORTS * NAMESPACES as u64 {
        bail!(
            "--scale takes at most {} entries",
            250 * PORTS * NAMESPACES as u64
        );
    }
    let Prepared {
        ctscope,
        flood,
        tmp,
    } = prepare("ctscope-scale-")?;
    let pairs = (0..NAMESPACES).map(pair).collect::<Result<Vec<_>>>()?;
    let _max = raise_conntrack_max(n + 2 * CHURN_STEP)?;
    let bench = Scale {
        ctscope: &ctscope,
        flood: &flood,
        pairs: &pairs,
        socket: tmp.path().join("agent.sock"),
        metrics: free_port()?,
    };
    let report = bench.run(n, tmp.path())?;
    let report = json!({ "command": command, "entries_asked": n, "namespaces": NAMESPACES,
                         "results": report });
    if json_out {
        println!("{report:#}");
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Namespace pair `i`: veth 10.200.99.(4i+1)/30 to .(4i+2), flows to 10.200.(95+i).0/24.
fn pair(i: usize) -> Result<Pair> {
    let (client, server) = (Netns::new(), Netns::new());
    let c = format!("10.200.99.{}", 4 * i + 1);
    let s = format!("10.200.99.{}", 4 * i + 2);
    let flows = format!("10.200.{}.0/24", 95 + i);
    configure_with(
        &client,
        &server,
        &Wiring {
            client: &c,
            server: &s,
            prefix: 30,
            flows: &flows,
        },
    )?;
    // Nothing expires while the figures are taken (the namespace's own sysctl).
    client.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600");
    Ok(Pair {
        client,
        _server: server,
        first_dst: format!("10.200.{}.1", 95 + i),
    })
}

fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

struct Scale<'a> {
    ctscope: &'a Path,
    flood: &'a Path,
    pairs: &'a [Pair],
    socket: PathBuf,
    metrics: SocketAddr,
}

/// The running agent; SIGTERM on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        signal(&self.0, libc::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Scale<'_> {
    fn run(&self, n: u64, dir: &Path) -> Result<Value> {
        let agent = self.start_agent(dir)?;
        let pid = agent.0.id();
        thread::sleep(Duration::from_secs(1));
        let empty = memory(pid);
        let (cpu0, began) = (cpu_seconds(pid), Instant::now());
        let per_ns = n / NAMESPACES as u64;
        for p in self.pairs {
            check_interrupt()?;
            self.flood(&p.client, &p.first_dst, per_ns)?;
        }
        let kernel = self.kernel_entries();
        self.wait_for_table(|held| held >= kernel)?;
        let fill = json!({
            "kernel_entries": kernel,
            "seconds": began.elapsed().as_secs_f64(),
            "agent_cpu_seconds": cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b),
        });
        thread::sleep(Duration::from_secs(2));
        let full = memory(pid);
        eprintln!("scale: {kernel} entries held; timing list");
        let list = self.compare_lists()?;
        eprintln!("scale: latencies while the table churns");
        let churn = Churn::start(self);
        let latency = self.latencies();
        let status_during_list = self.status_during_list(dir);
        let churned = churn.stop();
        eprintln!("scale: idle {IDLE:?} (resyncs)");
        let idle = self.idle(pid);
        let lost = self.status()?["totals"]["lost"].clone();
        for p in self.pairs {
            ctscope_tests::kernel::ct_flush(&p.client);
        }
        self.wait_for_table(|held| held == 0)?;
        thread::sleep(Duration::from_secs(2));
        let drained = memory(pid);
        drop(agent);
        let per_entry = |m: &Value| {
            let grown = m["outside_bpf"].as_f64()? - empty["outside_bpf"].as_f64()?;
            (kernel > 0).then(|| grown / kernel as f64)
        };
        Ok(json!({
            "memory": {
                "empty": empty, "full": full, "drained": drained,
                "bytes_per_entry": per_entry(&full),
                "left_after_drain_bytes_per_entry": per_entry(&drained),
            },
            "fill": fill,
            "list": list,
            "latency_while_churning": latency,
            "status_while_list_renders": status_during_list,
            "churn": churned,
            "idle": idle,
            "events_lost": lost,
        }))
    }

    fn start_agent(&self, dir: &Path) -> Result<Agent> {
        let ready = dir.join("agent-ready");
        let mut command = Command::new(self.ctscope);
        command
            .args(["watch", "--headless", "--socket"])
            .arg(&self.socket)
            .arg("--metrics")
            .arg(self.metrics.to_string())
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        eprintln!("$ {} &", cmd::show(&command));
        let mut agent = Agent(command.spawn().context("cannot start ctscope watch")?);
        let start = Instant::now();
        while !ready.exists() {
            check_interrupt()?;
            if let Some(status) = agent.0.try_wait()? {
                bail!("ctscope watch exited ({})", cmd::describe(status));
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("ctscope watch not ready after {READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    fn flood(&self, ns: &Netns, dst: &str, flows: u64) -> Result<()> {
        let mut send = ns.command(self.flood);
        send.args(["--src", &format!("0.0.0.0:{SPORT}")])
            .args(["--dst", dst])
            .args(["--flows", &flows.to_string()]);
        cmd::output(&mut send).map(drop)
    }

    fn kernel_entries(&self) -> u64 {
        self.pairs.iter().map(|p| entries(&p.client)).sum()
    }

    /// The agent's `status`.
    fn status(&self) -> Result<Value> {
        let out = self.ctscope_cmd(&["watch", "--status"]).output()?;
        serde_json::from_slice(&out.stdout).context("ctscope watch --status printed no JSON")
    }

    /// Entries the agent holds in the bench's namespaces.
    fn held(&self) -> Result<u64> {
        let status = self.status()?;
        Ok(self
            .pairs
            .iter()
            .map(|p| {
                status["per_netns"][p.client.inode().to_string()]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum())
    }

    fn wait_for_table(&self, done: impl Fn(u64) -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            check_interrupt()?;
            let held = self.held()?;
            if done(held) {
                return Ok(());
            }
            if start.elapsed() > CATCH_UP {
                bail!("the agent holds {held} entries after {CATCH_UP:?}");
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// `ctscope ARGS --socket S`.
    fn ctscope_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.ctscope);
        c.args(args).arg("--socket").arg(&self.socket);
        c
    }

    /// Each namespace listed by the agent and by `conntrack -L`, timed and compared.
    fn compare_lists(&self) -> Result<Value> {
        let (mut agent_s, mut conntrack_s) = (0.0, 0.0);
        let (mut agent_lines, mut conntrack_lines, mut differ) = (0, 0, 0);
        for p in self.pairs {
            let name = p.client.name();
            let (ours, t) = timed_output(self.ctscope_cmd(&["list", "--netns", name]))?;
            agent_s += t;
            let (theirs, t) = timed_output({
                let mut c = p.client.command("conntrack");
                c.arg("-L");
                c
            })?;
            conntrack_s += t;
            let (a, b) = (normalized(&ours), normalized(&theirs));
            agent_lines += a.len();
            conntrack_lines += b.len();
            differ += differing(a, b);
        }
        Ok(json!({
            "agent_seconds": agent_s, "conntrack_seconds": conntrack_s,
            "agent_lines": agent_lines, "conntrack_lines": conntrack_lines,
            "differing_lines": differ,
        }))
    }

    fn latencies(&self) -> Value {
        let mut out = serde_json::Map::new();
        for what in ["top", "stats", "diagnose", "timeouts"] {
            let times = (0..TRIES)
                .map(|_| timed(self.ctscope_cmd(&[what, "--all-netns"])))
                .collect();
            out.insert(what.into(), spread(times));
        }
        let scrapes = (0..TRIES).map(|_| self.scrape()).collect();
        out.insert("metrics".into(), spread(scrapes));
        let status = (0..TRIES)
            .map(|_| timed(self.ctscope_cmd(&["watch", "--status"])))
            .collect();
        out.insert("watch --status".into(), spread(status));
        out.into()
    }

    /// One GET /metrics, read to the end: its time in seconds.
    fn scrape(&self) -> Option<f64> {
        let start = Instant::now();
        let mut s = TcpStream::connect(self.metrics).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).ok()?;
        body.starts_with(b"HTTP/1.1 200")
            .then(|| start.elapsed().as_secs_f64())
    }

    /// `watch --status` while `list --all-netns` renders: its time, and the list's.
    fn status_during_list(&self, dir: &Path) -> Value {
        let mut status = Vec::new();
        let mut list = Vec::new();
        for _ in 0..TRIES {
            let Ok(out) = fs::File::create(dir.join("list.out")) else {
                continue;
            };
            let start = Instant::now();
            let Ok(mut child) = self
                .ctscope_cmd(&["list", "--all-netns"])
                .stdout(out)
                .spawn()
            else {
                continue;
            };
            thread::sleep(Duration::from_millis(100));
            status.push(timed(self.ctscope_cmd(&["watch", "--status"])));
            let ok = child.wait().is_ok_and(|s| s.success());
            list.push(ok.then(|| start.elapsed().as_secs_f64()));
        }
        json!({ "status": spread(status), "list": spread(list) })
    }

    /// The agent's CPU over [`IDLE`] with nothing happening but its resyncs.
    fn idle(&self, pid: u32) -> Value {
        let cpu0 = cpu_seconds(pid);
        thread::sleep(IDLE);
        let used = cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
        json!({
            "seconds": IDLE.as_secs_f64(),
            "agent_cpu_share": used.map(|u| u / IDLE.as_secs_f64()),
            "resync": self.status().map(|s| s["resync"].clone()).unwrap_or(Value::Null),
        })
    }
}

/// The agent's resident memory: outside BPF maps (what it allocated) and mapped from them.
fn memory(pid: u32) -> Value {
    json!({ "outside_bpf": rss_bytes(pid), "bpf_mapped": bpf_mapped_bytes(pid) })
}

/// New flows to [`CHURN_DST`] and their deletion, in steps, in namespace 0 until stopped.
struct Churn {
    stop: Arc<AtomicBool>,
    flows: Arc<AtomicU64>,
    handle: thread::JoinHandle<()>,
    began: Instant,
}

impl Churn {
    fn start(s: &Scale) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let flows = Arc::new(AtomicU64::new(0));
        let (flood, name) = (s.flood.to_owned(), s.pairs[0].client.name().to_owned());
        let (stop2, flows2) = (stop.clone(), flows.clone());
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let mut send = Command::new("ip");
                send.args(["netns", "exec", &name])
                    .arg(&flood)
                    .args(["--src", &format!("0.0.0.0:{}", SPORT + 1)])
                    .args(["--dst", CHURN_DST, "--flows", &CHURN_STEP.to_string()]);
                if cmd::output(&mut send).is_err() {
                    return;
                }
                flows2.fetch_add(CHURN_STEP, Ordering::Relaxed);
                let _ = Command::new("ip")
                    .args(["netns", "exec", &name, "conntrack", "-D", "-d", CHURN_DST])
                    .stderr(Stdio::null())
                    .stdout(Stdio::null())
                    .status();
            }
        });
        Churn {
            stop,
            flows,
            handle,
            began: Instant::now(),
        }
    }

    fn stop(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        let secs = self.began.elapsed().as_secs_f64();
        let flows = self.flows.load(Ordering::Relaxed);
        json!({ "flows": flows, "seconds": secs, "flows_per_second": flows as f64 / secs })
    }
}

fn timed_output(mut c: Command) -> Result<(String, f64)> {
    let start = Instant::now();
    let out = c.stderr(Stdio::inherit()).output()?;
    let t = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{} failed ({})", cmd::show(&c), cmd::describe(out.status));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), t))
}

/// A command's time in seconds, `None` when it failed.
fn timed(mut c: Command) -> Option<f64> {
    let start = Instant::now();
    let ok = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| start.elapsed().as_secs_f64())
}

/// Median and max of some timings; failures counted.
fn spread(mut times: Vec<Option<f64>>) -> Value {
    let failed = times.iter().filter(|t| t.is_none()).count();
    let mut ok: Vec<f64> = times.drain(..).flatten().collect();
    ok.sort_by(f64::total_cmp);
    json!({ "median": ok.get(ok.len() / 2), "max": ok.last(), "failed": failed })
}

/// An entry's lines with the countdown (third field) blanked, sorted.
fn normalized(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 2 {
                f[2] = "-";
            }
            f.join(" ")
        })
        .collect();
    lines.sort_unstable();
    lines
}

/// Lines in one sorted list and not the other, both ways.
fn differing(a: Vec<String>, b: Vec<String>) -> usize {
    let mut count: HashMap<String, i64> = HashMap::new();
    for l in a {
        *count.entry(l).or_default() += 1;
    }
    for l in b {
        *count.entry(l).or_default() -= 1;
    }
    count.values().map(|v| v.unsigned_abs() as usize).sum()
}

fn print_table(r: &Value) {
    let res = &r["results"];
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.3}"));
    let mib = |v: &Value| {
        v.as_f64()
            .map_or("-".into(), |x| format!("{:.1} MiB", x / 1048576.0))
    };
    let m = &res["memory"];
    println!("$ {}", r["command"].as_str().unwrap_or(""));
    println!(
        "{} entries in {} namespaces (the agent's table)",
        res["fill"]["kernel_entries"], r["namespaces"]
    );
    println!(
        "agent RSS outside BPF maps: empty {}, full {}, drained {}; {} B per entry \
         ({} B per entry left after the drain); BPF maps mapped (ring buffer): {}",
        mib(&m["empty"]["outside_bpf"]),
        mib(&m["full"]["outside_bpf"]),
        mib(&m["drained"]["outside_bpf"]),
        f(&m["bytes_per_entry"]),
        f(&m["left_after_drain_bytes_per_entry"]),
        mib(&m["full"]["bpf_mapped"]),
    );
    println!(
        "fill: {} s, agent CPU {} s",
        f(&res["fill"]["seconds"]),
        f(&res["fill"]["agent_cpu_seconds"])
    );
    let l = &res["list"];
    println!(
        "list per namespace: agent {} s ({} lines), conntrack -L {} s ({} lines), {} lines \
         differ (countdown aside)",
        f(&l["agent_seconds"]),
        l["agent_lines"],
        f(&l["conntrack_seconds"]),
        l["conntrack_lines"],
        l["differing_lines"]
    );
    println!(
        "while churning ({} flows/s, new and deleted), seconds (median / max):",
        f(&res["churn"]["flows_per_second"])
    );
    if let Some(lat) = res["latency_while_churning"].as_object() {
        for (what, t) in lat {
            println!(
                "  {what:<15} {} / {}{}",
                f(&t["median"]),
                f(&t["max"]),
                match t["failed"].as_u64() {
                    Some(n) if n > 0 => format!(" ({n} failed)"),
                    _ => String::new(),
                }
            );
        }
    }
    let s = &res["status_while_list_renders"];
    println!(
        "watch --status while list --all-netns renders: {} / {} s (the list: {} s)",
        f(&s["status"]["median"]),
        f(&s["status"]["max"]),
        f(&s["list"]["median"])
    );
    let i = &res["idle"];
    println!(
        "idle {} s: agent CPU {} of one CPU; resync {}",
        f(&i["seconds"]),
        f(&i["agent_cpu_share"]),
        i["resync"]
    );
    println!("events lost: {}", res["events_lost"]);
}

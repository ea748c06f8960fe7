//! The listener of a run (`ctscope events`, `ctscope watch` or `conntrack -E`): started,
//! waited for, its `new` events counted as they come (lines on its stdout; the agent's
//! status for `watch`), stopped with its CPU and BPF time.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

use super::agent;
use super::host::{check_interrupt, interrupted};
use super::procfs::{BpfProg, bpf_programs, cpu_seconds, thread_cpu_seconds};
use super::{CONNTRACK_RCVBUF, Ctx, DRAIN_IDLE, DRAIN_MAX, Mode, READY_TIMEOUT};

/// A listener attached in its own process, with threads counting its output.
pub(super) struct Listener {
    pub(super) mode: Mode,
    pub(super) child: Child,
    pub(super) events: Arc<AtomicU64>,
    pub(super) stdout: Option<JoinHandle<(u64, f64)>>,
    pub(super) stderr: Option<JoinHandle<Vec<String>>>,
    /// CPU seconds the listener had used once attached (loading and verifying its BPF
    /// programs, seeding its table): left out of the run's figure.
    pub(super) ready_cpu: Option<f64>,
    /// `watch`: the agent's socket, where its event and loss counts are read.
    pub(super) socket: Option<PathBuf>,
}

pub(super) struct Tally {
    pub(super) events: u64,
    /// CPU seconds the listener process used (user + system) from attached until just
    /// before SIGINT.
    pub(super) cpu: Option<f64>,
    /// The BPF programs the listener holds, with their run times (bpf_stats_enabled).
    pub(super) bpf: Vec<BpfProg>,
    /// CPU seconds of xtask's thread that counted the listener's lines.
    pub(super) reader_cpu: f64,
    pub(super) loss_reports: u64,
    /// `watch`: [`agent::upkeep`] at the end.
    pub(super) upkeep: Option<serde_json::Value>,
    pub(super) shown: Option<u64>,
    pub(super) stderr: Vec<String>,
    pub(super) status: ExitStatus,
}

impl Listener {
    /// Starts the listener and waits until it is attached.
    pub(super) fn start(ctx: &Ctx, mode: Mode) -> Result<Listener> {
        let _ = fs::remove_file(&ctx.ready);
        let mut command = match mode {
            Mode::Ctscope => {
                let mut c = Command::new(ctx.ctscope);
                c.args(["events", "--json", "--kind", "new", "--netns"])
                    .arg(ctx.conntrack_ns.name())
                    .arg("--ready-file")
                    .arg(&ctx.ready);
                c
            }
            Mode::Hooks | Mode::Filter | Mode::Ring => {
                let mut c = Command::new(ctx.ctscope);
                c.args(["events", "--floor", mode.floor().unwrap_or("empty")])
                    .arg("--ready-file")
                    .arg(&ctx.ready);
                c
            }
            Mode::Watch => {
                let mut c = Command::new(ctx.ctscope);
                c.args(["watch", "--headless", "--socket"])
                    .arg(ctx.agent_socket())
                    .arg("--ready-file")
                    .arg(&ctx.ready);
                c
            }
            Mode::Conntrack => {
                let mut c = ctx.conntrack_ns.command("conntrack");
                c.args(["-E", "-e", "NEW", "-b", CONNTRACK_RCVBUF]);
                c
            }
            Mode::None => unreachable!("no listener in mode none"),
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("$ {} &", cmd::show(&command));
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::show(&command)))?;
        let events = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let counter = events.clone();
        let mut listener = Listener {
            mode,
            child,
            events,
            stdout: Some(thread::spawn(move || count_events(mode, stdout, &counter))),
            stderr: Some(thread::spawn(move || read_lines(stderr))),
            ready_cpu: None,
            socket: (mode == Mode::Watch).then(|| ctx.agent_socket()),
        };
        listener.wait_ready(ctx)?;
        listener.ready_cpu = cpu_seconds(listener.child.id());
        Ok(listener)
    }

    pub(super) fn wait_ready(&mut self, ctx: &Ctx) -> Result<()> {
        let start = Instant::now();
        let pid = self.child.id();
        loop {
            check_interrupt()?;
            let ready = match self.mode {
                m if m.runs_ctscope() => ctx.ready.exists(),
                _ => subscribed(pid),
            };
            if ready {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let stderr = self.stderr.take().map(join).unwrap_or_default();
                bail!(
                    "{} exited before it was attached ({}): {}",
                    self.mode,
                    cmd::describe(status),
                    stderr.join(" / ")
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("{} not attached after {READY_TIMEOUT:?}", self.mode);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Events received so far: counted lines, or the agent's own count (then stored, so
    /// that [`Listener::stop`] has the last one if the agent no longer answers).
    fn received(&self) -> u64 {
        if let Some(status) = self.socket.as_deref().and_then(agent::status) {
            self.events
                .store(agent::new_events(&status), Ordering::Relaxed);
        }
        self.events.load(Ordering::Relaxed)
    }

    /// Waits until `expected` events arrived, or none for [`DRAIN_IDLE`].
    pub(super) fn drain(&self, expected: u64) {
        let start = Instant::now();
        let mut last = self.received();
        let mut last_change = start;
        while start.elapsed() < DRAIN_MAX && !interrupted() {
            let now = self.received();
            if now >= expected {
                break;
            }
            if now != last {
                (last, last_change) = (now, Instant::now());
            } else if last_change.elapsed() >= DRAIN_IDLE {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT (both print their totals and exit 0), SIGKILL if that does not work.
    pub(super) fn stop(mut self) -> Result<Tally> {
        let cpu = cpu_seconds(self.child.id())
            .zip(self.ready_cpu)
            .map(|(now, ready)| now - ready);
        let bpf = bpf_programs(self.child.id());
        let last = self.socket.as_deref().and_then(agent::status);
        if let Some(status) = &last {
            self.events
                .store(agent::new_events(status), Ordering::Relaxed);
        }
        let agent_lost = last.as_ref().map(agent::lost);
        let upkeep = last.as_ref().map(agent::upkeep);
        signal(&self.child, libc::SIGINT);
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("bench: {} ignored SIGINT; killing it", self.mode);
                self.child.kill()?;
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let (loss_reports_ctscope, reader_cpu) = self.stdout.take().map(join).unwrap_or_default();
        let stderr = self.stderr.take().map(join).unwrap_or_default();
        let enobufs = stderr.iter().filter(|l| l.contains("ENOBUFS")).count() as u64;
        let shown = stderr
            .iter()
            .find_map(|l| l.strip_suffix(" flow events have been shown."))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok());
        // conntrack -E repeats a three-line warning per ENOBUFS; keep one of each line.
        let mut kept: Vec<String> = Vec::new();
        for l in stderr {
            if !kept.contains(&l) {
                kept.push(l);
            }
        }
        Ok(Tally {
            events: self.events.load(Ordering::Relaxed),
            cpu,
            bpf,
            reader_cpu,
            loss_reports: match self.mode {
                Mode::Ctscope => loss_reports_ctscope,
                Mode::Watch => agent_lost.unwrap_or(0),
                _ => enobufs,
            },
            upkeep,
            shown,
            stderr: kept,
            status,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The line where ctscope announced tier 3 (ctnetlink only), for a BPF mode.
pub(super) fn without_bpf(mode: Mode, stderr: &[String]) -> Option<&str> {
    let bpf = mode.runs_ctscope();
    let tier3 = stderr
        .iter()
        .find(|l| l.starts_with("ctscope: watching (tier 3"));
    tier3.filter(|_| bpf).map(String::as_str)
}

pub(super) fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

pub(super) fn join<T: Default>(handle: JoinHandle<T>) -> T {
    handle.join().unwrap_or_default()
}

/// Counts the listener's `new` lines into `counter`; returns the events ctscope's `lost`
/// records account for and the CPU seconds this took. Cheap per line: xtask is a debug
/// build and must not compete with the sender for the CPUs more than a real consumer would.
pub(super) fn count_events(mode: Mode, out: impl Read, counter: &AtomicU64) -> (u64, f64) {
    let mut reader = BufReader::with_capacity(1 << 20, out);
    let mut line = Vec::with_capacity(4096);
    let mut lost = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return (lost, thread_cpu_seconds()),
            Ok(_) => {}
        }
        match mode {
            Mode::Ctscope => {
                // `{"ts":…,"kind":"new",…}`: the kind follows the first comma.
                let rest = line
                    .iter()
                    .position(|&b| b == b',')
                    .map_or(&line[..0], |i| &line[i + 1..]);
                if rest.starts_with(br#""kind":"new""#) {
                    counter.fetch_add(1, Ordering::Relaxed);
                } else if rest.starts_with(br#""kind":"lost""#) {
                    lost += serde_json::from_slice::<Value>(&line)
                        .ok()
                        .and_then(|v| v["count"].as_u64())
                        .unwrap_or(0);
                }
            }
            _ => {
                if line.trim_ascii_start().starts_with(b"[NEW]") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

pub(super) fn read_lines(err: impl Read) -> Vec<String> {
    BufReader::new(err)
        .lines()
        .map_while(Result::ok)
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether process `pid` holds a NETLINK_NETFILTER socket subscribed to a multicast group
/// (conntrack -E has no ready signal): its socket inodes in /proc/PID/net/netlink.
pub(super) fn subscribed(pid: u32) -> bool {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/netlink")) else {
        return false;
    };
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 10
            && f[1] == "12"
            && f[3].chars().any(|c| c != '0')
            && inodes.iter().any(|i| i == f[9])
    })
}

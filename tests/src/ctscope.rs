//! Driving the `ctscope` binary: `probe --json` to decide what can run, and
//! `events --json` collected in the background while a scenario makes traffic.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::{cmd, wait};

/// The binary under test: `$CTSCOPE_BIN`, else `ctscope` on PATH, else the workspace's
/// `target/debug/ctscope`. `None` if none of them exists.
pub fn binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CTSCOPE_BIN") {
        return Some(PathBuf::from(bin));
    }
    if let Some(bin) = cmd::find_on_path("ctscope") {
        return Some(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    Some(workspace.join("target/debug/ctscope")).filter(|p| p.is_file())
}

/// The binary, or a panic that says how to provide one.
pub fn binary_or_panic() -> PathBuf {
    binary().expect(
        "no ctscope binary: set CTSCOPE_BIN, put ctscope on PATH, or build target/debug/ctscope",
    )
}

/// `ctscope probe --json`, kept as JSON with typed accessors for the fields tests use.
#[derive(Clone, Debug)]
pub struct Probe(pub Value);

impl Probe {
    /// Runs the probe; `Err` explains why it could not (binary missing, failure, bad JSON).
    pub fn run() -> Result<Self, String> {
        Self::run_with_env(&[])
    }

    /// [`run`](Self::run) with these environment variables set for ctscope.
    pub fn run_with_env(vars: &[(&str, &str)]) -> Result<Self, String> {
        let bin = binary().ok_or("no ctscope binary (set CTSCOPE_BIN or build ctscope)")?;
        let out = Command::new(&bin)
            .args(["probe", "--json"])
            .envs(vars.iter().copied())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`ctscope probe --json` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim())
            .map(Probe)
            .map_err(|e| format!("`ctscope probe --json` printed invalid JSON ({e}): {stdout:?}"))
    }

    pub fn bool(&self, field: &str) -> Option<bool> {
        self.0[field].as_bool()
    }

    pub fn kprobes(&self) -> Option<bool> {
        self.bool("kprobes")
    }

    /// The tier ctscope would run at: 1 kprobes/fentry, 2 tracepoints, 3 no BPF.
    pub fn tier(&self) -> Option<u64> {
        self.0["tier"].as_u64()
    }

    pub fn kernel(&self) -> &str {
        self.0["kernel"].as_str().unwrap_or("?")
    }

    /// What the BTF reader and the loader noted (facts decided from elsewhere than BTF).
    pub fn notes(&self) -> Vec<&str> {
        let notes = self.0["notes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        notes.iter().filter_map(Value::as_str).collect()
    }

    pub fn hooks(&self) -> &[Value] {
        self.0["hooks"].as_array().map(Vec::as_slice).unwrap_or(&[])
    }

    /// `None` if tier `n` can run here (`probe` tries every tier), else why not.
    pub fn tier_missing(&self, n: u64) -> Option<String> {
        let tiers = self.0["tiers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        match tiers.iter().find(|t| t["tier"].as_u64() == Some(n)) {
            Some(t) if t["available"] == true => None,
            Some(t) => Some(format!(
                "needs tier {n}, probe on kernel {} says: {}",
                self.kernel(),
                t["reason"].as_str().unwrap_or("unavailable")
            )),
            None => Some(format!("needs tier {n}, probe does not report tiers")),
        }
    }

    /// `None` if tier-1 scenarios can run here, else why not.
    pub fn tier1_missing(&self) -> Option<String> {
        match (self.kprobes(), self.tier()) {
            (Some(true), Some(1)) => None,
            (kprobes, tier) => Some(format!(
                "needs tier 1, probe on kernel {} says kprobes={} tier={}",
                self.kernel(),
                kprobes.map_or("?".into(), |b| b.to_string()),
                tier.map_or("null".into(), |t| t.to_string()),
            )),
        }
    }
}

/// Options of one `ctscope events --json` run.
#[derive(Clone, Debug, Default)]
pub struct EventsOpts {
    /// `--netns INODE`.
    pub netns: Option<u64>,
    /// `--duration S`.
    pub duration: Option<f64>,
    /// `--count N`.
    pub count: Option<u64>,
    /// Anything else, appended as is.
    pub extra: Vec<String>,
    /// A command that runs ctscope (`ip netns exec NS setpriv ...`), if any.
    pub wrapper: Vec<String>,
}

impl EventsOpts {
    pub fn netns(inode: u64) -> Self {
        EventsOpts {
            netns: Some(inode),
            ..Default::default()
        }
    }

    fn args(&self, ready: &Path) -> Vec<String> {
        let mut args: Vec<String> = ["events", "--json", "--ready-file"]
            .map(String::from)
            .into();
        args.push(ready.display().to_string());
        if let Some(inode) = self.netns {
            args.extend(["--netns".into(), inode.to_string()]);
        }
        if let Some(d) = self.duration {
            args.extend(["--duration".into(), d.to_string()]);
        }
        if let Some(n) = self.count {
            args.extend(["--count".into(), n.to_string()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// How long to wait for the ready file: loading BPF under TCG in a VM is slow.
pub fn ready_timeout() -> Duration {
    wait::env_secs("CTSCOPE_TEST_READY_SECS", 60)
}

static NEXT_READY: AtomicU32 = AtomicU32::new(0);

/// A running `ctscope events --json`; stdout lines are parsed as they arrive.
/// Killed on drop if still running (e.g. when a test panics).
#[derive(Debug)]
pub struct Events {
    child: Child,
    ready: PathBuf,
    events: Arc<Mutex<Vec<Value>>>,
    garbage: Arc<Mutex<Vec<String>>>,
    /// Set when stdout closed: ctscope exited, no more events can come.
    closed: Arc<AtomicBool>,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub events: Vec<Value>,
    /// stdout lines that were not JSON objects.
    pub garbage: Vec<String>,
    pub stderr: String,
}

impl Events {
    /// Spawns ctscope and returns once it has created its ready file (probes attached).
    pub fn start(opts: &EventsOpts) -> Self {
        let ready = std::env::temp_dir().join(format!(
            "ctscope-test-{}-{}.ready",
            std::process::id(),
            NEXT_READY.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready);
        let mut run = Self::spawn(opts, ready);
        run.wait_ready();
        run
    }

    fn spawn(opts: &EventsOpts, ready: PathBuf) -> Self {
        let bin = binary_or_panic();
        let args = opts.args(&ready);
        let mut command = match opts.wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", bin.display()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let garbage = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout piped");
        let closed = Arc::new(AtomicBool::new(false));
        let (ev, gb, eof) = (events.clone(), garbage.clone(), closed.clone());
        let stdout = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => ev.lock().unwrap().push(v),
                    _ => gb.lock().unwrap().push(line),
                }
            }
            eof.store(true, Ordering::Relaxed);
        });
        let mut stderr_pipe = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        Events {
            child,
            ready,
            events,
            garbage,
            closed,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    fn wait_ready(&mut self) {
        let limit = ready_timeout();
        let ready = wait::poll(limit, Duration::from_millis(50), || {
            if self.ready.exists() {
                return Some(Ok(()));
            }
            match self.child.try_wait() {
                Ok(Some(status)) => Some(Err(status)),
                _ => None,
            }
        });
        match ready {
            Some(Ok(())) => {}
            Some(Err(status)) => {
                let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
                panic!(
                    "ctscope events exited ({status}) before it was ready: {}",
                    stderr.unwrap_or_default()
                );
            }
            None => panic!("ctscope events did not create its ready file within {limit:?}"),
        }
    }

    /// The process id of the running ctscope.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The events received so far.
    pub fn snapshot(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `done(events so far)` holds, `limit` passes, or ctscope exits;
    /// returns whether it held. The caller's assertions then say what was missing.
    pub fn wait_until(&self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        wait::poll(limit, Duration::from_millis(100), || {
            let closed = self.closed.load(Ordering::Relaxed);
            let held = done(&self.events.lock().unwrap());
            (held || closed).then_some(held)
        })
        .unwrap_or(false)
    }

    /// Stops ctscope with SIGINT (it should drain and exit 0) and returns everything.
    pub fn stop(mut self) -> Finished {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT ctscope");
        }
        self.finish(Duration::from_secs(20))
    }

    /// Waits for ctscope to exit on its own (`--duration`, `--count`), at most `limit`.
    pub fn wait_exit(mut self, limit: Duration) -> Finished {
        self.finish(limit)
    }

    fn finish(&mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait().expect("wait for ctscope") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    panic!("ctscope did not exit within {limit:?}");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if let Some(t) = self.stdout.take() {
            t.join().expect("stdout reader");
        }
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        Finished {
            status,
            events: std::mem::take(&mut *self.events.lock().unwrap()),
            garbage: std::mem::take(&mut *self.garbage.lock().unwrap()),
            stderr,
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.ready);
    }
}

impl Finished {
    /// Panics unless ctscope exited 0 and printed only JSON objects on stdout.
    pub fn assert_clean(&self) {
        assert!(
            self.status.success(),
            "ctscope events exited with {}; stderr:\n{}",
            self.status,
            self.stderr
        );
        assert!(
            self.garbage.is_empty(),
            "ctscope events printed non-JSON lines: {:?}",
            self.garbage
        );
    }

    /// stderr lines that report an error (`Error: ...` from main, or an ERROR log line).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("Error") || l.contains("ERROR") || l.contains("panicked"))
            .collect()
    }
}

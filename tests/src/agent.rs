//! Driving the agent (`ctscope watch --headless`) on a private socket, and asking it
//! what the CLI asks: `list`, `stats`, `watch --status`; or as a raw client would.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::{ctscope, wait};

/// A running agent, stopped (SIGTERM, then waited for) on drop.
pub struct Agent {
    child: Child,
    /// Its ready file and log (and its socket, unless given one); removed on drop.
    dir: TempDir,
    socket: PathBuf,
}

/// How the agent is told its socket path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketVia {
    /// `--socket PATH`.
    Flag,
    /// `$CTSCOPE_SOCKET`.
    Env,
}

/// An agent that exited before it was ready: how, and what it said on stderr.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Agent {
    /// Starts `ctscope watch --headless` with `extra` flags on a private socket and waits
    /// until its table is seeded and its socket answers.
    pub fn start(extra: &[&str]) -> Self {
        let dir = private_dir();
        let socket = dir.path().join("agent.sock");
        Self::launch(dir, socket, SocketVia::Flag, extra, false, &[])
            .unwrap_or_else(|e| panic!("ctscope watch exited before it was ready: {}", e.status))
    }

    /// Like [`Agent::start`], with the agent run in the network namespace `netns` (`ip
    /// netns exec`): that namespace is its own.
    pub fn start_in(netns: &str, extra: &[&str]) -> Self {
        let dir = private_dir();
        let socket = dir.path().join("agent.sock");
        let wrap = ["ip", "netns", "exec", netns];
        Self::launch(dir, socket, SocketVia::Flag, extra, false, &wrap)
            .unwrap_or_else(|e| panic!("ctscope watch exited before it was ready: {}", e.status))
    }

    /// Starts the agent on `socket`, given as `via` says; `Err` with its exit status and
    /// stderr when it exits before it is ready.
    pub fn try_start(socket: &Path, via: SocketVia, extra: &[&str]) -> Result<Self, Exited> {
        Self::launch(private_dir(), socket.to_path_buf(), via, extra, true, &[])
    }

    /// Like [`Agent::try_start`] on a private socket, run through the command `wrap`
    /// (`setpriv ...`, which must exec it), with its stderr kept for [`Agent::stderr`].
    pub fn try_start_wrapped(wrap: &[&str], extra: &[&str]) -> Result<Self, Exited> {
        let dir = private_dir();
        let socket = dir.path().join("agent.sock");
        Self::launch(dir, socket, SocketVia::Flag, extra, true, wrap)
    }

    /// What the agent wrote on stderr so far (empty unless it was started capturing it).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs the agent with its ready file (and, when `capture`, its stderr) in `dir`,
    /// through the command `wrap` (which must exec it, keeping its pid) if not empty.
    fn launch(
        dir: TempDir,
        socket: PathBuf,
        via: SocketVia,
        extra: &[&str],
        capture: bool,
        wrap: &[&str],
    ) -> Result<Self, Exited> {
        let ready = dir.path().join("ready");
        let log = dir.path().join("stderr");
        let stderr = if capture {
            Stdio::from(std::fs::File::create(&log).expect("agent stderr file"))
        } else {
            Stdio::inherit()
        };
        let bin = ctscope::binary_or_panic();
        let mut cmd = match wrap.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(["watch", "--headless", "--ready-file"])
            .arg(&ready)
            .args(extra)
            .env_remove("CTSCOPE_SOCKET")
            .stdout(Stdio::null())
            .stderr(stderr);
        match via {
            SocketVia::Flag => cmd.arg("--socket").arg(&socket),
            SocketVia::Env => cmd.env("CTSCOPE_SOCKET", &socket),
        };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut agent = Agent { child, dir, socket };
        let mut exited = None;
        let up = wait::poll(ctscope::ready_timeout(), Duration::from_millis(50), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                exited = Some(status);
                return Some(());
            }
            ready.exists().then_some(())
        });
        if let Some(status) = exited {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(Exited { status, stderr });
        }
        assert!(up.is_some(), "ctscope watch not ready in time");
        Ok(agent)
    }

    /// `ctscope ARGS --socket SOCKET`, required to exit 0.
    pub fn ctscope(&self, args: &[&str]) -> Output {
        self.try_ctscope(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ctscope ARGS --socket SOCKET`; `Err` with its stderr unless it exits 0.
    pub fn try_ctscope(&self, args: &[&str]) -> Result<Output, String> {
        let bin = ctscope::binary_or_panic();
        let out = Command::new(&bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        if !out.status.success() {
            return Err(format!(
                "ctscope {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(out)
    }

    /// Starts `ctscope ARGS --socket SOCKET` with stdout piped (e.g. `events`).
    pub fn spawn(&self, args: &[&str]) -> Child {
        let bin = ctscope::binary_or_panic();
        Command::new(&bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the agent exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The agent's open file descriptors (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        let path = format!("/proc/{}/fd", self.child.id());
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .count()
    }

    /// The agent's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}"))
    }

    /// A raw client: connected, `request` sent, nothing read.
    pub fn connect(&self, request: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        s.write_all(request).expect("sending a request");
        s
    }

    /// Waits until `n` clients subscribed to the agent's event stream.
    pub fn wait_subscribers(&self, n: u64) {
        let done = wait::poll(Duration::from_secs(30), Duration::from_millis(50), || {
            (self.status()["subscribers"].as_u64() >= Some(n)).then_some(())
        });
        assert!(
            done.is_some(),
            "no `ctscope events` subscribed to the agent"
        );
    }

    /// Waits until exactly `n` clients are subscribed; the last count seen otherwise.
    pub fn wait_subscribers_exactly(&self, n: u64, limit: Duration) -> Result<(), Value> {
        let mut last = Value::Null;
        wait::poll(limit, Duration::from_millis(100), || {
            last = self.status()["subscribers"].clone();
            (last.as_u64() == Some(n)).then_some(())
        })
        .ok_or(last)
    }

    /// `ctscope watch --status`.
    pub fn status(&self) -> Value {
        let out = self.ctscope(&["watch", "--status"]);
        serde_json::from_slice(&out.stdout).expect("status is one JSON object")
    }

    /// A counter of the status' `totals`.
    pub fn total(&self, name: &str) -> u64 {
        self.status()["totals"][name].as_u64().unwrap_or(0)
    }

    /// Waits until one more full dump of every namespace has been merged.
    pub fn wait_resync(&self) {
        let namespaces = self.status()["per_netns"]
            .as_object()
            .map_or(1, |m| m.len() as u64);
        let target = self.total("dumps") + namespaces + 1;
        let done = wait::poll(Duration::from_secs(60), Duration::from_millis(100), || {
            (self.total("dumps") >= target).then_some(())
        });
        assert!(done.is_some(), "the agent did not resync in 60 s");
    }

    /// Stops the agent (SIGTERM) and checks it exits cleanly.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "ctscope watch exited with {status:?}"
        );
    }

    /// Sends `signal` (SIGKILL leaves its socket behind, stale) and waits for the exit.
    pub fn signal(mut self, signal: Signal) -> Option<ExitStatus> {
        self.send(signal)
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        self.send(Signal::SIGTERM)
    }

    fn send(&mut self, signal: Signal) -> Option<ExitStatus> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        self.child.wait().ok()
    }
}

/// A fresh directory, 0700 whatever the umask (the agent refuses to put its socket in
/// one others may write), removed on drop.
pub fn private_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ctscope-agent-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("agent test dir")
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// The request line `ctscope ARGS` sends to an agent, caught on a socket of our own (so
/// raw clients send exactly what the CLI does).
pub fn request_line(args: &[&str]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("ctscope-request-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("request dir");
    let socket = dir.join("catch.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).expect("binding a catching socket");
    let bin = ctscope::binary_or_panic();
    let mut cli = Command::new(&bin)
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let accepted = wait::poll(Duration::from_secs(10), Duration::from_millis(20), || {
        listener.accept().ok()
    });
    let Some((stream, _)) = accepted else {
        let _ = cli.kill();
        panic!("ctscope {args:?} sent no request in 10 s");
    };
    stream.set_nonblocking(false).expect("blocking stream");
    let mut line = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut line)
        .expect("the CLI sends its request");
    drop(stream); // No header: the CLI gives up.
    let _ = cli.wait();
    let _ = std::fs::remove_dir_all(&dir);
    line
}

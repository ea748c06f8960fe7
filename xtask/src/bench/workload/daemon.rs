//! A server the bench starts in a namespace of its own (nginx, dnsmasq): its output goes
//! to a log file, it is ready once it listens, and it is killed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ctscope_tests::netns::Netns;

use crate::cmd;

use super::super::host::check_interrupt;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    /// Spawns `command` (already inside its namespace), its stdout and stderr in `log`,
    /// and waits until `ns` has a socket listening on `proto` (`t` TCP, `u` UDP) `port`.
    pub(super) fn start(
        name: &'static str,
        mut command: Command,
        log: &Path,
        ns: &Netns,
        proto: char,
        port: u16,
    ) -> Result<Daemon> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        eprintln!("$ {} &", cmd::show(&command));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::show(&command)))?;
        let mut daemon = Daemon { name, child };
        let start = Instant::now();
        while !listening(ns, proto, port) {
            check_interrupt()?;
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "{name} exited before it listened ({}): {}",
                    cmd::describe(status),
                    tail(log)
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "{name} not listening on port {port} after {READY_TIMEOUT:?}: {}",
                    tail(log)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// Fails if the server has exited (a run against it would measure nothing): a zombie
    /// or no process at all, read from /proc since runs hold the bed shared.
    pub(super) fn check(&self) -> Result<()> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        let state = stat
            .as_deref()
            .ok()
            .and_then(|s| s.rsplit_once(") "))
            .map(|(_, r)| r);
        if state.is_none_or(|r| r.starts_with('Z')) {
            bail!("{} exited during the benchmark", self.name);
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a socket in `ns` listens on `port` (`ss -l`, TCP or UDP).
fn listening(ns: &Netns, proto: char, port: u16) -> bool {
    let mut ss = ns.command("ss");
    ss.args([&format!("-Hln{proto}"), "sport", "=", &format!(":{port}")]);
    cmd::output(&mut ss).is_ok_and(|out| !out.trim().is_empty())
}

/// The last lines of a log file, for an error message.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(5);
    format!(
        "{} (log: {})",
        lines[from..].join(" / "),
        PathBuf::from(log).display()
    )
}

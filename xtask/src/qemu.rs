//! Boots a kernel and initramfs under qemu, streams the serial console to our stdout and
//! picks out the init's marker lines, under a hard timeout.
use std::{
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{cmd, initramfs};

/// What the console showed.
#[derive(Default)]
pub struct Outcome {
    /// The script's exit status, if the init got to report it.
    pub exit_code: Option<i32>,
    /// From starting qemu to the init's READY line (the script starts right after).
    pub boot: Option<Duration>,
    pub total: Duration,
    pub timed_out: bool,
    /// Every console line, `\r` stripped.
    pub lines: Vec<String>,
}

/// Console lines are printed behind `prefix` (the kernel's name: VMs may run side by side).
pub fn boot(vmlinuz: &Path, initrd: &Path, timeout: Duration, prefix: &str) -> Result<Outcome> {
    let mut qemu = command(vmlinuz, initrd);
    eprintln!("$ {}", cmd::show(&qemu));
    let start = Instant::now();
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let lines = spawn_reader(child.stdout.take().context("no stdout pipe")?);
    let mut outcome = Outcome::default();
    let deadline = start + timeout;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                println!("{prefix}{line}");
                observe(&mut outcome, &line, start);
                outcome.lines.push(line);
            }
            Err(RecvTimeoutError::Timeout) => {
                outcome.timed_out = true;
                kill(&mut child);
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    child.wait()?;
    outcome.total = start.elapsed();
    Ok(outcome)
}

/// TCG only: nested KVM crashes on the project machines ("KVM internal error").
///
/// Single-threaded TCG (both vCPUs on one host thread, taking turns): with one thread per
/// vCPU, a vCPU sometimes runs stale code while the other patches kernel text, which the
/// kernel does whenever a probe or tracepoint is attached or detached. It showed as
/// `Oops: int3` in `kmem_cache_free` and as a TCP entry missing from the table, in about
/// one run in three of the agent tests on 6.12; none in six runs single-threaded, which
/// were no slower.
fn command(vmlinuz: &Path, initrd: &Path) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "max", "-smp", "2", "-m", "2048"])
        // No NIC: the scenarios build their own veth pairs, and a default NIC would need
        // ipxe option ROMs. -no-reboot turns poweroff and panic=-1 into qemu exiting.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // mitigations=off: page-table isolation and friends make every syscall slower under
        // TCG and matter to nothing we test.
        .args(["-append", "console=ttyS0 panic=-1 quiet mitigations=off"])
        // A terminal on stdin would be put in raw mode and could send qemu keystrokes.
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    qemu
}

/// Console lines, read on a thread so that the caller can wait with a timeout.
fn spawn_reader(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = printable(&String::from_utf8_lossy(&buf));
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    rx
}

/// The line without its end and without terminal control sequences: SeaBIOS clears the
/// screen with `ESC c`, which would reset the terminal of whoever watches the run.
fn printable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => skip_escape(&mut chars),
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Skips the rest of an escape sequence: `ESC [ params final` (CSI) or `ESC x`.
fn skip_escape(chars: &mut std::str::Chars) {
    if chars.next() == Some('[') {
        for c in chars.by_ref() {
            if ('\x40'..='\x7e').contains(&c) {
                break;
            }
        }
    }
}

fn observe(outcome: &mut Outcome, line: &str, start: Instant) {
    // `contains`: SeaBIOS's terminal escapes precede the first line the init prints.
    if outcome.boot.is_none() && line.contains(initramfs::READY_MARKER) {
        outcome.boot = Some(start.elapsed());
    }
    // The marker may share a line with a kernel message printed at the same moment.
    if let Some(pos) = line.find(initramfs::EXIT_MARKER) {
        let digits: String = line[pos + initramfs::EXIT_MARKER.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        outcome.exit_code = digits.parse().ok();
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill(); // already gone is fine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_strips_seabios_escapes_and_line_end() {
        let raw = "\x1bc\x1b[?7l\x1b[2JCTSCOPE-VM-READY 6.1.0-56-cloud-amd64\r\n";
        assert_eq!(printable(raw), "CTSCOPE-VM-READY 6.1.0-56-cloud-amd64");
        assert_eq!(printable("a\tb\r\n"), "a\tb");
    }

    #[test]
    fn exit_marker_is_found_inside_a_kernel_line() {
        let mut outcome = Outcome::default();
        let start = Instant::now();
        observe(&mut outcome, "CTSCOPE-VM-READY 6.12", start);
        observe(&mut outcome, "[ 5.1] foo CTSCOPE-VM-EXIT=101", start);
        assert!(outcome.boot.is_some());
        assert_eq!(outcome.exit_code, Some(101));
    }
}

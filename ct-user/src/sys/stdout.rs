//! Every write to stdout goes through here. A closed stdout (`ctscope list | head`) is
//! not a failure: the write returns [`Closed`], the command stops, and `main` exits 0
//! without a message, as other Unix tools do (ripgrep: a broken pipe is a clean exit).
//! Rust ignores SIGPIPE, so without this a `println!` would panic instead.
//!
//! `ctscope conntrack` is the exception: it behaves as conntrack(8), which dies of
//! SIGPIPE, and writes through [`CStdout`], buffered as C's stdio is.

use std::{
    fmt,
    io::{self, BufWriter, IsTerminal as _, Write as _},
};

/// Stdout's reader has gone: the command ends quietly with status 0.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct Closed;

/// Whether `e` (or a cause of it) is a closed stdout.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Closed>())
}

/// A failed write to stdout: a closed pipe becomes [`Closed`], any other error says it
/// was stdout.
pub fn error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Closed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// The result of writes to stdout, their error classified by [`error`].
pub fn check(r: io::Result<()>) -> anyhow::Result<()> {
    r.map_err(error)
}

/// Writes `text` and flushes.
pub fn print(text: impl fmt::Display) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    check(write!(out, "{text}").and_then(|()| out.flush()))
}

/// Writes `text` and a newline, and flushes.
pub fn line(text: impl fmt::Display) -> anyhow::Result<()> {
    print(format_args!("{text}\n"))
}

/// Writes `bytes` as they are, and flushes.
pub fn bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    check(out.write_all(bytes).and_then(|()| out.flush()))
}

/// Buffered stdout for commands that write many lines; pass its write results through
/// [`check`].
pub type Writer = BufWriter<io::Stdout>;

pub fn writer() -> Writer {
    BufWriter::new(io::stdout())
}

/// Stdout buffered as C's stdio buffers it: 4 KiB at a time to a pipe or a file, line
/// by line to a terminal. For `ctscope conntrack`, whose writes must happen when
/// conntrack's do: on a closed pipe conntrack dies of SIGPIPE at its first write, which
/// for a short output is the flush at exit, after its summary on stderr.
pub struct CStdout {
    out: BufWriter<io::Stdout>,
    terminal: bool,
}

/// glibc's buffer for a pipe or a file (their `st_blksize`).
const STDIO_BUFFER: usize = 4096;

impl CStdout {
    pub fn new() -> Self {
        CStdout {
            out: BufWriter::with_capacity(STDIO_BUFFER, io::stdout()),
            terminal: io::stdout().is_terminal(),
        }
    }
}

impl Default for CStdout {
    fn default() -> Self {
        Self::new()
    }
}

impl io::Write for CStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if self.terminal && buf[..n].contains(&b'\n') {
            self.out.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_closed_other_errors_are_not() {
        let closed = error(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_closed(&closed));
        assert!(is_closed(&closed.context("printing the entry")));
        let full = error(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(!is_closed(&full));
        assert!(
            format!("{full:#}").starts_with("writing to stdout: "),
            "{full:#}"
        );
    }
}

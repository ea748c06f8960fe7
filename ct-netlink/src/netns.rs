//! Running code, such as creating a socket, inside another network namespace.
//!
//! A socket stays bound to the netns it was created in, so only its creation
//! has to happen there: a short-lived thread enters the namespace, creates the
//! socket and leaves; no tokio worker ever changes namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Runs `f` in a thread that has joined the network namespace at `path` (e.g.
/// `/run/netns/NAME` or `/proc/PID/ns/net`), or right here when it is the caller's own:
/// entering that would need CAP_SYS_ADMIN all the same. The error is the namespace's
/// (opening or entering it); what `f` returns is passed back whole, and a panic in `f`
/// goes on here.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let target = File::open(path)?;
    let home = File::open("/proc/thread-self/ns/net")?;
    if same_file(&home, &target)? {
        return Ok(f());
    }
    // The thread ends right after `f`: nothing else ever runs in the namespace.
    std::thread::spawn(move || setns(&target).map(|()| f()))
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// [`run_in`] for socket makers, its errors as this crate's.
pub(crate) fn run_in_netns<T: Send + 'static>(
    path: &Path,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<io::Result<T>> {
    run_in(path, make).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::NetnsNotFound {
            path: path.to_path_buf(),
        },
        _ => Error::Netns {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Resolve a namespace argument: a name under /run/netns or a path.
pub fn netns_path(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new("/run/netns").join(name_or_path)
    }
}

/// Whether two namespace files are the same namespace (same nsfs device and inode).
fn same_file(a: &File, b: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn setns(ns: &File) -> io::Result<()> {
    // SAFETY: setns only reads the fd, which `ns` keeps open for the call.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

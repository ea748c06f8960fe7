//! Creating sockets inside another network namespace.
//!
//! A socket stays bound to the netns it was created in, so only its creation
//! has to happen there: a short-lived thread enters the namespace, creates the
//! socket and leaves; no tokio worker ever changes namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Run `make` in the network namespace at `path` (e.g. `/run/netns/NAME` or
/// `/proc/PID/ns/net`) and return its result.
pub(crate) fn run_in_netns<T: Send + 'static>(
    path: &Path,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<io::Result<T>> {
    let target = open_netns(path)?;
    let owned = path.to_path_buf();
    std::thread::spawn(move || enter_and_run(&owned, &target, make))
        .join()
        .map_err(|_| Error::Netns {
            path: path.to_path_buf(),
            source: io::Error::other("netns helper thread panicked"),
        })?
}

/// Resolve a namespace argument: a name under /run/netns or a path.
pub fn netns_path(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new("/run/netns").join(name_or_path)
    }
}

fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::NetnsNotFound {
            path: path.to_path_buf(),
        },
        _ => Error::Netns {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn enter_and_run<T>(
    path: &Path,
    target: &File,
    make: impl FnOnce() -> io::Result<T>,
) -> Result<io::Result<T>> {
    let netns_err = |source| Error::Netns {
        path: path.to_path_buf(),
        source,
    };
    let home = File::open("/proc/thread-self/ns/net").map_err(netns_err)?;
    // Entering the namespace one is in needs CAP_SYS_ADMIN all the same: skip it.
    if same_file(&home, target).map_err(netns_err)? {
        return Ok(make());
    }
    setns(target).map_err(netns_err)?;
    let made = make();
    // The thread ends right after; going back is for tidiness, not correctness.
    let _ = setns(&home);
    Ok(made)
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

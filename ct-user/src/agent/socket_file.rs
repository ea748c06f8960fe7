//! Claiming and releasing the agent's socket path. The agent runs as root, so a wrong
//! `--socket` must never cost the host a file: it removes nothing but a socket it has
//! proven stale (connecting is refused), never follows a symlink at the path, binds
//! only in a directory that no one else may write, and on exit removes the socket only
//! if the path still holds the one it bound.

use std::{
    fs::{self, Metadata},
    io,
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

/// Why the agent will not use a socket path. Each message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "{path} is {what}, not a socket: ctscope removes only a stale socket of its own there; \
         move it away or give --socket (or $CTSCOPE_SOCKET) a path that does not exist"
    )]
    NotASocket { path: PathBuf, what: &'static str },
    #[error("an agent already listens on {path}: stop it, or give this one another --socket")]
    Live { path: PathBuf },
    #[error(
        "{path} is a stale socket owned by uid {owner}, not by this agent (uid {euid}): \
         remove it yourself if it is unused, or give another --socket"
    )]
    ForeignSocket {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "cannot tell whether an agent still listens on {path} ({error}): \
         remove it yourself if it is unused, or give another --socket"
    )]
    Unprobed { path: PathBuf, error: io::Error },
    #[error(
        "the socket's directory {dir} {problem}: others could replace the socket there; \
         use the default, or a path in a directory only this user (or root) may write \
         (ctscope creates a missing one, mode 0700)"
    )]
    UnsafeDir { dir: PathBuf, problem: DirProblem },
    #[error("{path}: {error} (run as root, or give --socket a path you may write)")]
    Io { path: PathBuf, error: io::Error },
}

/// What is wrong with the directory the socket would live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirProblem {
    #[error("is not a directory")]
    NotADirectory,
    #[error("is owned by uid {owner}, not by this agent (uid {euid}) or root")]
    Owner { owner: u32, euid: u32 },
    #[error("may be written by group or others (mode {mode:04o}) and is not sticky")]
    Writable { mode: u32 },
}

/// The agent's claim on its socket path, from binding to drop. Dropping it removes the
/// socket if the path still holds the very file it bound (same device and inode).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Checks `path` and its directory (creating the directory 0700 if missing), removes
    /// a stale socket there, binds a listener and makes the socket 0600.
    pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), Refused> {
        let euid = effective_uid();
        let dir = directory(path);
        ensure_dir(&dir, euid)?;
        clear_stale(path, euid)?;
        let listener = UnixListener::bind(path).map_err(|error| io_at(path, error))?;
        let meta = fs::symlink_metadata(path).map_err(|error| io_at(path, error))?;
        let file = SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // Not a symlink: the directory is ours, and lstat just saw our socket.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|error| io_at(path, error))?;
        Ok((listener, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == (self.dev, self.ino));
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The directory `path` lives in (`.` for a bare file name).
fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` 0700 if missing, else checks that no one but us (or root) may change
/// what is in it.
fn ensure_dir(dir: &Path, euid: u32) -> Result<(), Refused> {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| io_at(dir, error))?;
            fs::metadata(dir).map_err(|error| io_at(dir, error))?
        }
        Err(error) => return Err(io_at(dir, error)),
    };
    match dir_problem(meta.is_dir(), meta.uid(), meta.mode(), euid) {
        None => Ok(()),
        Some(problem) => Err(Refused::UnsafeDir {
            dir: dir.to_path_buf(),
            problem,
        }),
    }
}

/// Whether a directory is safe to put the socket in: ours or root's, and writable by no
/// one else unless sticky (then others cannot remove or rename our socket).
pub fn dir_problem(is_dir: bool, owner: u32, mode: u32, euid: u32) -> Option<DirProblem> {
    const STICKY: u32 = 0o1000;
    if !is_dir {
        return Some(DirProblem::NotADirectory);
    }
    if owner != euid && owner != 0 {
        return Some(DirProblem::Owner { owner, euid });
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Some(DirProblem::Writable {
            mode: mode & 0o7777,
        });
    }
    None
}

/// Leaves `path` free to bind: nothing there, or a stale socket of ours, removed.
fn clear_stale(path: &Path, euid: u32) -> Result<(), Refused> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_at(path, error)),
    };
    if let Some(what) = not_a_socket(&meta) {
        return Err(Refused::NotASocket {
            path: path.to_path_buf(),
            what,
        });
    }
    if meta.uid() != euid {
        return Err(Refused::ForeignSocket {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Refused::Live {
            path: path.to_path_buf(),
        }),
        // Proven stale: a socket no one listens on.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|error| io_at(path, error))
        }
        Err(error) => Err(Refused::Unprobed {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// What the file at the socket path is, when it is not a socket (from lstat: a symlink
/// is a symlink, whatever it points to).
pub fn not_a_socket(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_socket() {
        return None;
    }
    Some(if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a socket"
    })
}

fn io_at(path: &Path, error: io::Error) -> Refused {
    Refused::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of ours, 0700, removed at the end.
    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("ctscope-socket-file-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn directory_rules() {
        assert_eq!(dir_problem(true, 1000, 0o40700, 1000), None);
        assert_eq!(
            dir_problem(true, 0, 0o40755, 1000),
            None,
            "root's is trusted"
        );
        assert_eq!(dir_problem(true, 0, 0o41777, 0), None, "sticky, like /tmp");
        assert_eq!(
            dir_problem(true, 65534, 0o40700, 0),
            Some(DirProblem::Owner {
                owner: 65534,
                euid: 0
            })
        );
        assert_eq!(
            dir_problem(true, 0, 0o40777, 0),
            Some(DirProblem::Writable { mode: 0o777 })
        );
        assert_eq!(
            dir_problem(true, 0, 0o40770, 0),
            Some(DirProblem::Writable { mode: 0o770 })
        );
        assert_eq!(
            dir_problem(false, 0, 0o100600, 0),
            Some(DirProblem::NotADirectory)
        );
    }

    #[test]
    fn refuses_a_regular_file_and_a_symlink_and_keeps_them() {
        let s = scratch();
        let file = s.path().join("data");
        fs::write(&file, "data\n").unwrap();
        let err = SocketFile::bind(&file).unwrap_err();
        assert!(err.to_string().contains("a regular file"), "{err}");
        assert_eq!(fs::read_to_string(&file).unwrap(), "data\n");

        let link = s.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = SocketFile::bind(&link).unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "data\n");

        let err = SocketFile::bind(s.path()).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
    }

    #[test]
    fn replaces_a_stale_socket_refuses_a_live_one() {
        let s = scratch();
        let path = s.path().join("agent.sock");
        drop(UnixListener::bind(&path).unwrap());
        let (listener, file) = SocketFile::bind(&path).expect("a stale socket is replaced");
        let mode = fs::symlink_metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = SocketFile::bind(&path).unwrap_err();
        assert!(matches!(err, Refused::Live { .. }), "{err}");
        drop(listener);
        drop(file);
        assert!(!path.exists(), "its own socket is removed");
    }

    #[test]
    fn keeps_a_socket_that_replaced_its_own() {
        let s = scratch();
        let path = s.path().join("agent.sock");
        let (_listener, file) = SocketFile::bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(
            UnixStream::connect(&path).is_ok(),
            "the other socket is kept"
        );
    }

    #[test]
    fn creates_a_missing_directory_0700() {
        let s = scratch();
        let path = s.path().join("a/b/agent.sock");
        let (_listener, file) = SocketFile::bind(&path).unwrap();
        let mode = fs::metadata(s.path().join("a/b")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(file.path(), path);
    }

    #[test]
    fn refuses_a_group_writable_directory() {
        let s = scratch();
        fs::set_permissions(s.path(), fs::Permissions::from_mode(0o770)).unwrap();
        let err = SocketFile::bind(&s.path().join("agent.sock")).unwrap_err();
        assert!(err.to_string().contains("mode 0770"), "{err}");
    }
}

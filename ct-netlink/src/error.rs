//! Errors, with the errno mapping that callers (the conntrack-compatible CLI) rely on.

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a ctnetlink operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// EPERM/EACCES from the kernel or from setns.
    #[error("{op}: operation not permitted (needs CAP_NET_ADMIN)")]
    PermissionDenied { op: &'static str },

    /// The network namespace path does not exist.
    #[error("network namespace {path:?} not found")]
    NetnsNotFound { path: PathBuf },

    /// Opening or entering the network namespace failed for another reason.
    #[error("cannot enter network namespace {path:?}: {source}")]
    Netns { path: PathBuf, source: io::Error },

    /// nfnetlink or nf_conntrack_netlink is not available in this kernel.
    #[error("{op}: ctnetlink is not available (is nf_conntrack_netlink loaded?)")]
    Unavailable { op: &'static str },

    /// EEXIST: `create` found an entry with the same tuple.
    #[error("{op}: such conntrack entry already exists")]
    Exists { op: &'static str },

    /// ENOENT: no entry matches the tuple.
    #[error("{op}: such conntrack entry is not found")]
    NotFound { op: &'static str },

    /// Any other negative errno answered by the kernel.
    #[error("{op}: kernel answered: {source}")]
    Kernel { op: &'static str, source: io::Error },

    /// A socket-level failure (socket, bind, send, recv).
    #[error("{op}: {source}")]
    Io { op: &'static str, source: io::Error },

    /// A message from the kernel could not be decoded.
    #[error("{op}: malformed netlink message: {detail}")]
    Decode { op: &'static str, detail: String },

    /// The caller passed something the kernel would reject (missing tuple field, ...).
    #[error("{op}: invalid argument: {detail}")]
    InvalidInput { op: &'static str, detail: String },
}

impl Error {
    /// Map an errno answered by the kernel for `op` to the matching variant.
    pub(crate) fn from_errno(op: &'static str, errno: i32) -> Self {
        match errno {
            libc::EPERM | libc::EACCES => Error::PermissionDenied { op },
            libc::EEXIST => Error::Exists { op },
            libc::ENOENT => Error::NotFound { op },
            libc::EOPNOTSUPP | libc::EPROTONOSUPPORT => Error::Unavailable { op },
            _ => Error::Kernel {
                op,
                source: io::Error::from_raw_os_error(errno),
            },
        }
    }

    /// Map a socket-level error, keeping the errno classes callers must tell apart.
    pub(crate) fn from_io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied { op },
            Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => Error::Unavailable { op },
            _ => Error::Io { op, source },
        }
    }

    /// The errno behind this error, when there is one (for exit-status mapping).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { .. } => Some(libc::EPERM),
            Error::NetnsNotFound { .. } => Some(libc::ENOENT),
            Error::Exists { .. } => Some(libc::EEXIST),
            Error::NotFound { .. } => Some(libc::ENOENT),
            Error::Unavailable { .. } => Some(libc::EOPNOTSUPP),
            Error::Netns { source, .. }
            | Error::Kernel { source, .. }
            | Error::Io { source, .. } => source.raw_os_error(),
            Error::Decode { .. } => None,
            Error::InvalidInput { .. } => Some(libc::EINVAL),
        }
    }
}

//! Network namespaces: finding them (processes and /run/netns) and running a closure
//! inside one (a short-lived thread that `setns`es, so the caller's namespace is untouched).

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use serde::Serialize;

/// A network namespace and a path that reaches it.
#[derive(Clone, Debug, Serialize)]
pub struct Netns {
    pub inode: u32,
    /// Names under /run/netns that point at it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// True for the namespace ctscope itself runs in.
    pub current: bool,
    #[serde(skip)]
    pub path: PathBuf,
}

/// A path that leads to the listed namespace with this inode, if any.
pub fn path_of(inode: u32) -> Option<PathBuf> {
    list()
        .into_iter()
        .find(|n| n.inode == inode)
        .map(|n| n.path)
}

/// Every namespace with a process in it or a name under /run/netns, sorted by inode.
pub fn list() -> Vec<Netns> {
    let current = fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino() as u32)
        .ok();
    let mut found: BTreeMap<u32, Netns> = BTreeMap::new();
    let mut add = |path: PathBuf, name: Option<String>| {
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        let inode = meta.ino() as u32;
        let entry = found.entry(inode).or_insert_with(|| Netns {
            inode,
            names: Vec::new(),
            current: current == Some(inode),
            path: path.clone(),
        });
        if let Some(name) = name {
            entry.names.push(name);
        }
    };
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            add(e.path(), Some(e.file_name().to_string_lossy().into_owned()));
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                add(e.path().join("ns/net"), None);
            }
        }
    }
    found.into_values().collect()
}

/// Runs `f` in a thread that has joined the network namespace at `path`.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = File::open(path)?;
    std::thread::spawn(move || -> io::Result<T> {
        // SAFETY: setns on a namespace fd we own; it only changes this (new) thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// `nf_conntrack_count` as seen from inside the namespace at `path` (None without conntrack).
pub fn conntrack_count(path: &Path) -> Option<u64> {
    run_in(path, || {
        fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .ok()
    .flatten()
}

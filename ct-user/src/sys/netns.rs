//! Network namespaces: finding them (processes and /run/netns), resolving what `--netns`
//! names (one resolver and one set of errors for every command), and running a closure
//! inside one (a short-lived thread that `setns`es, so the caller's namespace is untouched).

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::workload::Workload;
use crate::sys::caps::{self, Cap, Caps};

/// What to give `--netns`, for error messages.
const FORMS: &str = "give a name from `ip netns list`, a /proc/PID/ns/net path or an inode \
                     from `ctscope count --all-netns`";

/// `ioctl(NS_GET_NSTYPE)`: the namespace type of an nsfs file (linux/nsfs.h, `_IO(0xb7, 3)`).
const NS_GET_NSTYPE: u32 = 0xb703;

/// The namespace a `--netns` argument names.
#[derive(Clone, Debug)]
pub struct Named {
    pub path: PathBuf,
    pub inode: u32,
    /// ctscope's own namespace: nothing to enter.
    pub current: bool,
}

/// Why a `--netns` argument names no namespace ctscope can use.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown network namespace {arg:?}: {why}; {}", FORMS)]
    Unknown { arg: String, why: String },
    #[error("{} is not a network namespace; {}", shown(arg, path), FORMS)]
    NotNetns { arg: String, path: PathBuf },
    #[error("network namespace {}: permission denied: {need}", shown(arg, path))]
    Denied {
        arg: String,
        path: PathBuf,
        need: String,
    },
    #[error("network namespace {}: {source}", shown(arg, path))]
    Io {
        arg: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// `"ARG"`, with the path it led to when that reads differently.
fn shown(arg: &str, path: &Path) -> String {
    if Path::new(arg) == path {
        format!("{arg:?}")
    } else {
        format!("{arg:?} ({})", path.display())
    }
}

impl ResolveError {
    /// A wrong argument (exit 2) rather than a failure to reach a real namespace (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Unknown { .. } | Self::NotNetns { .. })
    }
}

/// `--netns ARG`: a name under /run/netns, a path (with a `/`), or the inode of a listed
/// namespace (all digits and no such name). The file must be a network namespace.
pub fn resolve(arg: &str) -> Result<Named, ResolveError> {
    let path = ct_netlink::netns_path(arg);
    if !arg.contains('/')
        && fs::symlink_metadata(&path).is_err()
        && let Ok(inode) = arg.parse::<u32>()
    {
        return by_inode(arg, inode);
    }
    open_named(arg, path)
}

fn by_inode(arg: &str, inode: u32) -> Result<Named, ResolveError> {
    if let Some(path) = path_of(inode) {
        return open_named(arg, path);
    }
    let mut why = format!("no process and no name under /run/netns is in namespace {inode}");
    if !Caps::current().has(Cap::SysPtrace) {
        why += " that ctscope can see (without CAP_SYS_PTRACE it cannot see the namespaces \
                of processes with capabilities it lacks)";
    }
    Err(ResolveError::Unknown {
        arg: arg.into(),
        why,
    })
}

/// Opens `path` and checks it is a network namespace.
fn open_named(arg: &str, path: PathBuf) -> Result<Named, ResolveError> {
    // O_NONBLOCK: a FIFO given by mistake must not hang the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(e) => return Err(open_error(arg, path, e)),
    };
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which `file` keeps
    // open for the call; on a file outside nsfs it fails with ENOTTY.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(ResolveError::NotNetns {
            arg: arg.into(),
            path,
        });
    }
    let inode = file
        .metadata()
        .map_err(|source| ResolveError::Io {
            arg: arg.into(),
            path: path.clone(),
            source,
        })?
        .ino() as u32;
    Ok(Named {
        current: own_inode() == Some(inode),
        path,
        inode,
    })
}

fn open_error(arg: &str, path: PathBuf, e: io::Error) -> ResolveError {
    let arg = arg.to_owned();
    match e.kind() {
        io::ErrorKind::NotFound => ResolveError::Unknown {
            why: format!("{} does not exist", path.display()),
            arg,
        },
        io::ErrorKind::PermissionDenied => {
            let ptrace = Caps::current().has(Cap::SysPtrace);
            let need = match (path.starts_with("/proc"), ptrace) {
                (true, false) => {
                    "another process's namespace needs CAP_SYS_PTRACE when that process holds \
                     capabilities ctscope lacks"
                }
                (true, true) => {
                    "the kernel refused it despite CAP_SYS_PTRACE (a process in another user \
                     namespace, or a security module's policy)"
                }
                (false, _) => "run ctscope as root",
            };
            ResolveError::Denied {
                arg,
                path,
                need: need.into(),
            }
        }
        _ => ResolveError::Io {
            arg,
            path,
            source: e,
        },
    }
}

/// The inode of ctscope's own network namespace.
pub fn own_inode() -> Option<u32> {
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino() as u32)
        .ok()
}

/// A network namespace and a path that reaches it.
#[derive(Clone, Debug, Serialize)]
pub struct Netns {
    pub inode: u32,
    /// Names under /run/netns that point at it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// True for the namespace ctscope itself runs in.
    pub current: bool,
    /// A process inside, whose cgroup says who lives there ([`Netns::workload`]).
    #[serde(skip)]
    pub member: Option<u32>,
    #[serde(skip)]
    pub path: PathBuf,
}

impl Netns {
    /// Who lives there (host, container, pod and its name). Read when asked for, not by [`list`]:
    /// the agent lists namespaces every dump round and needs none of it.
    pub fn workload(&self) -> Workload {
        Workload::of(self.inode, self.member).named()
    }

    /// How the JSON outputs tag what they print of it.
    pub fn tag(&self) -> Tag {
        Tag {
            netns: self.inode,
            who: self.who(),
        }
    }

    fn who(&self) -> Who {
        Who {
            names: self.names.clone(),
            workload: self.workload(),
        }
    }
}

/// A namespace as the JSON outputs name it, flattened into their objects: its inode, then
/// [`Who`].
#[derive(Clone, Debug, Serialize)]
pub struct Tag {
    pub netns: u32,
    #[serde(flatten)]
    pub who: Who,
}

/// A namespace's names under /run/netns and who lives there.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Who {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(flatten)]
    pub workload: Workload,
}

/// The [`Who`] of namespaces known by inode only (events, rows of the agent's answers),
/// read once each: a miss lists the namespaces once and keeps every one found.
#[derive(Default)]
pub struct Tags(BTreeMap<u32, Option<Known>>);

/// One namespace's [`Who`], and its fields as JSON to add to an object: `,"names":...`,
/// or nothing when nothing is known.
struct Known {
    who: Who,
    fields: Vec<u8>,
}

impl Known {
    fn new(who: Who) -> Self {
        let object = serde_json::to_vec(&who).unwrap_or_default();
        // `{}` when empty, else `{"names":...}`: everything but the braces.
        let fields = match object.get(1..object.len().saturating_sub(1)) {
            Some(inner) if !inner.is_empty() => [b",", inner].concat(),
            _ => Vec::new(),
        };
        Known { who, fields }
    }
}

impl Tags {
    fn known(&mut self, inode: u32) -> Option<&Known> {
        if !self.0.contains_key(&inode) {
            for ns in list() {
                self.0
                    .entry(ns.inode)
                    .or_insert_with(|| Some(Known::new(ns.who())));
            }
            self.0.entry(inode).or_insert(None);
        }
        self.0.get(&inode)?.as_ref()
    }

    /// Who is in `inode`; `None` when no process or name is in it (any more).
    pub fn get(&mut self, inode: u32) -> Option<&Who> {
        self.known(inode).map(|k| &k.who)
    }

    /// Adds who is in `inode` at the end of `object`, a serialized JSON object (`{...}`,
    /// nothing after it): the fields before stay as they were, in their order.
    pub fn add_to_object(&mut self, object: &mut Vec<u8>, inode: u32) {
        let Some(known) = self.known(inode) else {
            return;
        };
        if known.fields.is_empty() || object.last() != Some(&b'}') {
            return;
        }
        object.pop();
        object.extend_from_slice(&known.fields);
        object.push(b'}');
    }

    /// A JSON Lines line (what the agent sent) with who is in its `netns` added; a line
    /// without `netns` (a `lost` record) is left as it is.
    pub fn add_to_line(&mut self, line: &[u8]) -> serde_json::Result<Vec<u8>> {
        #[derive(Deserialize)]
        struct Of {
            netns: Option<u32>,
        }
        let Of { netns } = serde_json::from_slice(line)?;
        let mut out = line.trim_ascii_end().to_vec();
        if let Some(inode) = netns {
            self.add_to_object(&mut out, inode);
        }
        out.push(b'\n');
        Ok(out)
    }
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
    let current = own_inode();
    let mut found: BTreeMap<u32, Netns> = BTreeMap::new();
    // A process in each namespace, whose cgroup says who lives there.
    let mut members: BTreeMap<u32, u32> = BTreeMap::new();
    let mut add = |path: PathBuf, name: Option<String>, pid: Option<u32>| {
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        let inode = meta.ino() as u32;
        let entry = found.entry(inode).or_insert_with(|| Netns {
            inode,
            names: Vec::new(),
            current: current == Some(inode),
            member: None,
            path: path.clone(),
        });
        if let Some(name) = name {
            entry.names.push(name);
        }
        if let Some(pid) = pid {
            members.entry(inode).or_insert(pid);
        }
    };
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            add(
                e.path(),
                Some(e.file_name().to_string_lossy().into_owned()),
                None,
            );
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
                add(e.path().join("ns/net"), None, Some(pid));
            }
        }
    }
    for ns in found.values_mut() {
        ns.member = members.get(&ns.inode).copied();
    }
    found.into_values().collect()
}

/// The listed namespaces ctscope can enter: only its own without CAP_SYS_ADMIN.
pub fn enterable() -> Vec<Netns> {
    let mut listed = list();
    if !Caps::current().has(Cap::SysAdmin) {
        listed.retain(|ns| ns.current);
    }
    listed
}

/// Like [`enterable`], after a warning about what is out of reach: without CAP_SYS_ADMIN
/// `skipped(n)` says what becomes of the n others; else without CAP_SYS_PTRACE some
/// namespaces are not even listed.
pub fn enterable_warned(skipped: impl FnOnce(usize) -> String) -> Vec<Netns> {
    let mut listed = list();
    let others = listed.iter().filter(|ns| !ns.current).count();
    if others > 0 && caps::warn_without(Cap::SysAdmin, &skipped(others)) {
        listed.retain(|ns| ns.current);
    } else {
        caps::warn_without(
            Cap::SysPtrace,
            "namespaces of processes with capabilities ctscope lacks are not seen",
        );
    }
    listed
}

pub use ct_netlink::run_in;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_forms_of_one_namespace() {
        let own = own_inode().expect("/proc/self/ns/net");
        for arg in ["/proc/self/ns/net", &own.to_string()] {
            let named = resolve(arg).unwrap_or_else(|e| panic!("{arg}: {e}"));
            assert_eq!((named.inode, named.current), (own, true), "{arg}");
        }
    }

    #[test]
    fn who_is_added_at_the_end_of_an_agent_line() {
        let who = Who {
            names: vec!["blue".into()],
            workload: Workload {
                host: true,
                ..Workload::default()
            },
        };
        let mut tags = Tags(BTreeMap::from([
            (7, Some(Known::new(who))),
            (8, Some(Known::new(Who::default()))),
            (9, None),
        ]));
        let line = tags
            .add_to_line(b"{\"z\":1,\"netns\":7,\"a\":[]}\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"z\":1,\"netns\":7,\"a\":[],\"names\":[\"blue\"],\"host\":true}\n"
        );
        for plain in ["{\"netns\":8}", "{\"netns\":9}", "{\"kind\":\"lost\"}"] {
            let line = tags.add_to_line(plain.as_bytes()).unwrap();
            assert_eq!(line, format!("{plain}\n").as_bytes(), "left as it was");
        }
        assert!(tags.add_to_line(b"not json\n").is_err());
    }

    #[test]
    fn wrong_arguments_are_usage_errors() {
        for arg in [
            "ctscope-no-such-ns",
            "1",
            "/etc/passwd",
            "/",
            "/proc/self/ns/uts",
        ] {
            let err = resolve(arg).expect_err(arg);
            assert!(err.is_usage(), "{arg}: {err}");
            assert!(err.to_string().contains(arg), "{arg} named: {err}");
        }
    }
}

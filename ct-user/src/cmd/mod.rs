//! One module per subcommand; each returns `anyhow::Result` and the binary maps errors
//! to exit codes. The table commands (list, count, stats, delete, flush, get, insert,
//! update, expect) share
//! [`Target`]: which namespace they talk to, and how ctnetlink errors read.
pub mod count;
pub mod delete;
pub mod diagnose;
pub mod entry;
pub mod events;
pub mod expect;
pub mod flush;
pub mod list;
pub mod probe;
pub mod stats;
pub mod timeouts;
pub mod top;
pub mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use ct_netlink::Conntrack;

use crate::{
    agent::{
        self,
        protocol::{NsCensus, Request, Scope},
    },
    cli::{AgentArgs, NetnsArgs},
    diagnose::census::Census,
    sys::caps::{self, Cap},
    sys::netns,
    sys::sysctl,
};

/// `--ready-file`: creates a new file saying `ready`. It never replaces or follows what is
/// there (a root agent must not overwrite a file a wrong path names).
pub fn create_ready_file(path: Option<&Path>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let Some(path) = path else { return Ok(()) };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "--ready-file {} exists: ctscope creates a new file and overwrites nothing; \
                 remove it or give a path that does not exist",
                path.display()
            ),
            _ => anyhow::anyhow!("creating --ready-file {}: {e}", path.display()),
        })?;
    file.write_all(b"ready\n")?;
    Ok(())
}

/// A namespace a table command talks to.
#[derive(Debug)]
pub struct Target {
    /// None: ctscope's own namespace.
    path: Option<PathBuf>,
    /// How messages name it.
    label: String,
    /// Set with --all-netns: the namespace results are tagged with.
    pub tag: Option<netns::Netns>,
}

impl Target {
    /// The namespace this target talks to, as listed (names, workload), if it is.
    pub fn listed(&self, inode: u64) -> Option<netns::Netns> {
        if let Some(ns) = &self.tag {
            return Some(ns.clone());
        }
        netns::list()
            .into_iter()
            .find(|n| u64::from(n.inode) == inode)
    }

    /// `--netns NS` (a name, a path or an inode), or ctscope's own namespace.
    pub fn one(arg: Option<&str>) -> anyhow::Result<Self> {
        let own = Target {
            path: None,
            label: "this network namespace".into(),
            tag: None,
        };
        let Some(arg) = arg else {
            return Ok(own);
        };
        let named = netns::resolve(arg)?;
        Ok(Target {
            path: (!named.current).then_some(named.path),
            label: format!("network namespace {arg:?}"),
            ..own
        })
    }

    /// Every namespace with --all-netns (only ctscope's own without CAP_SYS_ADMIN, with a
    /// warning), else the one `--netns` names.
    pub fn from_args(args: &NetnsArgs) -> anyhow::Result<Vec<Self>> {
        if !args.all_netns {
            return Ok(vec![Self::one(args.netns.as_deref())?]);
        }
        let listed = netns::enterable_warned(|others| {
            format!("only ctscope's own network namespace is read ({others} others skipped)")
        });
        Ok(listed
            .into_iter()
            .map(|ns| Target {
                path: (!ns.current).then(|| ns.path.clone()),
                label: format!("network namespace {}", ns.inode),
                tag: Some(ns),
            })
            .collect())
    }

    /// An error naming the capability this target needs and ctscope lacks: CAP_NET_ADMIN
    /// for ctnetlink (`netlink`), CAP_SYS_ADMIN to enter another namespace.
    fn check_caps(&self, netlink: bool) -> anyhow::Result<()> {
        if netlink {
            caps::require(&[Cap::NetAdmin], "ctnetlink (the conntrack table)")?;
        }
        if self.path.is_some() {
            caps::require(&[Cap::SysAdmin], &format!("entering {}", self.label))?;
        }
        Ok(())
    }

    /// The namespace's path; `None` for ctscope's own.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The inode of the namespace this target talks to.
    pub fn inode(&self) -> anyhow::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        if let Some(ns) = &self.tag {
            return Ok(u64::from(ns.inode));
        }
        let path = self.path().unwrap_or(Path::new("/proc/self/ns/net"));
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("stat {}: {e}", path.display()))?;
        Ok(meta.ino())
    }

    /// The namespace's conntrack sysctls, read inside it. `Ok(None)` (after a warning)
    /// when iterating all namespaces and this one has vanished since it was listed.
    pub fn sysctls(&self) -> anyhow::Result<Option<BTreeMap<String, u64>>> {
        self.check_caps(false)?;
        match sysctl::conntrack(self.path()) {
            Ok(sysctls) => Ok(Some(sysctls)),
            Err(e) if self.tag.is_some() && vanished(&e) => {
                eprintln!("ctscope: warning: skipping {}: {e:#}", self.label);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens ctnetlink in the namespace and runs `op`. `Ok(None)` (after a warning) when
    /// iterating all namespaces and this one has no ctnetlink or has vanished.
    pub async fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut Conntrack) -> ct_netlink::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        self.check_caps(true)?;
        let opened = match &self.path {
            Some(p) => Conntrack::open_in_netns(p),
            None => Conntrack::open(),
        };
        let result = match opened {
            Ok(mut ct) => op(&mut ct).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.tag.is_some() && skippable(&e) => {
                eprintln!("ctscope: warning: skipping {}: {e}", self.label);
                Ok(None)
            }
            Err(e) => Err(explain(&self.label, e)),
        }
    }
}

/// The namespaces a request to the agent covers: `--all-netns`, `--netns NS` or
/// ctscope's own.
pub fn agent_scope(args: &NetnsArgs) -> anyhow::Result<Scope> {
    if args.all_netns {
        return Ok(Scope::All);
    }
    Ok(Scope::Netns(netns_inode(args.netns.as_deref())?))
}

/// The tables of `targets` as a running agent (`ctscope watch`) counted them, by
/// namespace inode: those it knows. Empty with --no-agent or no agent; an agent that
/// does not answer is warned about, and the caller dumps instead.
pub async fn agent_census(
    agent: &AgentArgs,
    targets: &[Target],
) -> anyhow::Result<HashMap<u64, Census>> {
    let Some(path) = agent.socket() else {
        return Ok(HashMap::new());
    };
    let netns = targets
        .iter()
        .map(|t| Ok(t.inode()? as u32))
        .collect::<anyhow::Result<_>>()?;
    let asked = async {
        let Some(mut body) = agent::client::ask(&path, &Request::Census { netns }).await? else {
            return Ok(Vec::new());
        };
        agent::client::json_lines::<NsCensus>(&mut body).await
    };
    match asked.await {
        Ok(lines) => Ok(lines
            .into_iter()
            .filter_map(|ns| Some((u64::from(ns.netns), ns.census?)))
            .collect()),
        Err(e) => {
            eprintln!("ctscope: warning: dumping the table instead of asking the agent: {e:#}");
            Ok(HashMap::new())
        }
    }
}

/// Says on stderr whose table figures a report shows when the agent gave some:
/// `counted` of `reported` namespaces came from its table, the others from a dump.
pub fn say_census_source(counted: usize, reported: usize) {
    match counted {
        0 => {}
        n if n == reported => {
            eprintln!("ctscope: table figures from the agent's table (--no-agent dumps it).")
        }
        n => eprintln!(
            "ctscope: table figures from the agent's table for {n} of {reported} namespaces, \
             the others dumped (--no-agent dumps all)."
        ),
    }
}

/// The inode of `--netns NS`, or of ctscope's own namespace.
pub fn netns_inode(arg: Option<&str>) -> anyhow::Result<u32> {
    match arg {
        Some(arg) => Ok(netns::resolve(arg)?.inode),
        None => netns::own_inode().context("ctscope's own network namespace: /proc/self/ns/net"),
    }
}

/// Errors that mean "no ctnetlink here" rather than "ctscope cannot work".
fn skippable(e: &ct_netlink::Error) -> bool {
    use ct_netlink::Error as E;
    match e {
        E::Unavailable { .. } | E::NetnsNotFound { .. } => true,
        // A process's namespace can vanish between listing and entering it.
        E::Netns { source, .. } => source.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// An error from a path that no longer exists (a process and its namespace are gone).
fn vanished(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::NotFound)
}

/// A ctnetlink error with what to do about it.
fn explain(label: &str, e: ct_netlink::Error) -> anyhow::Error {
    let denied = matches!(e.errno(), Some(libc::EPERM | libc::EACCES));
    if denied {
        anyhow::anyhow!(
            "{label}: {e}: run ctscope as root or with CAP_NET_ADMIN (and CAP_SYS_ADMIN to \
             enter another namespace)"
        )
    } else {
        anyhow::Error::new(e).context(label.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_file_overwrites_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ready = dir.join("ready");
        create_ready_file(Some(&ready)).unwrap();
        assert_eq!(std::fs::read_to_string(&ready).unwrap(), "ready\n");
        let kept = dir.join("kept");
        std::fs::write(&kept, "data\n").unwrap();
        let err = create_ready_file(Some(&kept)).unwrap_err();
        assert!(err.to_string().contains("overwrites nothing"), "{err}");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&kept, &link).unwrap();
        assert!(create_ready_file(Some(&link)).is_err());
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "data\n");
        create_ready_file(None).unwrap();
    }
}

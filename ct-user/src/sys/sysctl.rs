//! conntrack's sysctls (`/proc/sys/net/netfilter/nf_conntrack_*`), read from inside a
//! network namespace: most are per namespace, and /proc/sys/net shows the namespace of
//! the thread that reads it.

use std::{collections::BTreeMap, fs, io, path::Path};

use anyhow::{Context as _, bail};

use crate::sys::netns;

const DIR: &str = "/proc/sys/net/netfilter";

/// Every numeric `nf_conntrack_*` sysctl of the namespace at `path` (`None`: ctscope's own).
pub fn conntrack(path: Option<&Path>) -> anyhow::Result<BTreeMap<String, u64>> {
    let read = match path {
        Some(p) => netns::run_in(p, read_dir)
            .with_context(|| format!("enter network namespace {}", p.display()))?,
        None => read_dir(),
    };
    let sysctls = read.with_context(|| format!("read {DIR}"))?;
    if !sysctls.contains_key("nf_conntrack_count") {
        bail!("no {DIR}/nf_conntrack_count: conntrack is not loaded (modprobe nf_conntrack)");
    }
    Ok(sysctls)
}

fn read_dir() -> io::Result<BTreeMap<String, u64>> {
    let mut sysctls = BTreeMap::new();
    for e in fs::read_dir(DIR)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("nf_conntrack_") {
            continue;
        }
        // Unreadable or non-numeric entries are not evidence.
        if let Some(v) = read_number(&e.path()) {
            sysctls.insert(name, v);
        }
    }
    Ok(sysctls)
}

/// One numeric conntrack sysctl of ctscope's own namespace (e.g. `nf_conntrack_max`).
pub fn own(name: &str) -> Option<u64> {
    read_number(&Path::new(DIR).join(name))
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

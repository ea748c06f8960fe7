//! apt-get and dpkg: what `setup` installs and `kernels` downloads go through here.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

fn apt_installed(package: &str) -> bool {
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${db:Status-Abbrev}", package]);
    cmd::output(&mut query).is_ok_and(|s| s.starts_with("ii"))
}

/// Where apt looks for packages: the machine's own sources, or a Debian suite the machine
/// does not list (bullseye on a bookworm host), read through apt lists of its own in
/// `dir` so that /etc/apt and the machine's lists stay untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repo {
    System,
    Private {
        dir: PathBuf,
        /// sources.list lines.
        sources: &'static str,
    },
}

impl Repo {
    /// `program` (apt-get or apt-cache) reading this repository's lists.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        if let Repo::Private { dir, .. } = self {
            let opt = |key: &str, value: PathBuf| format!("{key}={}", value.display());
            command.args([
                "-o",
                &opt("Dir::Etc::SourceList", dir.join("sources.list")),
                "-o",
                "Dir::Etc::SourceParts=/dev/null",
                "-o",
                &opt("Dir::State::Lists", dir.join("lists")),
                "-o",
                &opt("Dir::Cache", dir.join("cache")),
            ]);
        }
        command
    }

    /// Writes the private sources and the directories apt expects to find.
    fn prepare(&self) -> Result<()> {
        let Repo::Private { dir, sources } = self else {
            return Ok(());
        };
        for sub in ["lists/partial", "cache/archives/partial"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        fs::write(dir.join("sources.list"), sources)?;
        Ok(())
    }
}

/// apt-get, run as root, with `apt-get update` at most once per repository and xtask run,
/// and only when something is about to be installed or downloaded.
#[derive(Default)]
pub struct Apt {
    updated: Vec<Repo>,
}

impl Apt {
    pub fn update(&mut self) -> Result<()> {
        self.update_repo(&Repo::System)
    }

    pub fn update_repo(&mut self, repo: &Repo) -> Result<()> {
        if self.updated.contains(repo) {
            return Ok(());
        }
        repo.prepare()?;
        let mut update = match repo {
            Repo::System => cmd::as_root("apt-get"),
            // Lists of our own, in a directory we own: no root needed, and as root apt
            // would drop to user _apt, who cannot write there.
            Repo::Private { .. } => {
                let mut c = repo.command("apt-get");
                c.args(["-o", "APT::Sandbox::User=root"]);
                c
            }
        };
        cmd::run(update.args(["update", "-q"]))?;
        self.updated.push(repo.clone());
        Ok(())
    }

    pub fn install(&mut self, packages: &[&str]) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        self.update()?;
        let mut get = cmd::as_root("apt-get");
        get.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages);
        cmd::run(&mut get)
    }
}

/// The packages of `packages` that are not installed.
pub fn absent<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .filter(|p| !apt_installed(p))
        .copied()
        .collect()
}

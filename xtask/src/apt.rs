//! apt-get and dpkg: what `setup` installs and `kernels` downloads go through here.

use std::process::Command;

use anyhow::Result;

use crate::cmd;

fn apt_installed(package: &str) -> bool {
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${db:Status-Abbrev}", package]);
    cmd::output(&mut query).is_ok_and(|s| s.starts_with("ii"))
}

/// apt-get, run as root, with `apt-get update` at most once per xtask run and only when
/// something is about to be installed or downloaded.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    pub fn update(&mut self) -> Result<()> {
        if !self.updated {
            cmd::run(cmd::as_root("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
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

//! `--workload`: what makes the new flows, and the namespaces it runs in.
//!
//! - `flood`: ct-flood, one UDP datagram per flow (the set-up in [`super::host`]);
//! - [`http`]: wrk → nginx through a masquerading NAT namespace, one TCP connection per
//!   request;
//! - [`dns`]: dnsperf → dnsmasq, every query from a new source address and port.
//!
//! Each set-up names the namespace whose conntrack table the runs measure (listeners
//! attach there) and counts the entries it creates. [`daemon`] runs the servers.

mod daemon;
mod dns;
mod http;

use std::{path::Path, process::Command};

use anyhow::Result;
use clap::ValueEnum;
use ctscope_tests::netns::Netns;

use crate::cmd;

use super::host::{configure, entries};
use super::{Ctx, Options, Sender};

/// A warm-up run of http and dns: connections, caches and the servers' first requests.
const WARMUP_SECONDS: u32 = 2;
/// The nft counter of entries created, in the table each set-up adds (see [`count_created`]).
const CREATED: &str = "created";
/// The highest rate the table is sized for, per second of --duration.
const MAX_FLOWS_PER_SECOND: u64 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// ct-flood: one UDP datagram per new flow, from one socket, as fast as it can.
    Flood,
    /// wrk → nginx through a masquerading NAT namespace, one TCP connection per request
    /// (`Connection: close`); conntrack runs in the NAT namespace.
    Http,
    /// dnsperf → dnsmasq answering a local zone; every query leaves from a new source
    /// address and port; conntrack runs in the server's namespace (a stateful firewall).
    Dns,
}

impl Workload {
    /// What one unit of work is (one new flow each).
    pub(super) fn unit(self) -> &'static str {
        match self {
            Workload::Flood => "flows",
            Workload::Http => "requests",
            Workload::Dns => "queries",
        }
    }
}

/// The namespaces, servers and rules of one workload, removed on drop.
pub(super) enum Bed {
    Flood { client: Netns, _server: Netns },
    Http(http::Http),
    Dns(dns::Dns),
}

impl Bed {
    pub(super) fn new(opts: &Options, dir: &Path) -> Result<Bed> {
        Ok(match opts.workload {
            Workload::Flood => {
                let (client, server) = (Netns::new(), Netns::new());
                configure(&client, &server)?;
                Bed::Flood {
                    client,
                    _server: server,
                }
            }
            Workload::Http => Bed::Http(http::Http::new(dir)?),
            Workload::Dns => Bed::Dns(dns::Dns::new(dir)?),
        })
    }

    /// Where conntrack makes the entries the bench counts, and the listeners attach.
    pub(super) fn conntrack_ns(&self) -> &Netns {
        match self {
            Bed::Flood { client, .. } => client,
            Bed::Http(h) => h.conntrack_ns(),
            Bed::Dns(d) => d.conntrack_ns(),
        }
    }

    /// Entries created so far; a run's count is the difference. The flood's table only
    /// grows during a run, so its size says it; http reuses client ports of entries
    /// still in TIME_WAIT (conntrack replaces those), so it counts with nft.
    pub(super) fn created(&self) -> u64 {
        match self {
            Bed::Flood { client, .. } => entries(client),
            _ => read_created(self.conntrack_ns()),
        }
    }

    /// Entries a run may leave in the table (nf_conntrack_max is raised to hold them).
    pub(super) fn max_entries(&self, opts: &Options) -> u64 {
        match self {
            Bed::Flood { .. } => opts.flows,
            _ => u64::from(opts.duration) * MAX_FLOWS_PER_SECOND,
        }
    }

    /// One run of the workload (a short one for the warm-up).
    pub(super) fn drive(&self, ctx: &Ctx, warmup: bool) -> Result<Sender> {
        let seconds = match warmup {
            true => WARMUP_SECONDS.min(ctx.opts.duration),
            false => ctx.opts.duration,
        };
        match self {
            Bed::Flood { .. } => ctx.send(ctx.opts.flows, warmup),
            Bed::Http(h) => h.drive(seconds, warmup),
            Bed::Dns(d) => d.drive(seconds, warmup),
        }
    }

    /// What a run does, for the table's heading.
    pub(super) fn describe(&self, opts: &Options) -> String {
        match self {
            Bed::Flood { .. } => format!(
                "{} new UDP flows per run from one socket (ct-flood, sendmmsg batches of {})",
                opts.flows, opts.batch
            ),
            Bed::Http(_) => http::describe(opts.duration),
            Bed::Dns(_) => dns::describe(opts.duration),
        }
    }
}

/// A veth pair between two namespaces, addressed (`a.b.c.d/24`) and up.
fn veth(a: (&Netns, &str, &str), b: (&Netns, &str, &str)) -> Result<()> {
    let ip =
        |ns: &Netns, args: &[&str]| cmd::run(Command::new("ip").args(["-n", ns.name()]).args(args));
    let (peer_ns, peer) = (b.0.name(), b.1);
    ip(
        a.0,
        &[
            "link", "add", a.1, "type", "veth", "peer", "name", peer, "netns", peer_ns,
        ],
    )?;
    for (ns, dev, addr) in [a, b] {
        ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(ns, &["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// nft rules (inside an `ip ctbench` table) that count the entries conntrack is about to
/// confirm on `hook`: a chain late enough (priority 300) that nothing drops the packet
/// before the confirmation, and `ct status` not yet confirmed, so a retransmitted SYN
/// of an unanswered connection does not count twice.
fn count_created(hook: &str) -> String {
    format!(
        "add counter ip ctbench {CREATED}; \
         add chain ip ctbench created {{ type filter hook {hook} priority 300; policy accept; }}; \
         add rule ip ctbench created ct state new ct status & confirmed == 0 \
         counter name {CREATED}"
    )
}

/// The [`count_created`] counter's packets in `ns`.
fn read_created(ns: &Netns) -> u64 {
    let out = cmd::output(
        ns.command("nft")
            .args(["list", "counter", "ip", "ctbench", CREATED]),
    )
    .unwrap_or_default();
    packets(&out).unwrap_or(0)
}

/// `packets N` in `nft list counter`'s output.
fn packets(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counter_from_nft_list_counter() {
        let out =
            "table ip ctbench {\n\tcounter created {\n\t\tpackets 76120 bytes 4414960\n\t}\n}\n";
        assert_eq!(packets(out), Some(76120));
        assert_eq!(packets("table ip ctbench {\n}"), None);
    }
}

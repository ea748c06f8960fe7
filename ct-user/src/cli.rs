//! Command-line definitions (clap derive). Parsing only; resolving what the flags mean
//! against the system happens in the command modules.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{filter, loader::DEFAULT_RING_BYTES};

/// ctscope: watch Linux connection tracking (nf_conntrack) from inside the kernel.
///
/// Probes on conntrack's insert, confirm, destroy and early_drop paths stream every new
/// entry, every removal with its reason, and every insert failure with its cause.
/// Needs root (or CAP_BPF + CAP_PERFMON, and CAP_NET_ADMIN for ctnetlink).
#[derive(Debug, Parser)]
#[command(
    name = "ctscope",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 success, 1 error (the message says what to do), 2 usage error."
)]
pub struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "CTSCOPE_LOG")]
    pub log_level: log::LevelFilter,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what this kernel offers (BTF, kprobes, fentry, tracepoints, ring buffer,
    /// conntrack) and which tier and hooks ctscope would use, by trying them.
    Probe(ProbeArgs),
    /// Stream conntrack events: new, destroy (with reason), insert_failed (with cause),
    /// clash_resolved, table_full, early_drop, and lost (ring buffer overflow).
    Events(EventsArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// One JSON object per line instead of conntrack-style text.
    #[arg(long)]
    pub json: bool,

    /// Prefix text lines with the event's Unix time, like `conntrack -E -o timestamp`.
    #[arg(long, conflicts_with = "json")]
    pub timestamp: bool,

    /// Stop after printing N events.
    #[arg(long, short = 'c', value_name = "N")]
    pub count: Option<u64>,

    /// Stop after S seconds (fractions allowed).
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Ring buffer size in bytes: a power of two, at least 4096. Events that do not fit
    /// are counted and reported as `lost`.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES)]
    pub ring_size: u32,

    /// Create this file once the probes are attached (for scripts and tests).
    #[arg(long, hide = true, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Filters; every one given must match.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Only these kinds (comma-separated): new, destroy, insert_failed, clash_resolved,
    /// table_full, early_drop.
    #[arg(long, value_delimiter = ',', value_name = "KIND",
          value_parser = clap::builder::PossibleValuesParser::new(KINDS))]
    pub kind: Vec<String>,

    /// Only this network namespace: a name under /run/netns, a path such as
    /// /proc/PID/ns/net, or an inode number.
    #[arg(long, value_name = "NETNS", value_parser = filter::parse_netns)]
    pub netns: Option<u32>,

    /// Only this protocol: tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number.
    #[arg(long, short = 'p', value_name = "PROTO", value_parser = filter::parse_proto)]
    pub proto: Option<u8>,

    /// Only entries with this address at either end, in either direction.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<IpAddr>,

    /// Only this original-direction source address.
    #[arg(long, short = 's', value_name = "ADDR")]
    pub src: Option<IpAddr>,

    /// Only this original-direction destination address.
    #[arg(long, short = 'd', value_name = "ADDR")]
    pub dst: Option<IpAddr>,

    /// Only this port, as either original-direction port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Only this original-direction source port.
    #[arg(long, value_name = "PORT")]
    pub sport: Option<u16>,

    /// Only this original-direction destination port.
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,
}

pub const KINDS: [&str; 6] = [
    "new",
    "destroy",
    "insert_failed",
    "clash_resolved",
    "table_full",
    "early_drop",
];

impl FilterArgs {
    pub fn resolve(&self) -> filter::Filter {
        filter::Filter {
            kinds: self.kind.clone(),
            netns: self.netns,
            proto: self.proto,
            addr: self.addr,
            src: self.src,
            dst: self.dst,
            port: self.port,
            sport: self.sport,
            dport: self.dport,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn events_flags_parse() {
        let cli = Cli::try_parse_from([
            "ctscope",
            "events",
            "--json",
            "--count",
            "5",
            "--duration",
            "1.5",
            "-p",
            "udp",
            "--dport",
            "53",
            "--kind",
            "new,destroy",
        ])
        .unwrap();
        let Command::Events(args) = cli.command else {
            panic!("not events")
        };
        assert!(args.json);
        assert_eq!(args.count, Some(5));
        assert_eq!(args.filter.proto, Some(17));
        assert_eq!(args.filter.kind, vec!["new", "destroy"]);
        assert_eq!(args.filter.resolve().kinds, vec!["new", "destroy"]);
    }

    #[test]
    fn bad_values_are_rejected_with_a_hint() {
        let err = Cli::try_parse_from(["ctscope", "events", "--dport", "70000"]).unwrap_err();
        assert!(err.to_string().contains("70000"));
        let err = Cli::try_parse_from(["ctscope", "events", "-p", "bogus"]).unwrap_err();
        assert!(err.to_string().contains("unknown protocol"));
        let err = Cli::try_parse_from(["ctscope", "events", "--kind", "nope"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("insert_failed"),
            "lists the kinds: {err}"
        );
    }
}

//! Command-line definitions (clap derive). Parsing only; resolving what the flags mean
//! against the system happens in the command modules.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum, error::ErrorKind};
use ct_netlink::{Family, NatRange, Status, TcpState, Tuple, TupleFilter};

use crate::{bpf::loader::DEFAULT_RING_BYTES, event::RecordKind, pipeline::filter};

/// ctscope: watch Linux connection tracking (nf_conntrack) from inside the kernel.
///
/// Probes on conntrack's insert, confirm, destroy and early_drop paths stream every new
/// entry, every removal with its reason, and every insert failure with its cause.
/// Needs root, or: CAP_BPF + CAP_PERFMON for the probes, CAP_NET_ADMIN for ctnetlink,
/// CAP_SYS_ADMIN to enter other network namespaces (README: Privileges).
#[derive(Debug, Parser)]
#[command(
    name = "ctscope",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 success (also when stdout is closed early, as by `| head`), \
                  1 error (the message says what to do), 2 usage error."
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
    ///
    /// Runs without privileges too: then each tier says which capability it misses
    /// (CAP_BPF and CAP_PERFMON for tiers 1 and 2, CAP_NET_ADMIN for tier 3).
    ///
    /// Tier 1 puts each hook on fentry/fexit where the kernel allows it, else on a
    /// kprobe/kretprobe, and says which and why; CTSCOPE_NO_FENTRY=1 keeps it on kprobes.
    Probe(ProbeArgs),
    /// The agent: a live copy of every namespace's table, the cause of every
    /// insert_failed and drop, served to `list`, `get`, `stats` and `events`.
    ///
    /// Attaches the probes, seeds its table from ctnetlink dumps of every network
    /// namespace, applies the event stream, refreshes fields from dumps every --resync
    /// seconds and reseeds after any lost event. Shows table fill, rates and the latest
    /// insert_failed, table_full and early_drop with their causes; --headless runs it
    /// without the view (for services and tests). Listens on a root-only Unix socket.
    /// Says `ctscope: watching (tier N: ...; agent on SOCKET, ...)` on stderr when ready.
    Watch(WatchArgs),
    /// Stream conntrack events: new, destroy (with reason), insert_failed (with cause),
    /// clash_resolved, table_full, early_drop, and lost (ring buffer overflow, or at tier
    /// 3 a full netlink socket: `lost_kind` ctnetlink_overrun, counting the events
    /// dropped).
    ///
    /// Once the probes are attached (at tier 3, ctnetlink subscribed; or the agent
    /// answers), one line on stderr says
    /// `ctscope: watching (tier N: ...), Ctrl-C to stop`: events before it were not
    /// seen. `--log-level info` adds why this tier and what it sees.
    Events(EventsArgs),
    /// List the conntrack table in `conntrack -L` text or JSON: from the agent when one
    /// runs (with its extra fields), else through ctnetlink.
    List(ListArgs),
    /// Count the entries of the table (`conntrack -C`), per namespace with --all-netns.
    Count(CountArgs),
    /// Per-CPU conntrack counters (`conntrack -S`) and the table size and limit; with an
    /// agent running, also what its events explain of them and what is left unexplained.
    Stats(StatsArgs),
    /// Delete the entries matching the filters (`conntrack -D`); at least one filter.
    Delete(DeleteArgs),
    /// Delete every entry, or every entry of one family (`conntrack -F`).
    Flush(FlushArgs),
    /// conntrack(8) 1.4.7 syntax and behaviour: `ctscope conntrack -L -p tcp`, ...
    ///
    /// Everything after `conntrack` is parsed as conntrack parses it (`ctscope conntrack
    /// -h` prints conntrack's usage); output, summaries, messages and exit statuses are
    /// conntrack's (0 ok, 1 operation failed or nothing affected, 2 parameter problem).
    /// `alias conntrack='ctscope conntrack'` works. Extension: `--netns NS` runs the
    /// command in another network namespace. Not supported (exit 2, saying so):
    /// labels, -o xml/ktimestamp/labels, -I/-E/-S on expectations, NAT on -I.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Conntrack(ConntrackArgs),
    /// Show the entry with this original tuple (`conntrack -G`); exit 1 if there is none.
    Get(GetArgs),
    /// Create an entry (`conntrack -I`) and show it; exit 1 if the tuple is taken.
    Insert(InsertArgs),
    /// Change the timeout, mark, status or TCP state of the entry with this original
    /// tuple (`conntrack -U`) and show it; exit 1 if there is none.
    Update(UpdateArgs),
    /// The expectation table (`conntrack -L/-G/-D/-F expect`, `-C expect`).
    Expect(ExpectArgs),
    /// A one-shot report of findings (table fill and memory, hash load, drops, SNAT
    /// clashes, the DNS race, timeouts, helpers), each with its evidence and what to do.
    /// What the table holds comes from one dump, or from the agent's live table when one
    /// runs. Exit status 0 even with findings.
    Diagnose(DiagnoseArgs),
    /// Who fills the table: the top keys (source, destination, port, ...) of one dump, or
    /// of the agent's live table when one runs, with entry counts and shares.
    Top(TopArgs),
    /// Timeouts per namespace: the nf_conntrack_*timeout* sysctls next to what the table
    /// holds (entries and seconds left per protocol and state; from one dump, or from the
    /// agent's live table when one runs) and how long ended flows lived (from the agent),
    /// with warnings about timeouts that fill the table.
    Timeouts(TimeoutsArgs),
}

/// `ctscope conntrack ARGS...`: the raw conntrack arguments.
#[derive(Debug, Args)]
pub struct ConntrackArgs {
    /// conntrack(8) arguments, e.g. `-L -p udp --dport 53 -o extended`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..,
        value_name = "CONNTRACK_ARGS"
    )]
    pub args: Vec<String>,
}

/// The original tuple that names one entry (get, insert, update, expect get/delete).
#[derive(Debug, Args, Clone)]
pub struct TupleArgs {
    /// Protocol: tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number.
    #[arg(long, short = 'p', value_name = "PROTO", value_parser = filter::parse_proto)]
    pub proto: u8,

    /// Original source address.
    #[arg(long, short = 's', value_name = "ADDR")]
    pub src: IpAddr,

    /// Original destination address (same family as --src).
    #[arg(long, short = 'd', value_name = "ADDR")]
    pub dst: IpAddr,

    /// Original source port: needed for TCP, UDP, UDP-Lite, SCTP and DCCP (GRE: its
    /// key, optional); other protocols have none.
    #[arg(long, value_name = "PORT")]
    pub sport: Option<u16>,

    /// Original destination port (as --sport).
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,

    /// ICMP/ICMPv6 type.
    #[arg(long, value_name = "TYPE")]
    pub icmp_type: Option<u8>,

    /// ICMP/ICMPv6 code.
    #[arg(long, value_name = "CODE")]
    pub icmp_code: Option<u8>,

    /// ICMP/ICMPv6 identifier.
    #[arg(long, value_name = "ID")]
    pub icmp_id: Option<u16>,

    /// Conntrack zone (default 0).
    #[arg(long, short = 'w', value_name = "ZONE")]
    pub zone: Option<u16>,
}

impl TupleArgs {
    /// The ct-netlink tuple, or why the fields do not fit the protocol (a usage error:
    /// [`Cli::validate`] checks it before any command runs).
    pub fn tuple(&self) -> Result<Tuple, String> {
        use ct_netlink::proto;
        if Family::of(&self.src) != Family::of(&self.dst) {
            return Err("--src and --dst must be of one family (both IPv4 or both IPv6)".into());
        }
        let icmp = self.icmp_type.is_some() || self.icmp_code.is_some() || self.icmp_id.is_some();
        let p = self.proto;
        if matches!(p, proto::ICMP | proto::ICMPV6) {
            if self.sport.is_some() || self.dport.is_some() {
                return Err("ICMP has no ports: use --icmp-type/--icmp-code/--icmp-id".into());
            }
            return Ok(Tuple::icmp(
                self.src,
                self.dst,
                self.icmp_type.unwrap_or(8),
                self.icmp_code.unwrap_or(0),
                self.icmp_id.unwrap_or(0),
            ));
        }
        if icmp {
            return Err(format!(
                "--icmp-* need -p icmp or icmpv6, not {}",
                proto_label(p)
            ));
        }
        match (self.sport, self.dport) {
            (Some(sport), Some(dport)) if has_ports(p) || p == proto::GRE => {
                Ok(Tuple::ports(p, self.src, self.dst, sport, dport))
            }
            (None, None) if !has_ports(p) => Ok(Tuple {
                src_port: None,
                dst_port: None,
                ..Tuple::ports(p, self.src, self.dst, 0, 0)
            }),
            _ if has_ports(p) => Err(format!("{} needs both --sport and --dport", proto_label(p))),
            _ if p == proto::GRE => {
                Err("gre: give both --sport and --dport (its keys), or neither".into())
            }
            _ => Err(format!(
                "{} has no ports: give only -s and -d",
                proto_label(p)
            )),
        }
    }
}

/// Protocols whose tuple has a source and a destination port.
fn has_ports(p: u8) -> bool {
    use ct_netlink::proto;
    matches!(
        p,
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP
    )
}

/// `udp`, or `protocol 200` for one without a name.
fn proto_label(p: u8) -> String {
    match ct_netlink::proto::name(p) {
        "unknown" => format!("protocol {p}"),
        name => name.to_owned(),
    }
}

/// `--state` is a TCP state: refused on any other protocol.
fn check_state(proto: u8, state: Option<TcpState>) -> Result<(), String> {
    match state {
        Some(_) if proto != ct_netlink::proto::TCP => Err(format!(
            "--state takes a TCP state, but the entry is {}: drop --state or use -p tcp",
            proto_label(proto)
        )),
        _ => Ok(()),
    }
}

/// The longest `--duration` and `--resync`: ten years, far beyond any run and well
/// within what timers can hold (a larger value would overflow the deadline).
pub const MAX_SECONDS: f64 = 315_360_000.0;

/// Seconds in [0, MAX_SECONDS]; `zero_ok` lets 0 through.
fn parse_seconds(s: &str, zero_ok: bool) -> Result<f64, String> {
    let range = if zero_ok {
        format!("give 0 or seconds up to {MAX_SECONDS} (10 years)")
    } else {
        format!("give seconds above 0, up to {MAX_SECONDS} (10 years)")
    };
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds: {range}"))?;
    let fits = secs.is_finite() && secs <= MAX_SECONDS && (secs > 0.0 || zero_ok && secs == 0.0);
    if fits {
        Ok(secs)
    } else {
        Err(format!("{s} is out of range: {range}"))
    }
}

/// `--duration`: seconds, more than 0 and at most [`MAX_SECONDS`], fractions allowed.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    parse_seconds(s, false)
}

/// `--resync`: 0 (dumps only after losses) or seconds up to [`MAX_SECONDS`].
pub fn parse_resync(s: &str) -> Result<f64, String> {
    parse_seconds(s, true)
}

/// `--metrics`: an address and a port to listen on.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "{s:?} is not ADDR:PORT: give e.g. 127.0.0.1:18427, [::1]:18427, or 0.0.0.0:18427 \
             for every address"
        )
    })
}

/// `--ring-size`: what a BPF ring buffer can be, a power of two of at least a page.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let hint = "give a power of two of at least 4096 bytes, e.g. 16777216 (16 MiB)";
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        Ok(n) => Err(format!("{n} is not a ring buffer size: {hint}")),
        Err(_) => Err(format!("{s:?} is not a number of bytes: {hint}")),
    }
}

/// Status flag names (`SEEN_REPLY,ASSURED`, as in `conntrack -u`) to bits.
pub fn parse_status(s: &str) -> Result<u32, String> {
    s.split(',').try_fold(0, |acc, name| {
        Status::bit_from_name(name.trim())
            .map(|b| acc | b)
            .ok_or_else(|| {
                format!(
                    "unknown status {name:?}: use names like SEEN_REPLY, ASSURED, FIXED_TIMEOUT"
                )
            })
    })
}

/// A TCP state name (`ESTABLISHED`, `TIME_WAIT`, ...).
pub fn parse_tcp_state(s: &str) -> Result<TcpState, String> {
    TcpState::from_name(s).ok_or_else(|| {
        format!("unknown TCP state {s:?}: use SYN_SENT, ESTABLISHED, TIME_WAIT, CLOSE, ...")
    })
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub tuple: TupleArgs,

    /// One JSON object (the fields of `list --json`) instead of `conntrack -L` text.
    #[arg(long)]
    pub json: bool,

    /// The network namespace: a name under /run/netns, a /proc/PID/ns/net path, or an
    /// inode. Default: ctscope's own.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,

    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct InsertArgs {
    #[command(flatten)]
    pub tuple: TupleArgs,

    /// Seconds until the entry expires.
    #[arg(long, short = 't', value_name = "S", default_value_t = 120)]
    pub timeout: u32,

    /// Reply-direction source address (NAT-style entries); default: the original
    /// destination.
    #[arg(long, value_name = "ADDR", requires = "reply_dst")]
    pub reply_src: Option<IpAddr>,

    /// Reply-direction destination address; default: the original source.
    #[arg(long, value_name = "ADDR", requires = "reply_src")]
    pub reply_dst: Option<IpAddr>,

    /// Reply-direction source port; default: the original destination port.
    #[arg(long, value_name = "PORT")]
    pub reply_sport: Option<u16>,

    /// Reply-direction destination port; default: the original source port.
    #[arg(long, value_name = "PORT")]
    pub reply_dport: Option<u16>,

    /// Status flags, comma-separated (SEEN_REPLY, ASSURED, FIXED_TIMEOUT, ...).
    #[arg(long, short = 'u', value_name = "FLAGS", value_parser = parse_status)]
    pub status: Option<u32>,

    /// Connection mark.
    #[arg(long, short = 'm', value_name = "MARK", value_parser = parse_mark)]
    pub mark: Option<(u32, u32)>,

    /// TCP state (TCP only), e.g. ESTABLISHED.
    #[arg(long, value_name = "STATE", value_parser = parse_tcp_state)]
    pub state: Option<TcpState>,

    /// Source NAT: the kernel rewrites the reply destination to ADDR (and its port to
    /// PORT), as `conntrack -I --src-nat`. IPv6 with a port: `[ADDR]:PORT`.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_nat)]
    pub src_nat: Option<NatRange>,

    /// Destination NAT: the reply source becomes ADDR[:PORT], as `conntrack -I
    /// --dst-nat`.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_nat)]
    pub dst_nat: Option<NatRange>,

    /// Print the created entry as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// The network namespace: a name under /run/netns, a /proc/PID/ns/net path, or an
    /// inode. Default: ctscope's own.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub tuple: TupleArgs,

    /// New timeout in seconds.
    #[arg(long, short = 't', value_name = "S")]
    pub timeout: Option<u32>,

    /// New mark, or MARK/MASK to change only the bits of MASK.
    #[arg(long, short = 'm', value_name = "MARK[/MASK]", value_parser = parse_mark)]
    pub mark: Option<(u32, u32)>,

    /// Status flags to set, comma-separated (the kernel never clears SEEN_REPLY or
    /// ASSURED).
    #[arg(long, short = 'u', value_name = "FLAGS", value_parser = parse_status)]
    pub status: Option<u32>,

    /// New TCP state (TCP only).
    #[arg(long, value_name = "STATE", value_parser = parse_tcp_state)]
    pub state: Option<TcpState>,

    /// Print the updated entry as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// The network namespace: a name under /run/netns, a /proc/PID/ns/net path, or an
    /// inode. Default: ctscope's own.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExpectArgs {
    #[command(subcommand)]
    pub op: ExpectOp,

    /// The network namespace: a name under /run/netns, a /proc/PID/ns/net path, or an
    /// inode. Default: ctscope's own.
    #[arg(long, global = true, value_name = "NS")]
    pub netns: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ExpectOp {
    /// List expectations (`conntrack -L expect`).
    List {
        /// One JSON object per expectation and line.
        #[arg(long)]
        json: bool,
        /// Only this family.
        #[arg(long, short = 'f', value_enum)]
        family: Option<FamilyArg>,
    },
    /// Show the expectation with this expected tuple; exit 1 if there is none.
    Get {
        #[command(flatten)]
        tuple: TupleArgs,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete the expectation with this expected tuple; exit 1 if there is none.
    Delete {
        #[command(flatten)]
        tuple: TupleArgs,
    },
    /// Delete every expectation (of one family).
    Flush {
        #[arg(long, short = 'f', value_enum)]
        family: Option<FamilyArg>,
    },
    /// Number of expectations.
    Count {
        /// `{"count": N}` instead of the number.
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// Checks clap cannot express; a failure is a usage error (exit 2) with the
    /// subcommand's usage line.
    pub fn validate(&self) -> Result<(), clap::Error> {
        match &self.command {
            Command::List(a) => a.filter.check_families("list"),
            Command::Delete(a) if a.filter.is_empty() => Err(usage_error(
                &["delete"],
                ErrorKind::MissingRequiredArgument,
                "delete needs at least one filter (-p, -s, -d, --sport, --dport, --mark, \
                 --zone, -f); to delete every entry use `ctscope flush`",
            )),
            Command::Delete(a) => a.filter.check_families("delete"),
            Command::Get(a) => check_entry(&["get"], &a.tuple, None),
            Command::Insert(a) => a.check(),
            Command::Update(a) => check_entry(&["update"], &a.tuple, a.state),
            Command::Expect(a) => match &a.op {
                ExpectOp::Get { tuple, .. } => check_entry(&["expect", "get"], tuple, None),
                ExpectOp::Delete { tuple } => check_entry(&["expect", "delete"], tuple, None),
                _ => Ok(()),
            },
            Command::Events(a) => a.check_tier_kinds(),
            _ => Ok(()),
        }
    }
}

/// The tuple fits its protocol, and `--state` comes only with TCP.
fn check_entry(
    path: &[&str],
    tuple: &TupleArgs,
    state: Option<TcpState>,
) -> Result<(), clap::Error> {
    tuple
        .tuple()
        .and_then(|_| check_state(tuple.proto, state))
        .map_err(|msg| usage_error(path, ErrorKind::ArgumentConflict, msg))
}

impl InsertArgs {
    /// The tuple and `--state` fit the protocol, and `--src-nat`/`--dst-nat` are in the
    /// tuple's family.
    fn check(&self) -> Result<(), clap::Error> {
        check_entry(&["insert"], &self.tuple, self.state)?;
        let family = Family::of(&self.tuple.src);
        for nat in [self.src_nat, self.dst_nat].into_iter().flatten() {
            if Family::of(&nat.addr) != family {
                return Err(usage_error(
                    &["insert"],
                    ErrorKind::ValueValidation,
                    format!(
                        "NAT address {} is not in the entry's address family",
                        nat.addr
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl EventsArgs {
    /// `--tier 3` with a kind it cannot see would wait forever for nothing.
    fn check_tier_kinds(&self) -> Result<(), clap::Error> {
        let Some(tier) = self.tier else {
            return Ok(());
        };
        match tier.unseen_kinds(&self.filter.kind) {
            None => Ok(()),
            Some(msg) => Err(usage_error(
                &["events"],
                ErrorKind::ArgumentConflict,
                format!("{msg}: drop --tier, or ask for kinds it sees"),
            )),
        }
    }
}

/// A clap error in the style (and with the usage line) of the subcommand at `path`
/// (`["expect", "get"]`), so the usage shown is the one that was mistyped.
fn usage_error(path: &[&str], kind: ErrorKind, msg: impl std::fmt::Display) -> clap::Error {
    let mut cmd = Cli::command();
    cmd.build();
    error_in(&mut cmd, path, kind, msg)
}

fn error_in(
    cmd: &mut clap::Command,
    path: &[&str],
    kind: ErrorKind,
    msg: impl std::fmt::Display,
) -> clap::Error {
    if let Some((name, rest)) = path.split_first()
        && let Some(sub) = cmd.find_subcommand_mut(name)
    {
        return error_in(sub, rest, kind, msg);
    }
    cmd.error(kind, msg)
}

/// Where a table command looks: one namespace, or all of them.
#[derive(Debug, Args, Default)]
pub struct NetnsArgs {
    /// The network namespace to use: a name under /run/netns, a path such as
    /// /proc/PID/ns/net, or an inode. Default: ctscope's own.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,

    /// Every network namespace (of processes and under /run/netns), each result tagged
    /// with its namespace inode (in JSON also who lives there: names, container, pod UID,
    /// and the pod's name from the container runtime's CRI socket, $CTSCOPE_CRI_SOCKET
    /// else containerd's or CRI-O's); namespaces without ctnetlink are skipped.
    #[arg(long, conflicts_with = "netns")]
    pub all_netns: bool,
}

/// How table commands find the agent.
#[derive(Debug, Args, Default)]
pub struct AgentArgs {
    /// The agent's socket (default: $CTSCOPE_SOCKET, else /run/ctscope/agent.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Do not ask a running agent; read the kernel directly.
    #[arg(long, conflicts_with = "socket")]
    pub no_agent: bool,
}

impl AgentArgs {
    /// The socket to try, or `None` with --no-agent.
    pub fn socket(&self) -> Option<PathBuf> {
        (!self.no_agent).then(|| crate::agent::protocol::socket_path(self.socket.as_deref()))
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// No live view: run the agent for services and tests (logs go to stderr).
    #[arg(long)]
    pub headless: bool,

    /// Print the running agent's status (tier, entries per namespace, events, losses,
    /// reseeds, dumps) as one JSON object and exit; exit 1 if no agent answers. Takes
    /// only --socket: the agent's own flags are the running agent's business.
    #[arg(
        long,
        conflicts_with_all = ["headless", "resync", "ring_size", "tier", "ready_file", "metrics"]
    )]
    pub status: bool,

    /// Seconds between dumps that refresh entry fields (status, TCP state, timeouts
    /// refreshed by traffic) and catch namespaces created since; on huge tables stretched
    /// to 20 times what a round of the table as it is now costs. 0: only after losses. At most
    /// 315360000 (10 years).
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = parse_resync)]
    pub resync: f64,

    /// The socket to listen on (default: $CTSCOPE_SOCKET, else /run/ctscope/agent.sock).
    ///
    /// A missing directory is created 0700; one owned by another user (other than
    /// root) or writable by others without the sticky bit is refused. The agent removes
    /// nothing at PATH but a stale socket of its own (no agent answers on it): a regular
    /// file, directory, symlink or other file there is refused and left alone, and so is
    /// a socket an agent still answers on. On exit it removes its socket only if PATH
    /// still holds the one it bound.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Ring buffer size in bytes: a power of two, at least 4096. Events that do not fit
    /// are counted as lost and the table is reseeded from dumps.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES,
          value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Hook tier: 1 kprobes, 2 tracepoints only, 3 no BPF (ctnetlink events of its own
    /// namespace, dumps for the others). Default: the best this kernel allows.
    #[arg(long, value_enum, value_name = "N")]
    pub tier: Option<crate::bpf::loader::Tier>,

    /// Serve Prometheus metrics over HTTP at /metrics on ADDR:PORT (Prometheus text or
    /// OpenMetrics, as the scraper's Accept header asks). Without a value: 127.0.0.1:18427,
    /// loopback only; 0.0.0.0:18427 or [::]:18427 to be scraped from other hosts. README
    /// "Metrics" lists the series.
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1,
          default_missing_value = crate::agent::http::DEFAULT_ADDR,
          value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,

    /// Create this file once the table is seeded and the socket answers.
    #[arg(long, hide = true, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Bytes of unread one-shot answers the agent holds across clients, in MiB (tests
    /// and tuning; README "The socket").
    #[arg(long, hide = true, value_name = "MIB", default_value_t = (crate::agent::outbox::ANSWER_BUDGET >> 20) as u16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub answer_budget_mib: u16,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON object per entry and line instead of `conntrack -L` text. From the
    /// agent, each also has `netns`, `first_seen`, `birth_known`, `fields_from`,
    /// `fields_at` and `notes`.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub agent: AgentArgs,

    #[command(flatten)]
    pub filter: TableFilterArgs,

    #[command(flatten)]
    pub netns: NetnsArgs,
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub netns: NetnsArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// JSON (per-CPU objects and totals) instead of `conntrack -S` text. From the agent,
    /// `agent` adds `kernel` (increments since it started watching), `attributed` (by
    /// cause) and `unexplained`.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub agent: AgentArgs,

    #[command(flatten)]
    pub netns: NetnsArgs,
}

/// Which namespaces a report covers, and the agent that adds what only it knows.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub netns: NetnsArgs,

    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// One JSON object (`findings`, `evidence` per namespace) instead of text.
    #[arg(long)]
    pub json: bool,

    /// With an agent running, the table's composition is counted from its table instead
    /// of a dump (--no-agent dumps), and the insert_failed causes its events gave are
    /// evidence too.
    #[command(flatten)]
    pub from: ReportArgs,
}

#[derive(Debug, Args)]
pub struct TimeoutsArgs {
    /// One JSON object per namespace and line instead of text.
    #[arg(long)]
    pub json: bool,

    /// With an agent running, the entries and seconds left are counted from its table
    /// instead of a dump (--no-agent dumps), and lifetimes of ended flows come from it.
    #[command(flatten)]
    pub from: ReportArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Group entries by this key.
    #[arg(long, value_enum, default_value = "src")]
    pub by: crate::render::top::TopBy,

    /// Show the N biggest keys.
    #[arg(short = 'n', value_name = "N", default_value_t = 10)]
    pub n: usize,

    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub netns: NetnsArgs,

    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub filter: TableFilterArgs,

    /// The network namespace: a name under /run/netns, a /proc/PID/ns/net path, or an
    /// inode. Default: ctscope's own.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    /// Only entries of this family.
    #[arg(long, short = 'f', value_enum)]
    pub family: Option<FamilyArg>,

    /// The network namespace: a name under /run/netns, a /proc/PID/ns/net path, or an
    /// inode. Default: ctscope's own.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::Ipv4 => Family::Ipv4,
            FamilyArg::Ipv6 => Family::Ipv6,
        }
    }
}

/// Entry filters of `list` and `delete`; every one given must match.
#[derive(Debug, Args, Default)]
pub struct TableFilterArgs {
    /// Only this protocol: tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number.
    #[arg(long, short = 'p', value_name = "PROTO", value_parser = filter::parse_proto)]
    pub proto: Option<u8>,

    /// Only this original-direction source address.
    #[arg(long, short = 's', value_name = "ADDR")]
    pub src: Option<IpAddr>,

    /// Only this original-direction destination address.
    #[arg(long, short = 'd', value_name = "ADDR")]
    pub dst: Option<IpAddr>,

    /// Only this original-direction source port.
    #[arg(long, value_name = "PORT")]
    pub sport: Option<u16>,

    /// Only this original-direction destination port.
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,

    /// Only entries whose mark, masked, equals MARK: `MARK` or `MARK/MASK` (decimal or 0x).
    #[arg(long, short = 'm', value_name = "MARK[/MASK]", value_parser = parse_mark)]
    pub mark: Option<(u32, u32)>,

    /// Only this conntrack zone (0 is the default zone).
    #[arg(long, short = 'w', value_name = "ZONE")]
    pub zone: Option<u16>,

    /// Only this address family.
    #[arg(long, short = 'f', value_enum)]
    pub family: Option<FamilyArg>,
}

impl TableFilterArgs {
    pub fn is_empty(&self) -> bool {
        self.proto.is_none()
            && self.src.is_none()
            && self.dst.is_none()
            && self.sport.is_none()
            && self.dport.is_none()
            && self.mark.is_none()
            && self.zone.is_none()
            && self.family.is_none()
    }

    /// The family the filter implies (from -f or the addresses).
    fn families(&self) -> Vec<Family> {
        let addrs = [self.src, self.dst].into_iter().flatten();
        self.family
            .map(Family::from)
            .into_iter()
            .chain(addrs.map(|a| Family::of(&a)))
            .collect()
    }

    /// -f and the addresses must agree on the family, or nothing could match.
    fn check_families(&self, sub: &str) -> Result<(), clap::Error> {
        let fams = self.families();
        match fams.iter().find(|f| **f != fams[0]) {
            Some(_) => Err(usage_error(
                &[sub],
                ErrorKind::ArgumentConflict,
                "the family (-f) and the addresses (-s, -d) disagree: use one family",
            )),
            None => Ok(()),
        }
    }

    /// The ct-netlink filter (its family taken from -f or the addresses).
    pub fn tuple_filter(&self) -> TupleFilter {
        TupleFilter {
            family: self.families().first().copied(),
            proto: self.proto,
            orig_src: self.src,
            orig_dst: self.dst,
            orig_src_port: self.sport,
            orig_dst_port: self.dport,
            mark: self.mark,
            zone: self.zone,
            ..TupleFilter::default()
        }
    }
}

/// `--mark`: `MARK` (mask all ones) or `MARK/MASK`, each decimal or 0x-hex.
/// `ADDR`, `ADDR:PORT` or `[IPV6]:PORT` (`--src-nat`, `--dst-nat`).
pub fn parse_nat(s: &str) -> Result<NatRange, String> {
    let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
        let (a, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: no closing `]`"))?;
        match tail {
            "" => (a, None),
            t => (
                a,
                Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| format!("`{s}`: expected `:PORT` after `]`"))?,
                ),
            ),
        }
    } else {
        match s.split_once(':') {
            Some((a, p)) if !p.contains(':') => (a, Some(p)),
            _ => (s, None),
        }
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port (0-65535)"))
        })
        .transpose()?;
    Ok(NatRange { addr, port })
}

pub fn parse_mark(s: &str) -> Result<(u32, u32), String> {
    let num = |t: &str| {
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => t.parse(),
        };
        parsed.map_err(|_| {
            format!("bad mark {s:?}: use MARK or MARK/MASK (decimal or 0x hex, 32 bits)")
        })
    };
    match s.split_once('/') {
        Some((m, mask)) => Ok((num(m)?, num(mask)?)),
        None => Ok((num(s)?, u32::MAX)),
    }
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

    /// Stop after S seconds (fractions allowed; more than 0, at most 315360000 = 10
    /// years).
    #[arg(long, value_name = "S", value_parser = parse_duration)]
    pub duration: Option<f64>,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Ring buffer size in bytes: a power of two, at least 4096. Events that do not fit
    /// are counted and reported as `lost`.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES,
          value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Create this file once the probes are attached (for scripts and tests).
    #[arg(long, hide = true, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Hook tier: 1 kprobes (exact causes), 2 tracepoints only, 3 ctnetlink events
    /// (no BPF). Default: the best this kernel allows (`ctscope probe` explains it).
    /// Implies --no-agent.
    #[arg(long, value_enum, value_name = "N")]
    pub tier: Option<crate::bpf::loader::Tier>,

    /// Benchmark only (`cargo xtask bench`): tier 2 cut short, to show what each step
    /// costs a flow. `empty`: the programs return at once (the hooks' own cost; no
    /// events). `filter`: `new` reports stop after the first-seen filter. `ring`: each
    /// entry the filter passes reserves a ring record and discards it (the ring buffer's
    /// own cost). With `filter` and `ring` no `new` event is reported.
    #[arg(long, hide = true, value_enum, value_name = "STEP")]
    pub floor: Option<crate::bpf::loader::Floor>,

    /// Testing only: tier 2 reads each entry field in BPF instead of copying the entry
    /// whole, as it does on kernels whose `struct nf_conn` does not fit a raw record.
    #[arg(long, hide = true)]
    pub parsed_records: bool,

    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Filters; every one given must match.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Only these kinds (comma-separated): new, destroy, insert_failed, clash_resolved,
    /// table_full, early_drop, lost. `lost` records (events ctscope could not deliver)
    /// come whatever the filter; `--kind lost` shows only them. Tier 3 sees new,
    /// destroy and lost.
    #[arg(long, value_delimiter = ',', value_name = "KIND", value_enum)]
    pub kind: Vec<RecordKind>,

    /// Only this network namespace: a name under /run/netns, a path such as
    /// /proc/PID/ns/net, or an inode number.
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,

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

impl FilterArgs {
    /// The filter, with `--netns` resolved to its inode.
    pub fn resolve(&self) -> Result<filter::Filter, crate::sys::netns::ResolveError> {
        let netns = self
            .netns
            .as_deref()
            .map(crate::sys::netns::resolve)
            .transpose()?;
        Ok(filter::Filter {
            kinds: self.kind.clone(),
            netns: netns.map(|n| n.inode),
            proto: self.proto,
            addr: self.addr,
            src: self.src,
            dst: self.dst,
            port: self.port,
            sport: self.sport,
            dport: self.dport,
        })
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
        let kinds = [RecordKind::New, RecordKind::Destroy];
        assert_eq!(args.filter.kind, kinds);
        assert_eq!(args.filter.resolve().unwrap().kinds, kinds);
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

    #[test]
    fn table_filters_parse() {
        let cli = Cli::try_parse_from([
            "ctscope",
            "list",
            "--json",
            "-p",
            "udp",
            "-s",
            "10.0.0.1",
            "--dport",
            "53",
            "--mark",
            "0x10/0xf0",
            "--zone",
            "3",
            "--all-netns",
        ])
        .unwrap();
        cli.validate().unwrap();
        let Command::List(args) = cli.command else {
            panic!("not list")
        };
        assert!(args.json && args.netns.all_netns);
        let f = args.filter.tuple_filter();
        assert_eq!(f.proto, Some(17));
        assert_eq!(f.family, Some(Family::Ipv4), "implied by -s");
        assert_eq!(f.orig_dst_port, Some(53));
        assert_eq!(f.mark, Some((0x10, 0xf0)));
        assert_eq!(f.zone, Some(3));
    }

    #[test]
    fn ring_size_and_duration_out_of_range_are_usage_errors() {
        for args in [
            &["events", "--duration", "0"][..],
            &["events", "--duration", "-1"],
            &["events", "--duration", "nan"],
            &["events", "--ring-size", "1000"],
            &["events", "--ring-size", "2048"],
            &["watch", "--ring-size", "12288"],
        ] {
            let err = Cli::try_parse_from([&["ctscope"][..], args].concat()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
        let cli = Cli::try_parse_from(["ctscope", "events", "--ring-size", "4096"]).unwrap();
        assert!(matches!(cli.command, Command::Events(a) if a.ring_size == 4096));
    }

    #[test]
    fn marks() {
        assert_eq!(parse_mark("7"), Ok((7, u32::MAX)));
        assert_eq!(parse_mark("1/3"), Ok((1, 3)));
        assert!(parse_mark("x").is_err());
        assert!(parse_mark("1/0x100000000").is_err());
    }

    #[test]
    fn table_usage_errors() {
        let cli = Cli::try_parse_from(["ctscope", "delete", "--netns", "x"]).unwrap();
        let err = cli.validate().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("ctscope flush"), "{err}");
        let cli = Cli::try_parse_from(["ctscope", "list", "-f", "ipv6", "-s", "1.2.3.4"]).unwrap();
        assert_eq!(cli.validate().unwrap_err().exit_code(), 2);
        let err = Cli::try_parse_from(["ctscope", "delete", "--dport", "70000"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["ctscope", "delete", "--all-netns", "-p", "tcp"]);
        assert!(err.is_err(), "delete has no --all-netns");
        let err = Cli::try_parse_from(["ctscope", "list", "--netns", "a", "--all-netns"]);
        assert_eq!(err.unwrap_err().exit_code(), 2);
    }

    #[test]
    fn diagnose_and_top_parse() {
        let cli = Cli::try_parse_from(["ctscope", "top"]).unwrap();
        let Command::Top(args) = cli.command else {
            panic!("not top")
        };
        assert_eq!(
            (args.by, args.n, args.json),
            (crate::render::top::TopBy::Src, 10, false)
        );
        let cli = Cli::try_parse_from(["ctscope", "top", "--by", "dport", "-n", "3"]).unwrap();
        let Command::Top(args) = cli.command else {
            panic!("not top")
        };
        assert_eq!((args.by, args.n), (crate::render::top::TopBy::Dport, 3));
        let err = Cli::try_parse_from(["ctscope", "top", "--by", "port"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let cli = Cli::try_parse_from(["ctscope", "diagnose", "--json", "--all-netns"]).unwrap();
        assert!(matches!(cli.command, Command::Diagnose(a) if a.json && a.from.netns.all_netns));
        let err = Cli::try_parse_from(["ctscope", "diagnose", "--netns", "a", "--all-netns"]);
        assert_eq!(err.unwrap_err().exit_code(), 2);
    }

    fn parse_err(line: &str) -> clap::Error {
        let argv: Vec<&str> = line.split_whitespace().collect();
        match Cli::try_parse_from(&argv) {
            Ok(cli) => cli.validate().expect_err(line),
            Err(e) => e,
        }
    }

    #[test]
    fn seconds_in_range() {
        assert_eq!(parse_duration("1.5"), Ok(1.5));
        assert_eq!(parse_duration("315360000"), Ok(MAX_SECONDS));
        assert_eq!(parse_resync("0"), Ok(0.0));
        for bad in [
            "0",
            "-1",
            "1e30",
            "1.8e19",
            "315360000.5",
            "nan",
            "inf",
            "x",
            "",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("315360000"), "{bad}: {err}");
        }
        for bad in ["-0.5", "1e30", "NaN", "-inf"] {
            assert!(parse_resync(bad).is_err(), "{bad}");
        }
        let err = parse_err("ctscope events --duration 1e30");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--duration"), "{err}");
        assert_eq!(parse_err("ctscope watch --resync 1e30").exit_code(), 2);
        let cli = Cli::try_parse_from(["ctscope", "watch", "--resync", "0"]).unwrap();
        assert!(matches!(cli.command, Command::Watch(a) if a.resync == 0.0));
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(
            parse_ring_size(&DEFAULT_RING_BYTES.to_string()),
            Ok(DEFAULT_RING_BYTES)
        );
        for bad in ["1000", "2048", "0", "5000", "4294967296", "16M"] {
            assert!(
                parse_ring_size(bad).unwrap_err().contains("power of two"),
                "{bad}"
            );
        }
        assert_eq!(parse_err("ctscope events --ring-size 1000").exit_code(), 2);
    }

    #[test]
    fn watch_status_takes_only_the_socket() {
        for line in [
            "ctscope watch --status --tier 2",
            "ctscope watch --status --resync 1",
            "ctscope watch --status --headless",
            "ctscope watch --status --ring-size 8192",
        ] {
            let err = parse_err(line);
            assert_eq!(err.exit_code(), 2, "{line}");
            assert!(
                err.to_string().contains("cannot be used with"),
                "{line}: {err}"
            );
        }
        let ok = Cli::try_parse_from(["ctscope", "watch", "--status", "--socket", "/x"]);
        assert!(ok.is_ok());
    }

    #[test]
    fn events_kinds_and_tiers() {
        let cli = Cli::try_parse_from(["ctscope", "events", "--kind", "lost"]).unwrap();
        cli.validate().unwrap();
        let err = parse_err("ctscope events --tier 3 --kind new,insert_failed");
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("cannot see insert_failed"), "{text}");
        assert!(text.contains("new, destroy, lost"), "{text}");
        assert!(text.contains("Usage: ctscope events"), "{text}");
        for ok in [
            "ctscope events --tier 3 --kind new,destroy,lost",
            "ctscope events --tier 2 --kind insert_failed",
        ] {
            let argv: Vec<&str> = ok.split_whitespace().collect();
            Cli::try_parse_from(&argv).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn entry_fields_fit_the_protocol() {
        let tuple = |line: &str| {
            let argv: Vec<&str> = line.split_whitespace().collect();
            let cli = Cli::try_parse_from(&argv).unwrap();
            cli.validate().map(|()| cli)
        };
        let cli = tuple("ctscope insert -p 200 -s 10.0.0.1 -d 10.0.0.2").unwrap();
        let Command::Insert(a) = cli.command else {
            panic!("not insert")
        };
        let t = a.tuple.tuple().unwrap();
        assert_eq!((t.proto, t.src_port, t.dst_port), (200, None, None));
        assert!(tuple("ctscope insert -p gre -s 10.0.0.1 -d 10.0.0.2").is_ok());
        assert!(tuple("ctscope get -p gre -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2").is_ok());
        assert!(
            tuple("ctscope insert -p tcp -s ::1 -d ::2 --sport 1 --dport 2 --state SYN_SENT")
                .is_ok()
        );
        for (line, says) in [
            (
                "ctscope insert -p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --state ESTABLISHED",
                "--state takes a TCP state",
            ),
            (
                "ctscope update -p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --state CLOSE",
                "Usage: ctscope update",
            ),
            (
                "ctscope insert -p 200 -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2",
                "protocol 200 has no ports",
            ),
            (
                "ctscope insert -p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1",
                "udp needs both --sport and --dport",
            ),
            (
                "ctscope insert -p gre -s 10.0.0.1 -d 10.0.0.2 --sport 1",
                "or neither",
            ),
            (
                "ctscope get -p icmp -s 10.0.0.1 -d 10.0.0.2 --sport 1",
                "Usage: ctscope get",
            ),
            (
                "ctscope expect get -p udp -s 10.0.0.1 -d ::1 --sport 1 --dport 2",
                "Usage: ctscope expect get",
            ),
            (
                "ctscope insert -p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --src-nat ::1",
                "NAT address",
            ),
        ] {
            let err = tuple(line).expect_err(line);
            assert_eq!(err.exit_code(), 2, "{line}");
            let text = err.to_string();
            assert!(text.contains(says), "{line}: {text}");
            assert!(
                !text.contains("Usage: ctscope [OPTIONS] <COMMAND>"),
                "{line}: {text}"
            );
        }
    }

    #[test]
    fn timeouts_parse() {
        let cli = Cli::try_parse_from(["ctscope", "timeouts", "--json", "--netns", "x"]).unwrap();
        let Command::Timeouts(args) = cli.command else {
            panic!("not timeouts")
        };
        assert!(args.json && !args.from.netns.all_netns);
        assert_eq!(args.from.netns.netns.as_deref(), Some("x"));
        let err = Cli::try_parse_from(["ctscope", "timeouts", "--netns", "a", "--all-netns"]);
        assert_eq!(err.unwrap_err().exit_code(), 2);
        let err = Cli::try_parse_from(["ctscope", "timeouts", "-p", "tcp"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}

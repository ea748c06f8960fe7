//! The options a protocol adds after `-p` (conntrack's extensions/libct_proto_*.c):
//! their long names, the names in error messages and each command's row of legal
//! protocol options.

use ct_netlink::proto;

use super::options::Cmd;

/// A protocol's options (conntrack's extensions/libct_proto_*.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoKind {
    /// TCP, UDP, UDP-Lite, SCTP, DCCP: ports, and per protocol a state, SCTP's
    /// verification tags or DCCP's role.
    Ports(PortProto),
    /// GRE: keys, carried in the tuple's port fields.
    Gre,
    Icmp,
    Icmpv6,
    /// Protocols without options.
    Other,
}

/// Which port protocol: they differ in the options past the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProto {
    Tcp,
    /// UDP and UDP-Lite: no state.
    Udp,
    Sctp,
    Dccp,
}

/// Port protocols: option names by index (long, is-alias-of).
pub(super) const PORT_OPTS: &[(&str, usize)] = &[
    ("orig-port-src", 0),
    ("orig-port-dst", 1),
    ("reply-port-src", 2),
    ("reply-port-dst", 3),
    ("mask-port-src", 4),
    ("mask-port-dst", 5),
    ("state", 6),
    ("tuple-port-src", 7),
    ("tuple-port-dst", 8),
    ("sport", 0),
    ("dport", 1),
];
/// Index of the first option past the common port ones (SCTP's vtags, DCCP's role).
pub const PORT_EXTRA: usize = 9;
pub(super) const SCTP_OPTS: &[(&str, usize)] = &[("orig-vtag", 9), ("reply-vtag", 10)];
pub(super) const DCCP_OPTS: &[(&str, usize)] = &[("role", 9)];
/// Names of the port options in error messages (conntrack's tcp_optflags; SCTP and
/// DCCP add their [`SCTP_OPTS`] and [`DCCP_OPTS`] names after them).
pub(super) const PORT_NAMES: [&str; 9] = [
    "sport",
    "dport",
    "reply-port-src",
    "reply-port-dst",
    "mask-port-src",
    "mask-port-dst",
    "state",
    "tuple-port-src",
    "tuple-port-dst",
];
/// GRE's options (libct_proto_gre.c): long name, option index.
pub(super) const GRE_OPTS: &[(&str, usize)] = &[
    ("orig-key-src", 0),
    ("srckey", 0),
    ("orig-key-dst", 1),
    ("dstkey", 1),
    ("reply-key-src", 2),
    ("reply-key-dst", 3),
    ("mask-key-src", 4),
    ("mask-key-dst", 5),
    ("tuple-key-src", 6),
    ("tuple-key-dst", 7),
];
pub(super) const GRE_NAMES: [&str; 8] = [
    "srckey",
    "dstkey",
    "reply-key-src",
    "reply-key-dst",
    "mask-key-src",
    "mask-key-dst",
    "tuple-key-src",
    "tuple-key-dst",
];
pub(super) const ICMP_NAMES: [&str; 3] = ["icmp-type", "icmp-code", "icmp-id"];
pub(super) const ICMPV6_NAMES: [&str; 3] = ["icmpv6-type", "icmpv6-code", "icmpv6-id"];

impl ProtoKind {
    pub fn of(num: u8) -> Self {
        match num {
            proto::TCP => ProtoKind::Ports(PortProto::Tcp),
            proto::UDP | proto::UDPLITE => ProtoKind::Ports(PortProto::Udp),
            proto::SCTP => ProtoKind::Ports(PortProto::Sctp),
            proto::DCCP => ProtoKind::Ports(PortProto::Dccp),
            proto::GRE => ProtoKind::Gre,
            proto::ICMP => ProtoKind::Icmp,
            proto::ICMPV6 => ProtoKind::Icmpv6,
            _ => ProtoKind::Other,
        }
    }

    /// (long name, option index) pairs this protocol adds.
    pub(super) fn long_opts(self) -> Vec<(&'static str, usize)> {
        match self {
            ProtoKind::Ports(pp) => {
                let extra = match pp {
                    PortProto::Sctp => SCTP_OPTS,
                    PortProto::Dccp => DCCP_OPTS,
                    PortProto::Tcp | PortProto::Udp => &[],
                };
                PORT_OPTS
                    .iter()
                    .copied()
                    .filter(|(_, i)| pp != PortProto::Udp || *i != 6)
                    .chain(extra.iter().copied())
                    .collect()
            }
            ProtoKind::Gre => GRE_OPTS.to_vec(),
            ProtoKind::Icmp => ICMP_NAMES.iter().copied().zip(0..).collect(),
            ProtoKind::Icmpv6 => ICMPV6_NAMES.iter().copied().zip(0..).collect(),
            ProtoKind::Other => Vec::new(),
        }
    }

    pub(super) fn names(self) -> Vec<&'static str> {
        let extra = |opts: &[(&'static str, usize)]| opts.iter().map(|(n, _)| *n).collect();
        let (base, extra): (&[&str], Vec<&str>) = match self {
            ProtoKind::Ports(PortProto::Sctp) => (&PORT_NAMES, extra(SCTP_OPTS)),
            ProtoKind::Ports(PortProto::Dccp) => (&PORT_NAMES, extra(DCCP_OPTS)),
            ProtoKind::Ports(_) => (&PORT_NAMES, Vec::new()),
            ProtoKind::Gre => (&GRE_NAMES, Vec::new()),
            ProtoKind::Icmp => (&ICMP_NAMES, Vec::new()),
            ProtoKind::Icmpv6 => (&ICMPV6_NAMES, Vec::new()),
            ProtoKind::Other => (&[], Vec::new()),
        };
        base.iter().copied().chain(extra).collect()
    }

    /// The protocol's own commands_v_options row for `cmd` (0/1/2/3 as above).
    pub(super) fn legal(self, cmd: Cmd) -> Vec<u8> {
        let create = matches!(cmd, Cmd::Create | Cmd::Add);
        match self {
            ProtoKind::Ports(pp) => {
                let mut row: Vec<u8> = match cmd {
                    _ if create => vec![3, 3, 3, 3, 0, 0, 1, 0, 0],
                    Cmd::Get => vec![3, 3, 3, 3, 0, 0, 2, 0, 0],
                    Cmd::ExpCreate => vec![1, 1, 1, 1, 1, 1, 0, 1, 1],
                    Cmd::ExpDelete | Cmd::ExpGet => vec![1, 1, 1, 1, 0, 0, 0, 0, 0],
                    _ => vec![2, 2, 2, 2, 0, 0, 2, 0, 0],
                };
                // SCTP's vtags are compulsory on creation, optional on -U and -G;
                // DCCP's role is compulsory on creation only.
                match pp {
                    PortProto::Udp => row[6] = 0,
                    PortProto::Tcp => {}
                    PortProto::Sctp => row.extend(match cmd {
                        _ if create => [1, 1],
                        Cmd::Update | Cmd::Get => [2, 2],
                        Cmd::ExpCreate => [1, 1],
                        _ => [0, 0],
                    }),
                    PortProto::Dccp => row.push(match cmd {
                        _ if create => 1,
                        Cmd::ExpCreate => 1,
                        _ => 0,
                    }),
                }
                row
            }
            ProtoKind::Gre => match cmd {
                _ if create => vec![3, 3, 3, 3, 0, 0, 0, 0],
                Cmd::Get => vec![3, 3, 3, 3, 0, 0, 0, 0],
                Cmd::ExpCreate => vec![1; 8],
                Cmd::ExpDelete | Cmd::ExpGet => vec![1, 1, 1, 1, 0, 0, 0, 0],
                _ => vec![2, 2, 2, 2, 0, 0, 0, 0],
            },
            ProtoKind::Icmp | ProtoKind::Icmpv6 if create => vec![1, 1, 2],
            ProtoKind::Icmp | ProtoKind::Icmpv6 => vec![2, 2, 2],
            ProtoKind::Other => vec![],
        }
    }

    /// conntrack's message when only one of a tuple's two port-like options is given.
    pub(super) fn partial_message(self, reply: bool) -> &'static str {
        match (self, reply) {
            (ProtoKind::Gre, false) => "you have to specify `--srckey' and `--dstkey'",
            (ProtoKind::Gre, true) => "you have to specify `--reply-src-key' and `--reply-dst-key'",
            (_, false) => "you have to specify `--sport' and `--dport'",
            (_, true) => "you have to specify `--reply-src-port' and `--reply-dst-port'",
        }
    }
}

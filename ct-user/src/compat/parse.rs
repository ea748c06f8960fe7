//! conntrack(8) 1.4.7's command line, parsed the way its getopt_long loop does:
//! short options with optional arguments (`-L [table]`), long options and their unique
//! prefixes, protocol options that exist only after `-p`, and the table of legal
//! command/option combinations. Errors carry conntrack's text and exit status.

use std::{collections::BTreeSet, net::IpAddr};

use ct_netlink::{DccpState, Family, SctpState, Status, TcpState, proto};

use super::{Fail, labels::LabelMap};

/// conntrack's commands, in its `CT_*`/`EXP_*` bit order (the rows of [`LEGAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    List = 0,
    Create = 1,
    Update = 2,
    Delete = 3,
    Get = 4,
    Flush = 5,
    Event = 6,
    Version = 7,
    Help = 8,
    ExpList = 9,
    ExpCreate = 10,
    ExpDelete = 11,
    ExpGet = 12,
    ExpFlush = 13,
    ExpEvent = 14,
    Count = 15,
    ExpCount = 16,
    Stats = 17,
    ExpStats = 18,
    Add = 19,
}

/// `-L [table]`: which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableArg {
    #[default]
    Conntrack,
    Expect,
    Dying,
    Unconfirmed,
}

/// Option bits, in conntrack's `CT_OPT_*` order (the columns of [`LEGAL`]).
pub mod opt {
    pub const ORIG_SRC: u32 = 1 << 0;
    pub const ORIG_DST: u32 = 1 << 1;
    pub const REPL_SRC: u32 = 1 << 2;
    pub const REPL_DST: u32 = 1 << 3;
    pub const PROTO: u32 = 1 << 4;
    pub const TIMEOUT: u32 = 1 << 5;
    pub const STATUS: u32 = 1 << 6;
    pub const ZERO: u32 = 1 << 7;
    pub const EVENT_MASK: u32 = 1 << 8;
    pub const EXP_SRC: u32 = 1 << 9;
    pub const EXP_DST: u32 = 1 << 10;
    pub const MASK_SRC: u32 = 1 << 11;
    pub const MASK_DST: u32 = 1 << 12;
    pub const MARK: u32 = 1 << 14;
    pub const ID: u32 = 1 << 15;
    pub const FAMILY: u32 = 1 << 16;
    pub const SRC_NAT: u32 = 1 << 17;
    pub const DST_NAT: u32 = 1 << 18;
    pub const OUTPUT: u32 = 1 << 19;
    pub const SECMARK: u32 = 1 << 20;
    pub const BUFFERSIZE: u32 = 1 << 21;
    pub const ANY_NAT: u32 = 1 << 22;
    pub const ZONE: u32 = 1 << 23;
    pub const LABEL: u32 = 1 << 24;
    pub const ADD_LABEL: u32 = 1 << 25;
    pub const DEL_LABEL: u32 = 1 << 26;
    pub const ORIG_ZONE: u32 = 1 << 27;
    pub const REPL_ZONE: u32 = 1 << 28;
    /// Options that make -L/-D/-E filter (conntrack's CT_COMPARISON).
    pub const COMPARISON: u32 = PROTO
        | ORIG_SRC
        | ORIG_DST
        | REPL_SRC
        | REPL_DST
        | MARK
        | SECMARK
        | STATUS
        | ID
        | ZONE
        | LABEL
        | ORIG_ZONE
        | REPL_ZONE;
}

/// Option names in error messages, by bit.
const OPT_NAMES: [&str; 29] = [
    "src",
    "dst",
    "reply-src",
    "reply-dst",
    "protonum",
    "timeout",
    "status",
    "zero",
    "event-mask",
    "tuple-src",
    "tuple-dst",
    "mask-src",
    "mask-dst",
    "nat-range",
    "mark",
    "id",
    "family",
    "src-nat",
    "dst-nat",
    "output",
    "secmark",
    "buffer-size",
    "any-nat",
    "zone",
    "label",
    "label-add",
    "label-del",
    "orig-zone",
    "reply-zone",
];

/// conntrack's commands_v_options: 0 illegal, 1 compulsory, 2 optional, 3 one of the
/// address pairs (`-s`+`-d` or `-r`+`-q`).
#[rustfmt::skip]
const LEGAL: [[u8; 29]; 20] = [
    /*           s d r q p t u z e [ ] { } a m i f n g o c b j w l < > ( ) */
    /* LIST   */ [2,2,2,2,2,0,2,2,0,0,0,2,2,0,2,0,2,2,2,2,2,0,2,2,2,0,0,2,2],
    /* CREATE */ [3,3,3,3,1,1,2,0,0,0,0,0,0,2,2,0,0,2,2,0,0,0,0,2,0,2,0,2,2],
    /* UPDATE */ [2,2,2,2,2,2,2,0,0,0,0,2,2,0,2,2,2,2,2,2,0,0,0,0,2,2,2,0,0],
    /* DELETE */ [2,2,2,2,2,2,2,0,0,0,0,2,2,0,2,2,2,2,2,2,0,0,0,2,2,0,0,2,2],
    /* GET    */ [3,3,3,3,1,0,0,0,0,0,0,0,0,0,0,2,0,0,0,2,0,0,0,0,2,0,0,0,0],
    /* FLUSH  */ [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EVENT  */ [2,2,2,2,2,0,0,0,2,0,0,2,2,0,2,0,2,2,2,2,2,2,2,2,2,0,0,2,2],
    /* VERSION*/ [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* HELP   */ [0,0,0,0,2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EXP_LIST*/[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,0,0,2,0,0,0,0,0,0,0,0,0],
    /* EXP_CREATE*/[1,1,2,2,1,1,2,0,0,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EXP_DELETE*/[1,1,2,2,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EXP_GET*/ [1,1,2,2,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EXP_FLUSH*/[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EXP_EVENT*/[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,0,0,0,0,0,0,0,0,0],
    /* COUNT  */ [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EXP_COUNT*/[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* STATS  */ [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* EXP_STATS*/[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
    /* ADD    */ [3,3,3,3,1,1,2,0,0,0,0,0,0,2,2,0,0,2,2,0,0,0,0,2,0,2,0,2,2],
];

/// `-o` flags.
pub mod out {
    pub const XML: u32 = 1 << 0;
    pub const EXT: u32 = 1 << 1;
    pub const TMS: u32 = 1 << 2;
    pub const ID: u32 = 1 << 3;
    pub const KTMS: u32 = 1 << 4;
    pub const LABELS: u32 = 1 << 5;
    pub const SAVE: u32 = 1 << 6;
}

/// `-e` flags.
pub mod ev {
    pub const NEW: u32 = 1;
    pub const UPDATE: u32 = 2;
    pub const DESTROY: u32 = 4;
    pub const ALL: u32 = 7;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HasArg {
    No,
    Required,
    /// Taken from the next argument when it does not start with `-` or `!`.
    Optional,
}

/// What an option does once recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Command(char),
    Opt(char),
    /// A protocol option: index into the protocol's option names.
    Proto(usize),
    /// ctscope's own `--netns NS`.
    Netns,
}

struct OptDef {
    long: &'static str,
    short: Option<char>,
    arg: HasArg,
    key: Key,
}

const fn o(long: &'static str, short: Option<char>, arg: HasArg, key: Key) -> OptDef {
    OptDef {
        long,
        short,
        arg,
        key,
    }
}

use HasArg::{No, Optional as Opt, Required as Req};

/// conntrack 1.4.7's getopt string: which short options take an argument (`:`) or an
/// optional one (`::`). It differs from the long table for `-i` (required here).
const GETOPT: &str =
    ":L::I::U::D::G::E::F::A::hVs:d:r:q:p:t:u:e:a:z[:]:{:}:m:i:f:o:n::g::c:b:C::Sj::w:l:<:>::(:):";

/// How short option `c` takes its argument, from [`GETOPT`].
fn short_arg(c: char) -> HasArg {
    let Some(at) = GETOPT[1..].find(c) else {
        return HasArg::No;
    };
    let rest = &GETOPT[1 + at + c.len_utf8()..];
    if rest.starts_with("::") {
        HasArg::Optional
    } else if rest.starts_with(':') {
        HasArg::Required
    } else {
        HasArg::No
    }
}

/// conntrack's `original_opts` with the short letters of its getopt string.
const OPTS: &[OptDef] = &[
    o("dump", Some('L'), Opt, Key::Command('L')),
    o("create", Some('I'), Opt, Key::Command('I')),
    o("add", Some('A'), Opt, Key::Command('A')),
    o("delete", Some('D'), Opt, Key::Command('D')),
    o("update", Some('U'), Opt, Key::Command('U')),
    o("get", Some('G'), Opt, Key::Command('G')),
    o("flush", Some('F'), Opt, Key::Command('F')),
    o("event", Some('E'), Opt, Key::Command('E')),
    o("counter", Some('C'), Opt, Key::Command('C')),
    o("stats", Some('S'), No, Key::Command('S')),
    o("version", Some('V'), No, Key::Command('V')),
    o("help", Some('h'), No, Key::Command('h')),
    o("orig-src", Some('s'), Req, Key::Opt('s')),
    o("src", None, Req, Key::Opt('s')),
    o("orig-dst", Some('d'), Req, Key::Opt('d')),
    o("dst", None, Req, Key::Opt('d')),
    o("reply-src", Some('r'), Req, Key::Opt('r')),
    o("reply-dst", Some('q'), Req, Key::Opt('q')),
    o("protonum", Some('p'), Req, Key::Opt('p')),
    o("timeout", Some('t'), Req, Key::Opt('t')),
    o("status", Some('u'), Req, Key::Opt('u')),
    o("zero", Some('z'), No, Key::Opt('z')),
    o("event-mask", Some('e'), Req, Key::Opt('e')),
    o("tuple-src", Some('['), Req, Key::Opt('[')),
    o("tuple-dst", Some(']'), Req, Key::Opt(']')),
    o("mask-src", Some('{'), Req, Key::Opt('{')),
    o("mask-dst", Some('}'), Req, Key::Opt('}')),
    o("nat-range", Some('a'), Req, Key::Opt('a')),
    o("mark", Some('m'), Req, Key::Opt('m')),
    o("secmark", Some('c'), Req, Key::Opt('c')),
    o("id", Some('i'), Opt, Key::Opt('i')),
    o("family", Some('f'), Req, Key::Opt('f')),
    o("src-nat", Some('n'), Opt, Key::Opt('n')),
    o("dst-nat", Some('g'), Opt, Key::Opt('g')),
    o("output", Some('o'), Req, Key::Opt('o')),
    o("buffer-size", Some('b'), Req, Key::Opt('b')),
    o("any-nat", Some('j'), Opt, Key::Opt('j')),
    o("zone", Some('w'), Req, Key::Opt('w')),
    o("label", Some('l'), Req, Key::Opt('l')),
    o("label-add", Some('<'), Req, Key::Opt('<')),
    o("label-del", Some('>'), Opt, Key::Opt('>')),
    o("orig-zone", Some('('), Req, Key::Opt('(')),
    o("reply-zone", Some(')'), Req, Key::Opt(')')),
    o("netns", None, Req, Key::Netns),
];

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
const PORT_OPTS: &[(&str, usize)] = &[
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
const SCTP_OPTS: &[(&str, usize)] = &[("orig-vtag", 9), ("reply-vtag", 10)];
const DCCP_OPTS: &[(&str, usize)] = &[("role", 9)];
/// Names of the port options in error messages (conntrack's tcp_optflags; SCTP and
/// DCCP add their [`SCTP_OPTS`] and [`DCCP_OPTS`] names after them).
const PORT_NAMES: [&str; 9] = [
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
const GRE_OPTS: &[(&str, usize)] = &[
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
const GRE_NAMES: [&str; 8] = [
    "srckey",
    "dstkey",
    "reply-key-src",
    "reply-key-dst",
    "mask-key-src",
    "mask-key-dst",
    "tuple-key-src",
    "tuple-key-dst",
];
const ICMP_NAMES: [&str; 3] = ["icmp-type", "icmp-code", "icmp-id"];
const ICMPV6_NAMES: [&str; 3] = ["icmpv6-type", "icmpv6-code", "icmpv6-id"];

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
    fn long_opts(self) -> Vec<(&'static str, usize)> {
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

    fn names(self) -> Vec<&'static str> {
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
    fn legal(self, cmd: Cmd) -> Vec<u8> {
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
    fn partial_message(self, reply: bool) -> &'static str {
        match (self, reply) {
            (ProtoKind::Gre, false) => "you have to specify `--srckey' and `--dstkey'",
            (ProtoKind::Gre, true) => "you have to specify `--reply-src-key' and `--reply-dst-key'",
            (_, false) => "you have to specify `--sport' and `--dport'",
            (_, true) => "you have to specify `--reply-src-port' and `--reply-dst-port'",
        }
    }
}

/// Layer-4 values from the protocol options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L4 {
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub reply_sport: Option<u16>,
    pub reply_dport: Option<u16>,
    /// `--state` of TCP.
    pub state: Option<u8>,
    /// `--state` of SCTP and DCCP (their own numbering).
    pub sctp_state: Option<u8>,
    pub dccp_state: Option<u8>,
    /// SCTP's `--orig-vtag` / `--reply-vtag`, DCCP's `--role`.
    pub vtag_orig: Option<u32>,
    pub vtag_reply: Option<u32>,
    pub dccp_role: Option<u8>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub icmp_id: Option<u16>,
}

/// `-s ADDR[/BITS]`: an address and, for -s/-d, an optional prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrArg {
    pub addr: IpAddr,
    pub prefix: Option<u8>,
}

impl AddrArg {
    /// The netmask `/BITS` stands for; none without a prefix or with a full one, as in
    /// conntrack (`-s A/32` is an exact match).
    pub fn netmask(&self) -> Option<IpAddr> {
        let bits = u32::from(self.prefix?);
        match self.addr {
            IpAddr::V4(_) if bits < 32 => {
                let m = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                Some(IpAddr::V4(m.into()))
            }
            IpAddr::V6(_) if bits < 128 => {
                let m = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                Some(IpAddr::V6(m.into()))
            }
            _ => None,
        }
    }
}

/// `--src-nat [ADDR[:PORT]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatArg {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

/// Everything a conntrack command line says.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub cmd: Option<Cmd>,
    pub table: TableArg,
    /// `opt::*` bits given.
    pub options: u32,
    pub family: Option<Family>,
    pub proto: Option<u8>,
    /// The protocol's option handler (`Other` for a name from /etc/protocols).
    pub proto_kind: Option<ProtoKind>,
    pub orig_src: Option<AddrArg>,
    pub orig_dst: Option<AddrArg>,
    /// The netmasks of -s/-d: from `-s ADDR/BITS` or `--mask-src MASK`, whichever came
    /// last (conntrack keeps one mask per direction; `/32` and `/128` set none).
    pub mask_src: Option<IpAddr>,
    pub mask_dst: Option<IpAddr>,
    pub reply_src: Option<IpAddr>,
    pub reply_dst: Option<IpAddr>,
    pub timeout: Option<u32>,
    /// `-u`: bits to set or require.
    pub status: u32,
    /// `-u`: bits compared (negated names and UNREPLIED add here).
    pub status_mask: u32,
    pub event_mask: u32,
    pub output: u32,
    pub mark: Option<(u32, u32)>,
    pub secmark: Option<u32>,
    pub id: Option<u32>,
    pub src_nat: Option<NatArg>,
    pub dst_nat: Option<NatArg>,
    pub any_nat: Option<NatArg>,
    pub zone: Option<u16>,
    pub orig_zone: Option<u16>,
    pub reply_zone: Option<u16>,
    pub buffer_size: Option<usize>,
    pub l4: L4,
    /// Protocol option bits given (index as in the protocol's names).
    pub l4_options: u32,
    pub netns: Option<String>,
    /// The label map, once an option needed it (`-l`, `--label-add/del`, `-o labels`);
    /// `None` also when the file could not be read (a warning says so).
    pub labelmap: Option<LabelMap>,
    labelmap_loaded: bool,
    /// `-l`: label bits an entry must all have.
    pub label_filter: Option<BTreeSet<u32>>,
    /// `--label-add` / `--label-del` bits; `None` with `--label-del` alone (all).
    pub label_modify: Option<BTreeSet<u32>>,
    /// No command was given (conntrack then shows its usage).
    pub no_command: bool,
    /// A line of `-R` (load-file): no summaries.
    pub batch: bool,
    /// Warnings conntrack prints while parsing (on stderr).
    pub warnings: Vec<String>,
}

/// A parameter problem: exit 2 with conntrack's "Try `conntrack -h'" hint.
fn param(msg: impl Into<String>) -> Fail {
    Fail::Param(msg.into())
}

/// C's strtoul(s, NULL, 0): leading digits, 0x hex, 0 octal; a leading `-` negates
/// (modulo 2^64, so `-1` is all ones, as in C).
fn strtoul(s: &str) -> u64 {
    let s = s.trim_start();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, h)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    // Past the range C saturates to ULONG_MAX.
    let v = match &digits[..end] {
        "" => 0,
        d => u64::from_str_radix(d, radix).unwrap_or(u64::MAX),
    };
    if neg { v.wrapping_neg() } else { v }
}

/// C's atoi/atol: optional sign and leading decimal digits, 0 otherwise.
fn atol(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let v: i64 = rest[..end].parse().unwrap_or(0);
    if neg { -v } else { v }
}

/// inet_aton's forms (a, a.b, a.b.c, a.b.c.d, each decimal, 0x hex or 0 octal), or IPv6.
pub fn parse_inet(s: &str) -> Option<IpAddr> {
    if let Ok(a) = s.parse::<std::net::Ipv4Addr>() {
        return Some(a.into());
    }
    if !s.contains(':') {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.is_empty() || parts.len() > 4 || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let nums: Option<Vec<u64>> = parts
            .iter()
            .map(|p| {
                let ok = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
                    !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())
                } else {
                    p.chars().all(|c| c.is_ascii_digit())
                };
                ok.then(|| strtoul(p))
            })
            .collect();
        let nums = nums?;
        let (last, head) = nums.split_last()?;
        if head.iter().any(|n| *n > 255) || *last >= 1u64 << (8 * (4 - head.len())) {
            return None;
        }
        let mut v: u32 = 0;
        for (i, n) in head.iter().enumerate() {
            v |= (*n as u32) << (24 - 8 * i);
        }
        v |= *last as u32;
        return Some(std::net::Ipv4Addr::from(v).into());
    }
    s.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::from)
}

/// A protocol by name (conntrack's own, /etc/protocols) or number, with the
/// handler conntrack's findproto picks: a name from /etc/protocols gets the
/// "unknown" handler (no options), even for a protocol conntrack knows by another
/// name (`ipv6-icmp`).
fn find_proto(name: &str) -> Option<(u8, ProtoKind)> {
    let num = find_proto_num(name)?;
    let by_handler = proto::name(num).eq_ignore_ascii_case(name)
        || name.chars().next().is_some_and(|c| c.is_ascii_digit());
    Some((
        num,
        if by_handler {
            ProtoKind::of(num)
        } else {
            ProtoKind::Other
        },
    ))
}

fn find_proto_num(name: &str) -> Option<u8> {
    let known = [
        proto::TCP,
        proto::UDP,
        proto::UDPLITE,
        proto::SCTP,
        proto::DCCP,
        proto::ICMP,
        proto::ICMPV6,
        proto::GRE,
    ];
    if let Some(p) = known
        .into_iter()
        .find(|p| proto::name(*p).eq_ignore_ascii_case(name))
    {
        return Some(p);
    }
    if let Ok(text) = std::fs::read_to_string("/etc/protocols") {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut f = line.split_whitespace();
            let (Some(n), Some(num)) = (f.next(), f.next()) else {
                continue;
            };
            if (n == name || f.any(|alias| alias == name))
                && let Ok(num) = num.parse()
            {
                return Some(num);
            }
        }
    }
    // strtoul(str, &end, 0) with the whole string consumed, at most IPPROTO_RAW (255).
    let digits_ok = !name.is_empty()
        && (name.chars().all(|c| c.is_ascii_digit())
            || name
                .strip_prefix("0x")
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())));
    if digits_ok {
        let v = strtoul(name);
        return (v <= 255).then_some(v as u8);
    }
    None
}

fn set_family(cur: &mut Option<Family>, new: Family) -> Result<(), Fail> {
    match cur {
        None => {
            *cur = Some(new);
            Ok(())
        }
        Some(f) if *f == new => Ok(()),
        Some(_) => Err(param("mismatched address family")),
    }
}

/// One token of a comma-separated `-u`/`-e`/`-o` value, matched like conntrack's
/// strncasecmp(token, name, strlen(token)) (a prefix of the name, any case).
fn prefix_ci(token: &str, name: &str) -> bool {
    name.len() >= token.len() && name[..token.len()].eq_ignore_ascii_case(token)
}

/// Returns false for an unknown token. SRC_NAT/DST_NAT warn and count as known.
fn parse_token(
    token: &str,
    table: &[(&str, u32)],
    value: &mut u32,
    warnings: &mut Vec<String>,
) -> bool {
    if prefix_ci(token, "SRC_NAT") {
        warnings.push("WARNING: ignoring SRC_NAT, use --src-nat instead".into());
        return true;
    }
    if prefix_ci(token, "DST_NAT") {
        warnings.push("WARNING: ignoring DST_NAT, use --dst-nat instead".into());
        return true;
    }
    match table.iter().find(|(n, _)| prefix_ci(token, n)) {
        Some((_, v)) => {
            *value |= v;
            true
        }
        None => false,
    }
}

const STATUS_NAMES: &[(&str, u32)] = &[
    ("ASSURED", Status::ASSURED),
    ("SEEN_REPLY", Status::SEEN_REPLY),
    ("UNSET", 0),
    ("FIXED_TIMEOUT", Status::FIXED_TIMEOUT),
    ("EXPECTED", Status::EXPECTED),
    ("OFFLOAD", Status::OFFLOAD),
    ("HW_OFFLOAD", Status::HW_OFFLOAD),
];
const EVENT_NAMES: &[(&str, u32)] = &[
    ("ALL", ev::ALL),
    ("NEW", ev::NEW),
    ("UPDATES", ev::UPDATE),
    ("DESTROY", ev::DESTROY),
];
const OUTPUT_NAMES: &[(&str, u32)] = &[
    ("xml", out::XML),
    ("extended", out::EXT),
    ("timestamp", out::TMS),
    ("id", out::ID),
    ("ktimestamp", out::KTMS),
    ("labels", out::LABELS),
    ("userspace", 0),
    ("save", out::SAVE),
];

/// `-e`/`-o`: every comma-separated token must be known.
fn parse_list(
    arg: &str,
    table: &[(&str, u32)],
    value: &mut u32,
    w: &mut Vec<String>,
) -> Result<(), Fail> {
    let mut rest = arg;
    loop {
        let (token, more) = match rest.split_once(',') {
            Some((t, m)) => (t, Some(m)),
            None => (rest, None),
        };
        if token.is_empty() || !parse_token(token, table, value, w) {
            return Err(param(format!("Bad parameter `{rest}'")));
        }
        match more {
            Some(m) => rest = m,
            None => return Ok(()),
        }
    }
}

/// `-u`: names, `!NAME` (must be unset) and UNREPLIED (SEEN_REPLY unset).
fn parse_status(
    arg: &str,
    status: &mut u32,
    mask: &mut u32,
    w: &mut Vec<String>,
) -> Result<(), Fail> {
    let mut rest = arg;
    loop {
        let (token, more) = match rest.split_once(',') {
            Some((t, m)) => (t, Some(m)),
            None => (rest, None),
        };
        let bad = || param(format!("Bad parameter `{rest}'"));
        if token.is_empty() && more.is_some() {
            return Err(bad());
        }
        let (negated, name) = match token.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, token),
        };
        if !negated && name.starts_with("UNREPLIED") {
            *mask |= Status::SEEN_REPLY;
        } else {
            let target = if negated { &mut *mask } else { &mut *status };
            if name.is_empty() || !parse_token(name, STATUS_NAMES, target, w) {
                return Err(bad());
            }
        }
        match more {
            Some(m) => rest = m,
            None => return Ok(()),
        }
    }
}

/// An address option's value: `ADDR` or (for -s/-d) `ADDR/BITS`.
fn parse_addr_opt(
    long: &str,
    arg: &str,
    cidr_ok: bool,
    family: &mut Option<Family>,
) -> Result<AddrArg, Fail> {
    let (addr_s, prefix) = match arg.split_once('/') {
        Some((a, bits)) => {
            let ok = !bits.is_empty() && bits.chars().all(|c| c.is_ascii_digit());
            (a, Some(if ok { bits.parse::<u32>().ok() } else { None }))
        }
        None => (arg, None),
    };
    let Some(addr) = parse_inet(addr_s) else {
        return Err(param(format!("Invalid IP address `{arg}'")));
    };
    set_family(family, Family::of(&addr))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => None,
        Some(_) if !cidr_ok => {
            return Err(param(format!("CIDR notation unavailable for `--{long}'")));
        }
        Some(Some(bits)) if bits <= max => Some(bits as u8),
        Some(_) => return Err(param("Invalid netmask")),
    };
    Ok(AddrArg { addr, prefix })
}

/// `--src-nat ADDR[:PORT]`, `[V6]:PORT` (conntrack's split_address_and_port).
fn parse_nat(arg: &str, family: &mut Option<Family>) -> Result<NatArg, Fail> {
    let (addr, port) = if let Some(start) = arg.find('[') {
        let inner = &arg[start + 1..];
        let Some(close) = inner.find(']') else {
            return Err(param("No closing ']' around IPv6 address"));
        };
        if close == 0 {
            return Err(param("No IPv6 address specified"));
        }
        match inner[close..].find(':') {
            Some(c) => (&inner[..close], Some(&inner[close + c + 1..])),
            None => (arg, None),
        }
    } else {
        match arg.split_once(':') {
            Some((a, p)) if !p.contains(':') => (a, Some(p)),
            _ => (arg, None),
        }
    };
    let port = match port {
        None => None,
        Some("") => return Err(param("No port specified after `:'")),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if p.chars().all(|c| c.is_ascii_digit()) => Some(n),
            _ => return Err(param(format!("Invalid port `{p}'"))),
        },
    };
    let Some(ip) = parse_inet(addr) else {
        return Err(param(format!("Invalid IP address `{addr}'")));
    };
    set_family(family, Family::of(&ip))?;
    Ok(NatArg {
        addr: Some(ip),
        port,
    })
}

/// The table word after a command (`-L expect`), taken like conntrack's check_type.
fn table_of(word: Option<&str>) -> Result<TableArg, Fail> {
    let Some(t) = word else {
        return Ok(TableArg::Conntrack);
    };
    let is = |full: &str| full.starts_with(t);
    if is("expect") {
        Ok(TableArg::Expect)
    } else if is("conntrack") {
        Ok(TableArg::Conntrack)
    } else if is("dying") {
        Ok(TableArg::Dying)
    } else if is("unconfirmed") {
        Ok(TableArg::Unconfirmed)
    } else {
        Err(param(format!("unknown type `{t}'")))
    }
}

fn command_for(c: char, table: TableArg) -> Result<Cmd, Fail> {
    let expect = table == TableArg::Expect;
    if c != 'L' && matches!(table, TableArg::Dying | TableArg::Unconfirmed) {
        return Err(param(
            "Can't do that command with tables `dying' and `unconfirmed'",
        ));
    }
    let pick = |ct: Cmd, exp: Cmd| if expect { exp } else { ct };
    Ok(match c {
        'L' => pick(Cmd::List, Cmd::ExpList),
        'I' => pick(Cmd::Create, Cmd::ExpCreate),
        'D' => pick(Cmd::Delete, Cmd::ExpDelete),
        'G' => pick(Cmd::Get, Cmd::ExpGet),
        'F' => pick(Cmd::Flush, Cmd::ExpFlush),
        'E' => pick(Cmd::Event, Cmd::ExpEvent),
        'V' => Cmd::Version,
        'h' => Cmd::Help,
        'C' => pick(Cmd::Count, Cmd::ExpCount),
        'S' => pick(Cmd::Stats, Cmd::ExpStats),
        'U' | 'A' if expect => {
            let long = if c == 'U' { "update" } else { "add" };
            return Err(param(format!("Can't do --{long} on expectations")));
        }
        'U' => Cmd::Update,
        _ => Cmd::Add,
    })
}

/// What the option scanner found next.
enum Found {
    Known(Key, Option<String>),
    /// An argument that is not an option (skipped, as getopt permutes it away).
    Positional,
}

struct Scanner<'a> {
    args: &'a [String],
    /// Next argument to look at.
    idx: usize,
    /// Inside a cluster of short options: the rest of it.
    cluster: Option<(usize, usize)>,
}

impl Scanner<'_> {
    /// `get_optional_arg`: the next argument unless it looks like an option.
    fn optional_next(&mut self) -> Option<String> {
        let next = self.args.get(self.idx)?;
        if next.starts_with('-') || next.starts_with('!') {
            return None;
        }
        self.idx += 1;
        Some(next.clone())
    }

    /// The next option (and its argument as getopt_long would give it).
    fn next(&mut self, proto: Option<ProtoKind>) -> Result<Option<Found>, Fail> {
        if let Some((arg_i, pos)) = self.cluster.take() {
            return self.short(arg_i, pos).map(Some);
        }
        let Some(arg) = self.args.get(self.idx) else {
            return Ok(None);
        };
        let i = self.idx;
        self.idx += 1;
        if arg == "--" {
            // Everything after it is positional; conntrack ignores those.
            self.idx = self.args.len();
            return Ok(None);
        }
        if let Some(long) = arg.strip_prefix("--") {
            return self.long(long, arg, proto).map(Some);
        }
        if arg.len() > 1 && arg.starts_with('-') {
            return self.short(i, 1).map(Some);
        }
        Ok(Some(Found::Positional))
    }

    fn long(&mut self, body: &str, whole: &str, proto: Option<ProtoKind>) -> Result<Found, Fail> {
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let unknown = || param(format!("unknown option `{whole}'"));
        let mut cands: Vec<(&str, HasArg, Key)> =
            OPTS.iter().map(|d| (d.long, d.arg, d.key)).collect();
        if let Some(p) = proto {
            cands.extend(
                p.long_opts()
                    .into_iter()
                    .map(|(n, i)| (n, HasArg::Required, Key::Proto(i))),
            );
        }
        let exact = cands.iter().find(|(n, _, _)| *n == name);
        let (arg_kind, key) = match exact {
            Some((_, a, k)) => (*a, *k),
            None => {
                let matches: Vec<_> = cands
                    .iter()
                    .filter(|(n, _, _)| !name.is_empty() && n.starts_with(name))
                    .collect();
                let Some(first) = matches.first() else {
                    return Err(unknown());
                };
                if matches.iter().any(|m| (m.1, m.2) != (first.1, first.2)) {
                    return Err(unknown());
                }
                (first.1, first.2)
            }
        };
        let value = match arg_kind {
            HasArg::No if inline.is_some() => return Err(unknown()),
            HasArg::No => None,
            HasArg::Required => match inline {
                Some(v) => Some(v),
                None => match self.args.get(self.idx) {
                    Some(v) => {
                        self.idx += 1;
                        Some(v.clone())
                    }
                    None => {
                        return Err(param(format!("option `{whole}' requires an argument")));
                    }
                },
            },
            HasArg::Optional => inline,
        };
        Ok(Found::Known(key, value))
    }

    fn short(&mut self, arg_i: usize, pos: usize) -> Result<Found, Fail> {
        let arg = &self.args[arg_i];
        let c = arg[pos..].chars().next().unwrap_or('?');
        let after = pos + c.len_utf8();
        let rest = &arg[after..];
        let Some(def) = OPTS.iter().find(|d| d.short == Some(c)) else {
            return Err(param(format!("unknown option `{arg}'")));
        };
        let value = match short_arg(c) {
            HasArg::No => {
                if !rest.is_empty() {
                    self.cluster = Some((arg_i, after));
                }
                None
            }
            HasArg::Optional => (!rest.is_empty()).then(|| rest.to_owned()),
            HasArg::Required if !rest.is_empty() => Some(rest.to_owned()),
            HasArg::Required => match self.args.get(self.idx) {
                Some(v) => {
                    self.idx += 1;
                    Some(v.clone())
                }
                None => return Err(param(format!("option `{arg}' requires an argument"))),
            },
        };
        Ok(Found::Known(def.key, value))
    }
}

/// Parses conntrack's argument list (without the program name).
pub fn parse(args: &[String]) -> Result<Parsed, Fail> {
    let (p, result) = parse_partial(args);
    result.map(|()| p)
}

/// Parses as far as it goes: what was parsed (with the warnings conntrack would have
/// printed on the way, also before a failure) and whether it failed.
pub fn parse_partial(args: &[String]) -> (Parsed, Result<(), Fail>) {
    let mut p = Parsed::default();
    let result = parse_into(&mut p, args);
    (p, result)
}

fn parse_into(p: &mut Parsed, args: &[String]) -> Result<(), Fail> {
    let mut sc = Scanner {
        args,
        idx: 0,
        cluster: None,
    };
    let mut proto_kind: Option<ProtoKind> = None;
    while let Some(found) = sc.next(proto_kind)? {
        let Found::Known(key, value) = found else {
            continue;
        };
        let v = value.clone().unwrap_or_default();
        match key {
            Key::Netns => p.netns = value,
            Key::Command(c) => {
                // An inline optional argument (-Lexpect) is ignored, as in conntrack.
                let word = if value.is_some() {
                    None
                } else {
                    sc.optional_next()
                };
                let table = table_of(word.as_deref())?;
                let cmd = command_for(c, table)?;
                if p.cmd.is_some() {
                    return Err(param("Invalid commands combination"));
                }
                p.cmd = Some(cmd);
                p.table = table;
            }
            Key::Opt(c) => parse_opt(p, &mut sc, c, &v, value.is_some(), &mut proto_kind)?,
            Key::Proto(i) => parse_proto_opt(p, proto_kind, i, &v)?,
        }
    }
    check(p, proto_kind)
}

fn parse_opt(
    p: &mut Parsed,
    sc: &mut Scanner<'_>,
    c: char,
    v: &str,
    value_given: bool,
    proto_kind: &mut Option<ProtoKind>,
) -> Result<(), Fail> {
    match c {
        's' => {
            p.options |= opt::ORIG_SRC;
            let a = parse_addr_opt("src", v, true, &mut p.family)?;
            p.orig_src = Some(a);
            if let Some(mask) = a.netmask() {
                p.options |= opt::MASK_SRC;
                p.mask_src = Some(mask);
            }
        }
        'd' => {
            p.options |= opt::ORIG_DST;
            let a = parse_addr_opt("dst", v, true, &mut p.family)?;
            p.orig_dst = Some(a);
            if let Some(mask) = a.netmask() {
                p.options |= opt::MASK_DST;
                p.mask_dst = Some(mask);
            }
        }
        '{' => {
            p.options |= opt::MASK_SRC;
            p.mask_src = Some(parse_addr_opt("mask-src", v, false, &mut p.family)?.addr);
        }
        '}' => {
            p.options |= opt::MASK_DST;
            p.mask_dst = Some(parse_addr_opt("mask-dst", v, false, &mut p.family)?.addr);
        }
        'r' => {
            p.options |= opt::REPL_SRC;
            p.reply_src = Some(parse_addr_opt("reply-src", v, false, &mut p.family)?.addr);
        }
        'q' => {
            p.options |= opt::REPL_DST;
            p.reply_dst = Some(parse_addr_opt("reply-dst", v, false, &mut p.family)?.addr);
        }
        'p' => {
            p.options |= opt::PROTO;
            let Some((num, kind)) = find_proto(v) else {
                return Err(param(format!("`{v}' unsupported protocol")));
            };
            p.proto = Some(num);
            p.proto_kind = Some(kind);
            *proto_kind = Some(kind);
        }
        't' => {
            p.options |= opt::TIMEOUT;
            p.timeout = Some(atol(v) as u32);
        }
        'u' => {
            p.options |= opt::STATUS;
            let mut mask = 0;
            parse_status(v, &mut p.status, &mut mask, &mut p.warnings)?;
            p.status_mask |= mask;
        }
        'e' => {
            p.options |= opt::EVENT_MASK;
            parse_list(v, EVENT_NAMES, &mut p.event_mask, &mut p.warnings)?;
        }
        'o' => {
            p.options |= opt::OUTPUT;
            parse_list(v, OUTPUT_NAMES, &mut p.output, &mut p.warnings)?;
            if p.output & out::LABELS != 0 {
                labelmap_init(p);
            }
            let others = out::EXT | out::TMS | out::ID | out::KTMS | out::LABELS | out::XML;
            if p.output & out::SAVE != 0 && p.output & others != 0 {
                return Err(Fail::Other(
                    "cannot combine save output with any other output type, use -o save only"
                        .into(),
                ));
            }
        }
        'z' => p.options |= opt::ZERO,
        'n' | 'g' | 'j' => {
            let bit = match c {
                'n' => opt::SRC_NAT,
                'g' => opt::DST_NAT,
                _ => opt::ANY_NAT,
            };
            p.options |= bit;
            let nat = match sc.optional_next() {
                Some(a) => parse_nat(&a, &mut p.family)?,
                None => NatArg::default(),
            };
            match c {
                'n' => p.src_nat = Some(nat),
                'g' => p.dst_nat = Some(nat),
                _ => p.any_nat = Some(nat),
            }
        }
        'w' => {
            p.options |= opt::ZONE;
            p.zone = Some(strtoul(v) as u16);
        }
        '(' => {
            p.options |= opt::ORIG_ZONE;
            p.orig_zone = Some(strtoul(v) as u16);
        }
        ')' => {
            p.options |= opt::REPL_ZONE;
            p.reply_zone = Some(strtoul(v) as u16);
        }
        'i' => {
            p.options |= opt::ID;
            p.id = Some(strtoul(v) as u32);
        }
        'c' => {
            p.options |= opt::SECMARK;
            p.secmark = Some(strtoul(v) as u32);
        }
        'm' => {
            p.options |= opt::MARK;
            let (value, mask) = match v.split_once('/') {
                Some((m, mask)) => (strtoul(m) as u32, strtoul(mask) as u32),
                None => (strtoul(v) as u32, u32::MAX),
            };
            p.mark = Some((value, mask));
        }
        'a' => p
            .warnings
            .push("WARNING: ignoring -a, deprecated option.".into()),
        'f' => {
            p.options |= opt::FAMILY;
            let fam = if v.starts_with("ipv4") {
                Family::Ipv4
            } else if v.starts_with("ipv6") {
                Family::Ipv6
            } else {
                return Err(param(format!("`{v}' unsupported protocol")));
            };
            set_family(&mut p.family, fam)?;
        }
        'b' => {
            p.options |= opt::BUFFERSIZE;
            p.buffer_size = Some(atol(v).max(0) as usize);
        }
        'l' | '<' | '>' => {
            p.options |= match c {
                'l' => opt::LABEL,
                '<' => opt::ADD_LABEL,
                _ => opt::DEL_LABEL,
            };
            labelmap_init(p);
            if p.options & (opt::ADD_LABEL | opt::DEL_LABEL) == opt::ADD_LABEL | opt::DEL_LABEL {
                return Err(Fail::Other(
                    "cannot use --label-add and --label-del at the same time".into(),
                ));
            }
            let names = if c == '>' {
                // conntrack's get_optional_arg: nothing when the option had `=VALUE`.
                if value_given {
                    None
                } else {
                    sc.optional_next()
                }
            } else {
                Some(v.to_owned())
            };
            let Some(names) = names else {
                // `--label-del` alone: delete every label.
                return Ok(());
            };
            let mut bits = BTreeSet::new();
            for name in names.split(',') {
                match p.labelmap.as_ref().and_then(|m| m.bit(name)) {
                    Some(b) => {
                        bits.insert(b);
                    }
                    None => return Err(param(format!("unknown label '{name}'"))),
                }
            }
            let set = if c == 'l' {
                &mut p.label_filter
            } else {
                &mut p.label_modify
            };
            set.get_or_insert_with(BTreeSet::new).extend(bits);
        }
        // Expectation tuples: only `-I expect` allows them, which ctscope refuses
        // later; the address is still checked here, as conntrack does.
        '[' | ']' => {
            let (bit, long) = if c == '[' {
                (opt::EXP_SRC, "tuple-src")
            } else {
                (opt::EXP_DST, "tuple-dst")
            };
            p.options |= bit;
            parse_addr_opt(long, v, true, &mut p.family)?;
        }
        _ => return Err(param(format!("unknown option `-{c}'"))),
    }
    Ok(())
}

/// conntrack's labelmap_init: load the map once; perror's line when it cannot.
fn labelmap_init(p: &mut Parsed) {
    if p.labelmap_loaded {
        return;
    }
    p.labelmap_loaded = true;
    match LabelMap::load() {
        Ok(m) => p.labelmap = Some(m),
        Err(e) => p.warnings.push(format!("nfct_labelmap_new: {e}")),
    }
}

fn parse_proto_opt(p: &mut Parsed, kind: Option<ProtoKind>, i: usize, v: &str) -> Result<(), Fail> {
    p.l4_options |= 1 << i;
    let port = || Some(atol(v) as u16);
    match kind {
        Some(ProtoKind::Ports(pp)) => match i {
            0 => p.l4.sport = port(),
            1 => p.l4.dport = port(),
            2 => p.l4.reply_sport = port(),
            3 => p.l4.reply_dport = port(),
            6 => parse_state(&mut p.l4, pp, v)?,
            PORT_EXTRA.. => parse_port_extra(&mut p.l4, pp, i, v)?,
            // Expectation mask and tuple ports: only `-I expect` allows them, which
            // ctscope refuses later; the bit makes the other commands refuse them.
            _ => {}
        },
        // GRE keys are read with strtoul (0x hex allowed); mask and tuple keys only
        // set their bit, which no conntrack command allows.
        Some(ProtoKind::Gre) => {
            let key = Some(strtoul(v) as u16);
            match i {
                0 => p.l4.sport = key,
                1 => p.l4.dport = key,
                2 => p.l4.reply_sport = key,
                3 => p.l4.reply_dport = key,
                _ => {}
            }
        }
        Some(ProtoKind::Icmp | ProtoKind::Icmpv6) => match i {
            0 => p.l4.icmp_type = Some(atol(v) as u8),
            1 => p.l4.icmp_code = Some(atol(v) as u8),
            _ => p.l4.icmp_id = Some(atol(v) as u16),
        },
        _ => {}
    }
    Ok(())
}

/// `--state NAME`: matched exactly, as conntrack's strcmp does. conntrack 1.4.7
/// crashes on an unknown SCTP state; ctscope reports it like the others.
fn parse_state(l4: &mut L4, pp: PortProto, v: &str) -> Result<(), Fail> {
    match pp {
        PortProto::Tcp => match TcpState::from_name(v).filter(|s| s.name() == v) {
            Some(s) if s.0 < 10 => l4.state = Some(s.0),
            _ => return Err(param(format!("unknown TCP state `{v}'"))),
        },
        // libnetfilter_conntrack names SCTP states up to SHUTDOWN_ACK_SENT only.
        PortProto::Sctp => match SctpState::from_name(v).filter(|s| s.name() == v) {
            Some(s) if s.0 < 8 => l4.sctp_state = Some(s.0),
            _ => return Err(param(format!("unknown SCTP state `{v}'"))),
        },
        PortProto::Dccp => match DccpState::from_name(v).filter(|s| s.name() == v) {
            Some(s) => l4.dccp_state = Some(s.0),
            None => return Err(param(format!("Unknown DCCP state `{v}'"))),
        },
        // UDP has no --state option: the scanner never yields it.
        PortProto::Udp => {}
    }
    Ok(())
}

/// SCTP's `--orig-vtag` / `--reply-vtag` (atoi) and DCCP's `--role` (a prefix of
/// `client` or `server`, any case).
fn parse_port_extra(l4: &mut L4, pp: PortProto, i: usize, v: &str) -> Result<(), Fail> {
    match (pp, i) {
        (PortProto::Sctp, PORT_EXTRA) => l4.vtag_orig = Some(atol(v) as u32),
        (PortProto::Sctp, _) => l4.vtag_reply = Some(atol(v) as u32),
        (PortProto::Dccp, _) => {
            // DCCP_CONNTRACK_ROLE_CLIENT = 0, _SERVER = 1.
            l4.dccp_role = Some(if prefix_ci(v, "client") {
                0
            } else if prefix_ci(v, "server") {
                1
            } else {
                return Err(param(format!("Unknown DCCP role `{v}'")));
            });
        }
        _ => {}
    }
    Ok(())
}

/// conntrack's checks after the loop: default family, legal combinations, protocol
/// final checks.
fn check(p: &mut Parsed, kind: Option<ProtoKind>) -> Result<(), Fail> {
    if p.options & opt::ANY_NAT != 0 && p.options & (opt::SRC_NAT | opt::DST_NAT) != 0 {
        return Err(param(
            "cannot specify `--src-nat' or `--dst-nat' with `--any-nat'",
        ));
    }
    let Some(cmd) = p.cmd else {
        // No command: conntrack prints its usage (or complains about the options).
        if p.options != 0 {
            let bit = p.options.trailing_zeros() as usize;
            return Err(param(format!(
                "Illegal option `--{}' with this command",
                OPT_NAMES[bit]
            )));
        }
        p.cmd = Some(Cmd::Help);
        p.no_command = true;
        return Ok(());
    };
    if p.family.is_none()
        && !matches!(
            cmd,
            Cmd::List | Cmd::Update | Cmd::Delete | Cmd::Get | Cmd::Flush | Cmd::Event
        )
    {
        p.family = Some(Family::Ipv4);
    }
    // The CIDR masks are bits of their own in conntrack (set by -s ADDR/BITS); they
    // are legal wherever -s/-d are for the commands that filter.
    let row = &LEGAL[cmd as usize];
    let coupled = [opt::ORIG_SRC | opt::ORIG_DST, opt::REPL_SRC | opt::REPL_DST];
    generic_check(p.options, row, &OPT_NAMES, &coupled).fold(|partial| {
        param(match partial {
            1 => "you have to specify `--reply-src' and `--reply-dst'",
            _ => "you have to specify `--src' and `--dst'",
        })
    })?;
    if cmd != Cmd::Help
        && let Some(kind) = kind
    {
        let row = kind.legal(cmd);
        let coupled = [0b0011, 0b1100];
        generic_check(p.l4_options, &row, &kind.names(), &coupled)
            .fold(|partial| param(kind.partial_message(partial == 1)))?;
    }
    Ok(())
}

/// conntrack's generic_opt_check: compulsory and illegal options (the first in bit
/// order fails), then for "3" columns an exact pair of `coupled`. `Err(Fail)` for
/// the first two, `Ok(Err(partial))`-like `Err(i32)` is folded by the caller.
fn generic_check(given: u32, row: &[u8], names: &[&str], coupled: &[u32]) -> Result<(), CheckErr> {
    let mut special = false;
    for (i, &legal) in row.iter().enumerate() {
        let set = given & (1 << i) != 0;
        if !set && legal == 1 {
            return Err(CheckErr::Fail(param(format!(
                "You need to supply the `--{}' option for this command",
                names[i]
            ))));
        }
        if set && legal == 0 {
            return Err(CheckErr::Fail(param(format!(
                "Illegal option `--{}' with this command",
                names[i]
            ))));
        }
        special |= legal == 3;
    }
    // Protocol options past the row (mask/tuple ports) are illegal too.
    let beyond = given >> row.len().min(31);
    if !row.is_empty() && beyond != 0 && row.len() < names.len() {
        let bit = row.len() + beyond.trailing_zeros() as usize;
        return Err(CheckErr::Fail(param(format!(
            "Illegal option `--{}' with this command",
            names.get(bit).copied().unwrap_or("?")
        ))));
    }
    if !special || coupled.iter().any(|c| given & c == *c) {
        return Ok(());
    }
    let partial = coupled.iter().position(|c| given & c != 0);
    Err(CheckErr::Partial(partial.map_or(-1, |i| i as i32)))
}

enum CheckErr {
    Fail(Fail),
    Partial(i32),
}

trait FoldCheck {
    fn fold(self, f: impl FnOnce(i32) -> Fail) -> Result<(), Fail>;
}

impl FoldCheck for Result<(), CheckErr> {
    fn fold(self, f: impl FnOnce(i32) -> Fail) -> Result<(), Fail> {
        match self {
            Ok(()) => Ok(()),
            Err(CheckErr::Fail(e)) => Err(e),
            Err(CheckErr::Partial(p)) => Err(f(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn err(s: &str) -> (i32, String) {
        match parse(&args(s)) {
            Ok(p) => panic!("{s:?} parsed: {p:?}"),
            Err(e) => (e.exit_code(), e.message()),
        }
    }

    #[test]
    fn netmasks_last_one_wins_and_full_prefixes_set_none() {
        let v4 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let p = parse(&args("-L -s 10.0.0.0/8 --mask-src 255.255.0.0")).unwrap();
        assert_eq!(p.mask_src, v4("255.255.0.0"));
        let p = parse(&args("-L --mask-src 255.255.0.0 -s 10.0.0.0/8")).unwrap();
        assert_eq!(p.mask_src, v4("255.0.0.0"));
        let p = parse(&args("-L --mask-dst 255.255.0.0 -d 10.0.0.1")).unwrap();
        assert_eq!(
            p.mask_dst,
            v4("255.255.0.0"),
            "-d without /BITS keeps the mask"
        );
        let p = parse(&args("-L -s 10.0.0.1/32")).unwrap();
        assert_eq!((p.mask_src, p.options & opt::MASK_SRC), (None, 0));
        let p = parse(&args("-L -s fd00:: --mask-src ffff::")).unwrap();
        assert_eq!(p.family, Some(Family::Ipv6));
        assert_eq!(
            err("-L -s 10.0.0.0 --mask-src ffff::"),
            (2, "mismatched address family".into())
        );
        assert_eq!(
            err("-L -s 10.0.0.0 --mask-src 255.0.0.0/8"),
            (2, "CIDR notation unavailable for `--mask-src'".into())
        );
    }

    #[test]
    fn list_with_table_and_filters() {
        let p = parse(&args("-L -p udp --dport 53 -s 10.0.0.0/8 -m 0x10/0xf0")).unwrap();
        assert_eq!(p.cmd, Some(Cmd::List));
        assert_eq!(p.proto, Some(17));
        assert_eq!(p.l4.dport, Some(53));
        assert_eq!(p.orig_src.unwrap().prefix, Some(8));
        assert_eq!(p.mark, Some((0x10, 0xf0)));
        assert_eq!(p.family, Some(Family::Ipv4));
        let p = parse(&args("-L expect")).unwrap();
        assert_eq!(p.cmd, Some(Cmd::ExpList));
        let p = parse(&args("-L dying -o extended,id")).unwrap();
        assert_eq!((p.cmd, p.table), (Some(Cmd::List), TableArg::Dying));
        assert_eq!(p.output, out::EXT | out::ID);
        assert_eq!(parse(&args("--dump exp")).unwrap().cmd, Some(Cmd::ExpList));
        assert_eq!(
            parse(&args("-L --src-")).unwrap().src_nat.unwrap().addr,
            None
        );
    }

    #[test]
    fn conntrack_errors() {
        assert_eq!(err("-L -D"), (2, "Invalid commands combination".into()));
        assert_eq!(
            err("-L --dport 53 -p udp"),
            (2, "unknown option `--dport'".into())
        );
        assert_eq!(err("-L --sta"), (2, "unknown option `--sta'".into()));
        assert_eq!(err("-L foo"), (2, "unknown type `foo'".into()));
        assert_eq!(err("-L -s"), (2, "option `-s' requires an argument".into()));
        assert_eq!(
            err("-L -s 10.0.0.1 -d ::1"),
            (2, "mismatched address family".into())
        );
        assert_eq!(
            err("-I -p udp -s 10.9.0.1"),
            (
                2,
                "You need to supply the `--timeout' option for this command".into()
            )
        );
        assert_eq!(
            err("-I -p udp -s 1.1.1.1 -d 2.2.2.2 -t 1"),
            (2, "you have to specify `--sport' and `--dport'".into())
        );
        assert_eq!(
            err("-I -p tcp -s 1.1.1.1 -r 2.2.2.2 -t 1 --sport 1 --dport 2 --state NONE"),
            (2, "you have to specify `--src' and `--dst'".into())
        );
        assert_eq!(
            err("-I -p tcp -s 1.1.1.1 -d 2.2.2.2 -t 1 --sport 1 --dport 2"),
            (
                2,
                "You need to supply the `--state' option for this command".into()
            )
        );
        assert_eq!(
            err("-G"),
            (
                2,
                "You need to supply the `--protonum' option for this command".into()
            )
        );
        assert_eq!(
            err("-L -t 5"),
            (2, "Illegal option `--timeout' with this command".into())
        );
        assert_eq!(
            err("-E dying"),
            (
                2,
                "Can't do that command with tables `dying' and `unconfirmed'".into()
            )
        );
        assert_eq!(err("-L -d 10.0.0.0/33"), (2, "Invalid netmask".into()));
        assert_eq!(
            err("-L -r 10.0.0.0/24"),
            (2, "CIDR notation unavailable for `--reply-src'".into())
        );
        assert_eq!(err("-L -o save,id").0, 1);
        assert_eq!(err("-L -u FOO"), (2, "Bad parameter `FOO'".into()));
        assert_eq!(
            err("-L -p tcp --state FOO"),
            (2, "unknown TCP state `FOO'".into())
        );
        assert_eq!(
            err("-L -p bogus"),
            (2, "`bogus' unsupported protocol".into())
        );
    }

    #[test]
    fn status_masks() {
        let p = parse(&args("-L -u UNREPLIED")).unwrap();
        assert_eq!((p.status, p.status_mask), (0, Status::SEEN_REPLY));
        let p = parse(&args("-L -u ASSURED,!SEEN_REPLY")).unwrap();
        assert_eq!(
            (p.status, p.status_mask),
            (Status::ASSURED, Status::SEEN_REPLY)
        );
    }

    #[test]
    fn inet_aton_forms() {
        assert_eq!(parse_inet("10.0.0"), Some("10.0.0.0".parse().unwrap()));
        assert_eq!(parse_inet("10.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_inet("10.0.0.256"), None);
        assert_eq!(parse_inet("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_inet("x"), None);
    }
}

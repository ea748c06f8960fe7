//! conntrack(8) 1.4.7's command line, parsed the way its getopt_long loop does:
//! each option read as it comes (values in [`super::values`], the scanner in
//! [`super::getopt`]), then the legal combinations checked
//! ([`super::legality`]). Errors carry conntrack's text and exit status.

use std::{collections::BTreeSet, net::IpAddr};

use ct_netlink::{DccpState, Family, SctpState, TcpState};

use super::{
    Fail,
    getopt::{Found, Scanner},
    labels::LabelMap,
    legality::{FoldCheck as _, LEGAL, OPT_NAMES, generic_check},
    options::{Key, command_for, table_of},
    param,
    proto_opts::{PORT_EXTRA, PortProto},
    values::{
        EVENT_NAMES, OUTPUT_NAMES, atol, find_proto, parse_addr_opt, parse_list, parse_nat,
        parse_status, prefix_ci, set_family, strtoul,
    },
};
pub use super::{
    options::{Cmd, TableArg, ev, opt, out},
    proto_opts::ProtoKind,
    values::{AddrArg, NatArg, parse_inet},
};

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
    let mut sc = Scanner::new(args);
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
        's' | 'd' | '{' | '}' | 'r' | 'q' | '[' | ']' => address_opt(p, c, v),
        'p' => {
            p.options |= opt::PROTO;
            let Some((num, kind)) = find_proto(v) else {
                return Err(param(format!("`{v}' unsupported protocol")));
            };
            p.proto = Some(num);
            p.proto_kind = Some(kind);
            *proto_kind = Some(kind);
            Ok(())
        }
        'n' | 'g' | 'j' => nat_opt(p, sc, c),
        'l' | '<' | '>' => label_opt(p, sc, c, v, value_given),
        _ => value_opt(p, c, v),
    }
}

/// The address options: the original tuple's (with netmasks), the reply tuple's and
/// the expectation tuple's.
fn address_opt(p: &mut Parsed, c: char, v: &str) -> Result<(), Fail> {
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
        _ => unreachable_option(c)?,
    }
    Ok(())
}

/// `-n/-g/-j [ADDR[:PORT]]`: the address is optional (conntrack's get_optional_arg).
fn nat_opt(p: &mut Parsed, sc: &mut Scanner<'_>, c: char) -> Result<(), Fail> {
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
    Ok(())
}

/// `-l NAMES`, `--label-add NAMES`, `--label-del [NAMES]`.
fn label_opt(
    p: &mut Parsed,
    sc: &mut Scanner<'_>,
    c: char,
    v: &str,
    value_given: bool,
) -> Result<(), Fail> {
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
    Ok(())
}

/// The options with one value each: numbers, flag lists, the family.
fn value_opt(p: &mut Parsed, c: char, v: &str) -> Result<(), Fail> {
    match c {
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
        _ => unreachable_option(c)?,
    }
    Ok(())
}

/// An option letter the table has but no parser handles: conntrack's default case.
fn unreachable_option(c: char) -> Result<(), Fail> {
    Err(param(format!("unknown option `-{c}'")))
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
pub(super) fn check(p: &mut Parsed, kind: Option<ProtoKind>) -> Result<(), Fail> {
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

#[cfg(test)]
mod tests {
    use ct_netlink::Status;

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
}

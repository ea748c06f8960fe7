//! conntrack's commands_v_options: which options each command requires, allows or
//! refuses, checked after the whole line is read (generic_opt_check), for the main
//! options and for the protocol's own.

use ct_netlink::Family;

use super::{
    Fail,
    options::{Cmd, opt},
    parse::Parsed,
    proto_opts::ProtoKind,
    values::param,
};

/// Option names in error messages, by bit.
pub(super) const OPT_NAMES: [&str; 29] = [
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
pub(super) const LEGAL: [[u8; 29]; 20] = [
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

/// conntrack's generic_opt_check: compulsory and illegal options (the first in bit
/// order fails), then for "3" columns an exact pair of `coupled`. `Err(Fail)` for
/// the first two, `Ok(Err(partial))`-like `Err(i32)` is folded by the caller.
pub(super) fn generic_check(
    given: u32,
    row: &[u8],
    names: &[&str],
    coupled: &[u32],
) -> Result<(), CheckErr> {
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

pub(super) enum CheckErr {
    Fail(Fail),
    Partial(i32),
}

pub(super) trait FoldCheck {
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

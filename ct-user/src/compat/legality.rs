//! conntrack's commands_v_options: which options each command requires, allows or
//! refuses, checked after the whole line is read (generic_opt_check), for the main
//! options and for the protocol's own.

use super::{Fail, param};

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

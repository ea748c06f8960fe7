//! conntrack(8) 1.4.7's tables: its commands and option bits (in its `CT_*` order),
//! the `-o`/`-e` flags, the long-option table with the short letters and argument
//! kinds of its getopt string, and the command a letter and table word make.

use super::{Fail, param};

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
pub(super) enum HasArg {
    No,
    Required,
    /// Taken from the next argument when it does not start with `-` or `!`.
    Optional,
}

/// What an option does once recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Command(char),
    Opt(char),
    /// A protocol option: index into the protocol's option names.
    Proto(usize),
    /// ctscope's own `--netns NS`.
    Netns,
}

pub(super) struct OptDef {
    pub(super) long: &'static str,
    pub(super) short: Option<char>,
    pub(super) arg: HasArg,
    pub(super) key: Key,
}

pub(super) const fn o(long: &'static str, short: Option<char>, arg: HasArg, key: Key) -> OptDef {
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
pub(super) const GETOPT: &str =
    ":L::I::U::D::G::E::F::A::hVs:d:r:q:p:t:u:e:a:z[:]:{:}:m:i:f:o:n::g::c:b:C::Sj::w:l:<:>::(:):";

/// How short option `c` takes its argument, from [`GETOPT`].
pub(super) fn short_arg(c: char) -> HasArg {
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
pub(super) const OPTS: &[OptDef] = &[
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

/// The table word after a command (`-L expect`), taken like conntrack's check_type.
pub(super) fn table_of(word: Option<&str>) -> Result<TableArg, Fail> {
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

pub(super) fn command_for(c: char, table: TableArg) -> Result<Cmd, Fail> {
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

//! The option scanner: getopt_long as conntrack calls it, with its error texts.
//! Short options cluster (`-Lz`) and take their argument attached or next; long
//! options take unique prefixes and `--opt=value`; protocol options exist only once
//! `-p` named a protocol that has them.

use super::{
    Fail,
    options::{HasArg, Key, OPTS, short_arg},
    param,
    proto_opts::ProtoKind,
};

/// What the option scanner found next.
pub(super) enum Found {
    Known(Key, Option<String>),
    /// An argument that is not an option (skipped, as getopt permutes it away).
    Positional,
}

pub(super) struct Scanner<'a> {
    args: &'a [String],
    /// Next argument to look at.
    idx: usize,
    /// Inside a cluster of short options: the rest of it.
    cluster: Option<(usize, usize)>,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(args: &'a [String]) -> Self {
        Scanner {
            args,
            idx: 0,
            cluster: None,
        }
    }

    /// `get_optional_arg`: the next argument unless it looks like an option.
    pub(super) fn optional_next(&mut self) -> Option<String> {
        let next = self.args.get(self.idx)?;
        if next.starts_with('-') || next.starts_with('!') {
            return None;
        }
        self.idx += 1;
        Some(next.clone())
    }

    /// The next option (and its argument as getopt_long would give it).
    pub(super) fn next(&mut self, proto: Option<ProtoKind>) -> Result<Option<Found>, Fail> {
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

    pub(super) fn long(
        &mut self,
        body: &str,
        whole: &str,
        proto: Option<ProtoKind>,
    ) -> Result<Found, Fail> {
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

    pub(super) fn short(&mut self, arg_i: usize, pos: usize) -> Result<Found, Fail> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::proto_opts::PortProto;

    /// Every option of `line` as (key, value), or the first error's message.
    fn scan(line: &str, proto: Option<ProtoKind>) -> Result<Vec<(Key, Option<String>)>, String> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let mut sc = Scanner::new(&args);
        let mut found = Vec::new();
        loop {
            match sc.next(proto) {
                Ok(Some(Found::Known(k, v))) => found.push((k, v)),
                Ok(Some(Found::Positional)) => {}
                Ok(None) => return Ok(found),
                Err(e) => return Err(e.message()),
            }
        }
    }

    fn one(k: Key, v: Option<&str>) -> Vec<(Key, Option<String>)> {
        vec![(k, v.map(str::to_owned))]
    }

    #[test]
    fn long_options_exact_abbreviated_and_inline() {
        assert_eq!(scan("--dump", None), Ok(one(Key::Command('L'), None)));
        assert_eq!(
            scan("--orig-s 10.0.0.1", None),
            Ok(one(Key::Opt('s'), Some("10.0.0.1")))
        );
        assert_eq!(
            scan("--src=10.0.0.1", None),
            Ok(one(Key::Opt('s'), Some("10.0.0.1")))
        );
        // A prefix of two different options (`--src`, `--src-nat`) is unknown.
        assert_eq!(
            scan("--sr 1.2.3.4", None),
            Err("unknown option `--sr'".into())
        );
        assert_eq!(scan("--orig", None), Err("unknown option `--orig'".into()));
        assert_eq!(
            scan("--zero=1", None),
            Err("unknown option `--zero=1'".into())
        );
        // An optional argument is only taken inline.
        assert_eq!(scan("--src-nat", None), Ok(one(Key::Opt('n'), None)));
        assert_eq!(
            scan("--src-nat=1.2.3.4", None),
            Ok(one(Key::Opt('n'), Some("1.2.3.4")))
        );
    }

    #[test]
    fn short_options_clustered_and_attached() {
        assert_eq!(
            scan("-zL", None),
            Ok(vec![(Key::Opt('z'), None), (Key::Command('L'), None)])
        );
        // -L takes an optional argument: attached, it is the argument.
        assert_eq!(
            scan("-Lexpect", None),
            Ok(one(Key::Command('L'), Some("expect")))
        );
        assert_eq!(scan("-p6", None), Ok(one(Key::Opt('p'), Some("6"))));
        assert_eq!(scan("-p tcp", None), Ok(one(Key::Opt('p'), Some("tcp"))));
        // The symbols of conntrack's getopt string are short options too.
        assert_eq!(
            scan("-{ 255.0.0.0", None),
            Ok(one(Key::Opt('{'), Some("255.0.0.0")))
        );
        assert_eq!(scan("-X", None), Err("unknown option `-X'".into()));
    }

    #[test]
    fn missing_arguments_use_conntracks_text() {
        assert_eq!(
            scan("-s", None),
            Err("option `-s' requires an argument".into())
        );
        assert_eq!(
            scan("--src", None),
            Err("option `--src' requires an argument".into())
        );
        // `-i` needs a value although `--id`'s is optional.
        assert_eq!(
            scan("-i", None),
            Err("option `-i' requires an argument".into())
        );
        assert_eq!(scan("--id", None), Ok(one(Key::Opt('i'), None)));
    }

    #[test]
    fn protocol_options_need_their_protocol() {
        let udp = Some(ProtoKind::Ports(PortProto::Udp));
        assert_eq!(
            scan("--dport 53", None),
            Err("unknown option `--dport'".into())
        );
        assert_eq!(scan("--dport 53", udp), Ok(one(Key::Proto(1), Some("53"))));
        assert_eq!(
            scan("--state X", udp),
            Err("unknown option `--state'".into())
        );
        assert_eq!(
            scan("--srck 5", Some(ProtoKind::Gre)),
            Ok(one(Key::Proto(0), Some("5")))
        );
    }

    #[test]
    fn double_dash_ends_and_words_are_skipped() {
        assert_eq!(scan("word -z -- -L", None), Ok(vec![(Key::Opt('z'), None)]));
    }
}

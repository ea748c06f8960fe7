//! Option values as conntrack reads them: C's strtoul/atoi, inet_aton's address
//! forms, protocol names, the comma lists of `-u`/`-e`/`-o`, addresses with `/BITS`
//! and NAT `ADDR[:PORT]`.

use std::net::IpAddr;

use ct_netlink::{Family, Status, proto};

use super::{
    Fail,
    options::{ev, out},
    param,
    proto_opts::ProtoKind,
};

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

/// C's strtoul(s, NULL, 0): leading digits, 0x hex, 0 octal; a leading `-` negates
/// (modulo 2^64, so `-1` is all ones, as in C).
pub(super) fn strtoul(s: &str) -> u64 {
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
pub(super) fn atol(s: &str) -> i64 {
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
pub(super) fn find_proto(name: &str) -> Option<(u8, ProtoKind)> {
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

pub(super) fn find_proto_num(name: &str) -> Option<u8> {
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

pub(super) fn set_family(cur: &mut Option<Family>, new: Family) -> Result<(), Fail> {
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
pub(super) fn prefix_ci(token: &str, name: &str) -> bool {
    name.len() >= token.len() && name[..token.len()].eq_ignore_ascii_case(token)
}

/// Returns false for an unknown token. SRC_NAT/DST_NAT warn and count as known.
pub(super) fn parse_token(
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

pub(super) const STATUS_NAMES: &[(&str, u32)] = &[
    ("ASSURED", Status::ASSURED),
    ("SEEN_REPLY", Status::SEEN_REPLY),
    ("UNSET", 0),
    ("FIXED_TIMEOUT", Status::FIXED_TIMEOUT),
    ("EXPECTED", Status::EXPECTED),
    ("OFFLOAD", Status::OFFLOAD),
    ("HW_OFFLOAD", Status::HW_OFFLOAD),
];
pub(super) const EVENT_NAMES: &[(&str, u32)] = &[
    ("ALL", ev::ALL),
    ("NEW", ev::NEW),
    ("UPDATES", ev::UPDATE),
    ("DESTROY", ev::DESTROY),
];
pub(super) const OUTPUT_NAMES: &[(&str, u32)] = &[
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
pub(super) fn parse_list(
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
pub(super) fn parse_status(
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
pub(super) fn parse_addr_opt(
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
pub(super) fn parse_nat(arg: &str, family: &mut Option<Family>) -> Result<NatArg, Fail> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_aton_forms() {
        assert_eq!(parse_inet("10.0.0"), Some("10.0.0.0".parse().unwrap()));
        assert_eq!(parse_inet("10.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_inet("10.0.0.256"), None);
        assert_eq!(parse_inet("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_inet("x"), None);
    }

    #[test]
    fn strtoul_like_c() {
        assert_eq!(strtoul("0x10"), 16);
        assert_eq!(strtoul("010"), 8);
        assert_eq!(strtoul("-1") as u32, u32::MAX);
        assert_eq!(strtoul("12abc"), 12);
        assert_eq!(strtoul("x"), 0);
    }
}

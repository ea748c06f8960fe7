//! conntrack's output forms on top of [`crate::table_text`]: `-o extended` (layer-3
//! column), `-o id`, `-o save` (the entry as conntrack arguments), the `-E` event
//! prefix, and expectation lines.

use std::fmt::Write as _;

use ct_netlink::{Entry, EventKind, Expectation, Family, Status, Tuple, proto};

use super::parse::out;
use crate::table_text;

/// `ipv4     2 ` / `ipv6     10 ` (`-o extended`).
fn layer3(f: Family) -> String {
    let num = match f {
        Family::Ipv4 => 2,
        Family::Ipv6 => 10,
    };
    format!("{:<8} {num} ", f.name())
}

/// `[NEW]`-style event type, right-aligned in 9 columns as libnetfilter_conntrack
/// prints it.
pub fn event_type(kind: EventKind) -> String {
    format!("{:>9} ", format!("[{}]", kind.name()))
}

/// One entry as -L, -G, -D and -U print it, with the `-o` flags (not save).
pub fn entry(e: &Entry, output: u32, now: u64) -> String {
    if output & out::SAVE != 0 {
        return save(e, "-A");
    }
    let mut s = String::new();
    if output & out::EXT != 0 {
        s.push_str(&layer3(e.family));
    }
    s.push_str(&table_text::entry_line(e, now));
    if output & out::ID != 0
        && let Some(id) = e.id
    {
        let _ = write!(s, " id={id}");
    }
    s
}

/// A line of -D: as -L prints it, or `-D ...` with `-o save`.
pub fn deleted(e: &Entry, output: u32, now: u64) -> String {
    if output & out::SAVE != 0 {
        return save(e, "-D");
    }
    entry(e, output, now)
}

/// One `-E` line (without the userspace suffix conntrack adds for events that
/// userspace caused).
pub fn event(kind: EventKind, e: &Entry, output: u32, now: u64) -> String {
    if output & out::SAVE != 0 {
        let op = match kind {
            EventKind::New => "-A",
            EventKind::Update => "-U",
            EventKind::Destroy => "-D",
        };
        return save(e, op);
    }
    let mut s = event_type(kind);
    s.push_str(&entry(e, output, now));
    s
}

/// libnetfilter_conntrack's NAT tests (NFCT_GOPT_IS_SNAT and friends).
pub fn is_snat(e: &Entry) -> bool {
    e.status.contains(Status::SRC_NAT_DONE) && e.reply.dst != e.orig.src
}
pub fn is_dnat(e: &Entry) -> bool {
    e.status.contains(Status::DST_NAT_DONE) && e.reply.src != e.orig.dst
}
pub fn is_spat(e: &Entry) -> bool {
    e.status.contains(Status::SRC_NAT_DONE) && e.reply.dst_port != e.orig.src_port
}
pub fn is_dpat(e: &Entry) -> bool {
    e.status.contains(Status::DST_NAT_DONE) && e.reply.src_port != e.orig.dst_port
}

/// `-o save`: the entry as the conntrack arguments that would recreate it.
fn save(e: &Entry, op: &str) -> String {
    let mut s = format!("{op} ");
    if let Some(t) = e.timeout {
        let _ = write!(s, "-t {t} ");
    }
    // conntrack's status map for save: only these bits, in bit order.
    let names: Vec<&str> = [
        (Status::EXPECTED, "EXPECTED"),
        (Status::SEEN_REPLY, "SEEN_REPLY"),
        (Status::ASSURED, "ASSURED"),
        (Status::FIXED_TIMEOUT, "FIXED_TIMEOUT"),
    ]
    .into_iter()
    .filter(|(bit, _)| e.status.contains(*bit))
    .map(|(_, n)| n)
    .collect();
    let status = if names.is_empty() {
        "UNSET".to_owned()
    } else {
        names.join(",")
    };
    let _ = write!(s, "-u {status} ");
    if let Some(m) = e.secmark {
        let _ = write!(s, "-c {m} ");
    }
    if let Some(z) = e.zone {
        let _ = write!(s, "-w {z} ");
    }
    if let Some(z) = e.orig.zone {
        let _ = write!(s, "--orig-zone {z} ");
    }
    if let Some(z) = e.reply.zone {
        let _ = write!(s, "--reply-zone {z} ");
    }
    let _ = write!(s, "-s {} -d {} ", e.orig.src, e.orig.dst);
    let r = if is_dnat(e) { "-g" } else { "-r" };
    let q = if is_snat(e) { "-n" } else { "-q" };
    let _ = write!(s, "{r} {} {q} {} ", e.reply.src, e.reply.dst);
    match e.proto {
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP => {
            let _ = write!(
                s,
                "-p {} --sport {} --dport {} --reply-port-src {} --reply-port-dst {} ",
                proto::name(e.proto),
                e.orig.src_port.unwrap_or(0),
                e.orig.dst_port.unwrap_or(0),
                e.reply.src_port.unwrap_or(0),
                e.reply.dst_port.unwrap_or(0)
            );
            if let Some(tcp) = &e.tcp {
                let _ = write!(s, "--state {} ", tcp.state.name());
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let v6 = if e.proto == proto::ICMPV6 { "v6" } else { "" };
            let _ = write!(
                s,
                "-p {} --icmp{v6}-type {} --icmp{v6}-code {} --icmp{v6}-id {} ",
                proto::name(e.proto),
                e.orig.icmp_type.unwrap_or(0),
                e.orig.icmp_code.unwrap_or(0),
                e.orig.icmp_id.unwrap_or(0)
            );
        }
        proto::GRE => s.push_str("-p gre "),
        other => {
            let _ = write!(s, "-p {other} ");
        }
    }
    s.truncate(s.trim_end().len());
    s
}

/// `src= dst= ` and the layer-4 part of a tuple, as in expectation lines.
fn exp_tuple(s: &mut String, t: &Tuple, prefix: &str) {
    let _ = write!(s, "{prefix}src={} {prefix}dst={} ", t.src, t.dst);
    crate::table_text::push_l4(s, t, false);
}

/// One `conntrack -L expect` line (libnetfilter_conntrack's default expectation
/// printer).
pub fn expectation(x: &Expectation) -> String {
    let mut s = String::new();
    if let Some(t) = x.timeout {
        let _ = write!(s, "{t} ");
    }
    let _ = write!(s, "proto={} ", x.tuple.proto);
    exp_tuple(&mut s, &x.tuple, "");
    if let Some(m) = &x.mask {
        exp_tuple(&mut s, m, "mask-");
    }
    exp_tuple(&mut s, &x.master, "master-");
    if let Some(z) = x.zone {
        let _ = write!(s, "zone={z} ");
    }
    let flags = x.flags.unwrap_or(0);
    for (bit, name) in [(1, "PERMANENT"), (2, "INACTIVE"), (4, "USERSPACE")] {
        if flags & bit != 0 {
            let _ = write!(s, "{name} ");
        }
    }
    if let Some(c) = x.class {
        let _ = write!(s, "class={c} ");
    }
    if let Some(h) = &x.helper {
        let _ = write!(s, "helper={h} ");
    }
    if let Some(f) = &x.function {
        let _ = write!(s, "fn={f} ");
    }
    s.truncate(s.trim_end().len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_netlink::{TcpInfo, TcpState};

    fn udp() -> Entry {
        let orig = Tuple::ports(
            proto::UDP,
            "10.9.0.1".parse().unwrap(),
            "10.9.0.2".parse().unwrap(),
            1,
            53,
        );
        Entry {
            status: Status(Status::CONFIRMED),
            timeout: Some(99),
            mark: Some(0),
            use_count: Some(1),
            id: Some(1351222991),
            ..Entry::new(orig.clone(), orig.inverted())
        }
    }

    #[test]
    fn extended_and_id() {
        let e = udp();
        assert_eq!(
            entry(&e, out::EXT | out::ID, 0),
            "ipv4     2 udp      17 99 src=10.9.0.1 dst=10.9.0.2 sport=1 dport=53 [UNREPLIED] \
             src=10.9.0.2 dst=10.9.0.1 sport=53 dport=1 mark=0 use=1 id=1351222991"
        );
    }

    #[test]
    fn save_lines() {
        assert_eq!(
            entry(&udp(), out::SAVE, 0),
            "-A -t 99 -u UNSET -s 10.9.0.1 -d 10.9.0.2 -r 10.9.0.2 -q 10.9.0.1 -p udp \
             --sport 1 --dport 53 --reply-port-src 53 --reply-port-dst 1"
        );
        let mut e = udp();
        e.proto = proto::TCP;
        e.orig.proto = proto::TCP;
        e.reply.proto = proto::TCP;
        e.status = Status(Status::CONFIRMED | Status::ASSURED);
        e.tcp = Some(TcpInfo {
            state: TcpState(3),
            wscale_orig: None,
            wscale_reply: None,
            flags_orig: None,
            flags_reply: None,
        });
        assert!(
            entry(&e, out::SAVE, 0).ends_with("--reply-port-dst 1 --state ESTABLISHED"),
            "{}",
            entry(&e, out::SAVE, 0)
        );
        assert!(entry(&e, out::SAVE, 0).starts_with("-A -t 99 -u ASSURED -s"));
    }

    #[test]
    fn event_prefix() {
        assert_eq!(event_type(EventKind::New), "    [NEW] ");
        assert_eq!(event_type(EventKind::Destroy), "[DESTROY] ");
    }
}

//! conntrack's output forms on top of [`crate::render::conntrack_text`]: `-o extended` (layer-3
//! column), `-o id`, `-o save` (the entry as conntrack arguments), the `-E` event
//! prefix, and expectation lines.

use std::fmt::Write as _;

use ct_netlink::{Entry, EventKind, Expectation, Family, Status, Tuple, proto};

use super::parse::out;
use crate::render::conntrack_text;

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
    s.push_str(&conntrack_text::entry_line(e, now));
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
        proto::GRE => {
            let _ = write!(
                s,
                "-p gre --srckey {} --dstkey {} --reply-key-src {} --reply-key-dst {} ",
                e.orig.src_port.unwrap_or(0),
                e.orig.dst_port.unwrap_or(0),
                e.reply.src_port.unwrap_or(0),
                e.reply.dst_port.unwrap_or(0)
            );
        }
        other => {
            let _ = write!(s, "-p {other} ");
        }
    }
    s.truncate(s.trim_end().len());
    s
}

/// C's ctime() without the newline, in local time: `Sun Nov  2 08:21:51 2026`.
pub fn ctime(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: tm is plain data; localtime_r writes it and reads only `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return "?".into();
    }
    format!(
        "{} {}{:3} {:02}:{:02}:{:02} {}",
        DAYS.get(tm.tm_wday as usize).unwrap_or(&"???"),
        MONTHS.get(tm.tm_mon as usize).unwrap_or(&"???"),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        1900 + i64::from(tm.tm_year)
    )
}

/// `-o ktimestamp` in text: ` [start=...] [stop=...]` after `delta-time=N`
/// (libnetfilter_conntrack prints them between delta-time and helper/use).
pub fn with_ktimestamp(line: String, e: &Entry) -> String {
    let Some(ts) = e.timestamp else {
        return line;
    };
    let mut add = format!(" [start={}]", ctime((ts.start / 1_000_000_000) as i64));
    if let Some(stop) = ts.stop {
        let _ = write!(add, " [stop={}]", ctime((stop / 1_000_000_000) as i64));
    }
    let Some(at) = line.find(" delta-time=") else {
        return line;
    };
    let end = line[at + 1..].find(' ').map_or(line.len(), |i| at + 1 + i);
    let mut out = line;
    out.insert_str(end, &add);
    out
}

/// The XML document conntrack opens before its first flow.
pub const XML_HEADER: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<conntrack>";
pub const XML_FOOTER: &str = "</conntrack>";

/// What a `<flow>` element shows beyond the entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct XmlOpts {
    /// `-o ktimestamp`: `<timestamp><start>` / `<stop>`.
    pub ktimestamp: bool,
    /// `-E -o xml,timestamp`: `<when>` with the local time.
    pub when: bool,
}

fn xml_tuple(s: &mut String, t: &Tuple, dir: &str, counters: Option<ct_netlink::Counters>) {
    let (l3num, l3name) = match Family::of(&t.src) {
        Family::Ipv4 => (2, "ipv4"),
        Family::Ipv6 => (10, "ipv6"),
    };
    let _ = write!(
        s,
        "<meta direction=\"{dir}\"><layer3 protonum=\"{l3num}\" protoname=\"{l3name}\">\
         <src>{}</src><dst>{}</dst></layer3><layer4 protonum=\"{}\" protoname=\"{}\">",
        t.src,
        t.dst,
        t.proto,
        proto::name(t.proto)
    );
    match t.proto {
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP => {
            let _ = write!(
                s,
                "<sport>{}</sport><dport>{}</dport>",
                t.src_port.unwrap_or(0),
                t.dst_port.unwrap_or(0)
            );
        }
        proto::GRE => {
            let _ = write!(
                s,
                "<srckey>{:#x}</srckey><dstkey>{:#x}</dstkey>",
                t.src_port.unwrap_or(0),
                t.dst_port.unwrap_or(0)
            );
        }
        _ => {}
    }
    s.push_str("</layer4>");
    if let Some(z) = t.zone {
        let _ = write!(s, "<zone>{z}</zone>");
    }
    if let Some(c) = counters {
        let _ = write!(
            s,
            "<counters><packets>{}</packets><bytes>{}</bytes></counters>",
            c.packets, c.bytes
        );
    }
    s.push_str("</meta>");
}

/// One `<flow>` element as libnetfilter_conntrack's XML printer writes it (one line).
/// `labels`: the label names, when the label map is loaded.
pub fn xml_flow(
    e: &Entry,
    kind: Option<EventKind>,
    opts: XmlOpts,
    labels: Option<Vec<String>>,
    now: u64,
) -> String {
    let mut s = String::with_capacity(600);
    match kind {
        Some(EventKind::New) => s.push_str("<flow type=\"new\">"),
        Some(EventKind::Update) => s.push_str("<flow type=\"update\">"),
        Some(EventKind::Destroy) => s.push_str("<flow type=\"destroy\">"),
        None => s.push_str("<flow>"),
    }
    // Counters of both directions are shown when the original's are there.
    let reply_counters = e
        .counters_orig
        .map(|_| e.counters_reply.unwrap_or_default());
    xml_tuple(&mut s, &e.orig, "original", e.counters_orig);
    xml_tuple(&mut s, &e.reply, "reply", reply_counters);
    s.push_str("<meta direction=\"independent\">");
    // libnetfilter_conntrack names SCTP and DCCP states from its TCP table here.
    for st in [
        e.tcp.as_ref().map(|t| t.state.0),
        e.sctp.as_ref().map(|t| t.state.0),
        e.dccp.as_ref().map(|t| t.state.0),
    ]
    .into_iter()
    .flatten()
    {
        let name = if st < 10 {
            ct_netlink::TcpState(st).name()
        } else {
            "NONE"
        };
        let _ = write!(s, "<state>{name}</state>");
    }
    if let Some(t) = e.timeout {
        let _ = write!(s, "<timeout>{t}</timeout>");
    }
    if let Some(m) = e.mark {
        let _ = write!(s, "<mark>{m}</mark>");
    }
    if let Some(names) = labels {
        s.push_str("<labels>");
        for n in names {
            let _ = write!(s, "<label>{n}</label>");
        }
        s.push_str("</labels>");
    }
    if let Some(m) = e.secmark {
        let _ = write!(s, "<secmark>{m}</secmark>");
    }
    if let Some(c) = &e.secctx {
        let _ = write!(s, "<secctx>{c}</secctx>");
    }
    if let Some(z) = e.zone {
        let _ = write!(s, "<zone>{z}</zone>");
    }
    if let Some(u) = e.use_count {
        let _ = write!(s, "<use>{u}</use>");
    }
    if let Some(id) = e.id {
        let _ = write!(s, "<id>{id}</id>");
    }
    if e.status.is_assured() {
        s.push_str("<assured/>");
    }
    if e.status.is_unreplied() {
        s.push_str("<unreplied/>");
    }
    if let Some(ts) = e.timestamp {
        if opts.ktimestamp {
            let _ = write!(s, "<timestamp><start>{}</start>", ts.start);
            if let Some(stop) = ts.stop {
                let _ = write!(s, "<stop>{stop}</stop>");
            }
            s.push_str("</timestamp>");
        }
        let delta = match ts.stop {
            Some(stop) => stop.wrapping_sub(ts.start) / 1_000_000_000,
            None => now.wrapping_sub(ts.start / 1_000_000_000),
        };
        let _ = write!(s, "<deltatime>{delta}</deltatime>");
    }
    s.push_str("</meta>");
    if opts.when {
        xml_when(&mut s);
    }
    if let Some(h) = &e.helper {
        let _ = write!(s, "<helper>{h}</helper>");
    }
    s.push_str("</flow>");
    s
}

/// `<when>` with the local time now.
fn xml_when(s: &mut String) {
    let t = crate::clock::unix_secs() as libc::time_t;
    // SAFETY: as in ctime().
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return;
    }
    let _ = write!(
        s,
        "<when><hour>{}</hour><min>{:02}</min><sec>{:02}</sec><wday>{}</wday><day>{}</day>\
         <month>{}</month><year>{}</year></when>",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_wday + 1,
        tm.tm_mday,
        tm.tm_mon + 1,
        1900 + i64::from(tm.tm_year)
    );
}

/// `src= dst= ` and the layer-4 part of a tuple, as in expectation lines.
fn exp_tuple(s: &mut String, t: &Tuple, prefix: &str) {
    let _ = write!(s, "{prefix}src={} {prefix}dst={} ", t.src, t.dst);
    crate::render::conntrack_text::push_l4(s, t, false);
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
    fn xml_flow_and_ktimestamp() {
        let mut e = udp();
        e.timestamp = Some(ct_netlink::Timestamps {
            start: 5_000_000_000,
            stop: Some(7_500_000_000),
        });
        assert_eq!(
            xml_flow(
                &e,
                Some(EventKind::Destroy),
                XmlOpts {
                    ktimestamp: true,
                    when: false
                },
                Some(vec!["a".into()]),
                0
            ),
            "<flow type=\"destroy\"><meta direction=\"original\"><layer3 protonum=\"2\" \
             protoname=\"ipv4\"><src>10.9.0.1</src><dst>10.9.0.2</dst></layer3><layer4 \
             protonum=\"17\" protoname=\"udp\"><sport>1</sport><dport>53</dport></layer4>\
             </meta><meta direction=\"reply\"><layer3 protonum=\"2\" protoname=\"ipv4\">\
             <src>10.9.0.2</src><dst>10.9.0.1</dst></layer3><layer4 protonum=\"17\" \
             protoname=\"udp\"><sport>53</sport><dport>1</dport></layer4></meta><meta \
             direction=\"independent\"><timeout>99</timeout><mark>0</mark><labels><label>a\
             </label></labels><use>1</use><id>1351222991</id><unreplied/><timestamp><start>\
             5000000000</start><stop>7500000000</stop></timestamp><deltatime>2</deltatime>\
             </meta></flow>"
        );
        let line = with_ktimestamp("udp 17 1 delta-time=2 use=1".into(), &e);
        assert!(line.starts_with("udp 17 1 delta-time=2 [start="), "{line}");
        assert!(line.ends_with("] use=1"), "{line}");
        assert_eq!(line.matches("[st").count(), 2);
    }

    #[test]
    fn event_prefix() {
        assert_eq!(event_type(EventKind::New), "    [NEW] ");
        assert_eq!(event_type(EventKind::Destroy), "[DESTROY] ");
    }
}

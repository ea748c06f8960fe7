//! Carrying out a parsed conntrack command over ct-netlink, with conntrack's output,
//! summaries and exit statuses.

use std::{
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use ct_netlink::{
    Conntrack, DumpFilter, Entry, Event, EventGroups, EventKind, EventListener, Expectation,
    ListenerOptions, NatRange, NewEntry, Status, Table, TcpState, Tuple, Update, proto,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    caps::{self, Cap},
    netns,
};

use super::{
    Fail, labels,
    output::{self, is_dnat, is_dpat, is_snat, is_spat},
    parse::{AddrArg, Cmd, NatArg, Parsed, ProtoKind, TableArg, ev, opt, out},
    prefix,
};
use crate::stdout::CStdout;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// conntrack's err2str: its own wording for some errno values per command.
fn err2str(cmd: Cmd, e: &ct_netlink::Error) -> String {
    let creates = matches!(cmd, Cmd::Create | Cmd::Add);
    match e.errno() {
        Some(libc::EINVAL) if (cmd as u32) < 16 => "invalid parameters".into(),
        Some(libc::EEXIST) if cmd == Cmd::Create => {
            "Such conntrack exists, try -U to update".into()
        }
        Some(libc::ENOENT) if creates || matches!(cmd, Cmd::Get | Cmd::Delete) => {
            "such conntrack doesn't exist".into()
        }
        Some(libc::ENOENT) if cmd == Cmd::ExpCreate => "master conntrack not found".into(),
        Some(libc::ENOMEM) if creates || cmd == Cmd::Get => "not enough memory".into(),
        Some(libc::ETIME) if creates => "conntrack has expired".into(),
        Some(libc::EPERM) => {
            "sorry, you must be root or get CAP_NET_ADMIN capability to do this".into()
        }
        Some(n) => io::Error::from_raw_os_error(n)
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => e.to_string(),
    }
}

fn failed(cmd: Cmd) -> impl Fn(ct_netlink::Error) -> Fail {
    move |e| Fail::Other(format!("Operation failed: {}", err2str(cmd, &e)))
}

/// conntrack's print_stats: the summary on stderr; exit 1 when nothing was affected
/// (except for listings).
fn summary(p: &Parsed, cmd: Cmd, counter: usize) -> Result<(), Fail> {
    // -R (load-file) prints no summaries and goes on when nothing matched.
    if p.batch {
        return Ok(());
    }
    let what = match cmd {
        Cmd::List | Cmd::Get => "flow entries have been shown.",
        Cmd::Create => "flow entries have been created.",
        Cmd::Update => "flow entries have been updated.",
        Cmd::Delete => "flow entries have been deleted.",
        Cmd::Add => "flow entries have been added.",
        Cmd::ExpList | Cmd::ExpDelete => "expectations have been shown.",
        _ => return Ok(()),
    };
    eprintln!("{}{counter} {what}", prefix());
    if counter == 0 && !matches!(cmd, Cmd::List | Cmd::ExpList) {
        return Err(Fail::Quiet);
    }
    Ok(())
}

fn stdout_line(out: &mut impl Write, line: &str) -> Result<(), Fail> {
    stdout_text(out, &format!("{line}\n"))
}

/// A write to conntrack's stdout. A closed pipe never returns here: SIGPIPE ends the
/// process, as it ends conntrack.
fn stdout_text(out: &mut impl Write, text: &str) -> Result<(), Fail> {
    out.write_all(text.as_bytes())
        .map_err(|e| Fail::Other(format!("write error: {e}")))
}

/// Runs one command, writing its stdout to `so` (flushed by the caller when conntrack
/// would flush it: at exit).
pub async fn run(p: &Parsed, so: &mut CStdout) -> Result<(), Fail> {
    let cmd = p.cmd.unwrap_or(Cmd::Help);
    match cmd {
        Cmd::Version => {
            let version = format!("conntrack v{} (conntrack-tools)", super::VERSION);
            return stdout_line(so, &version);
        }
        Cmd::Help => {
            stdout_text(so, &usage())?;
            // `-h -p PROTO` adds the protocol's options.
            return match p.proto.filter(|_| p.options & opt::PROTO != 0) {
                Some(num) => {
                    let kind = p.proto_kind.unwrap_or(ProtoKind::Other);
                    stdout_text(so, &super::proto_help::text(num, kind))
                }
                None => Ok(()),
            };
        }
        Cmd::ExpCreate | Cmd::ExpEvent => {
            return Err(Fail::Unsupported(
                "-I expect and -E expect (use `ctscope expect`)".into(),
            ));
        }
        Cmd::ExpList | Cmd::ExpGet if xml(p) => {
            return Err(Fail::Unsupported("-o xml for expectations".into()));
        }
        Cmd::Create | Cmd::Add | Cmd::Update if sets_sctp_dccp_info(p) => {
            return Err(Fail::Unsupported(
                "setting SCTP or DCCP protocol info (--state, --orig-vtag, --reply-vtag, --role)"
                    .into(),
            ));
        }
        _ => {}
    }
    let mut ct = open(p)?;
    match cmd {
        Cmd::List => {
            // conntrack hands `-u` to the kernel's dump filter, which refuses an
            // empty status mask (`-u UNSET`, or only SRC_NAT/DST_NAT).
            if p.table == TableArg::Conntrack
                && p.options & opt::STATUS != 0
                && p.status | p.status_mask == 0
            {
                return Err(Fail::Other("Operation failed: invalid parameters".into()));
            }
            if p.table == TableArg::Conntrack
                && p.options & opt::COMPARISON != 0
                && p.options & opt::ZERO != 0
            {
                return Err(Fail::Param("Can't use -z with filtering parameters".into()));
            }
            if p.table == TableArg::Conntrack {
                check_masks(p)?;
            }
            let table = match p.table {
                TableArg::Dying => Table::Dying,
                TableArg::Unconfirmed => Table::Unconfirmed,
                _ => Table::Conntrack,
            };
            let plain = table == Table::Conntrack;
            let f = DumpFilter {
                family: p.family.filter(|_| plain),
                table,
                mark: p.mark.filter(|_| plain),
                zero_counters: p.options & opt::ZERO != 0,
                ..DumpFilter::default()
            };
            let entries = ct.dump_filtered(&f).await.map_err(failed(cmd))?;
            let now = now();
            let mut counter = 0;
            for e in entries.iter().filter(|e| matches(p, e)) {
                if counter == 0 && xml(p) {
                    stdout_line(so, output::XML_HEADER)?;
                }
                stdout_line(so, &render(p, e, now, Printer::Dump))?;
                counter += 1;
            }
            // conntrack closes the document only for the main table.
            if counter > 0 && xml(p) && plain {
                stdout_line(so, output::XML_FOOTER)?;
            }
            summary(p, cmd, counter)
        }
        Cmd::Get => {
            let Some(tuple) = orig_tuple(p) else {
                return Err(Fail::Unsupported(
                    "-G by the reply tuple alone (give -s and -d)".into(),
                ));
            };
            let entry = ct.get(&tuple, None).await.map_err(failed(cmd))?;
            let Some(e) = entry else {
                return Err(Fail::Other(
                    "Operation failed: such conntrack doesn't exist".into(),
                ));
            };
            // conntrack compares the labels and the id with the entry it got.
            if !labels_match(p, &e) || !eq(p.id, e.id) {
                return summary(p, cmd, 0);
            }
            // -G opens the XML document and never closes it, as conntrack does.
            if xml(p) {
                stdout_line(so, output::XML_HEADER)?;
            }
            stdout_line(so, &render(p, &e, now(), Printer::Dump))?;
            summary(p, cmd, 1)
        }
        Cmd::Delete => {
            check_masks(p)?;
            let f = DumpFilter {
                family: p.family,
                mark: p.mark,
                ..DumpFilter::default()
            };
            let entries = ct.dump_filtered(&f).await.map_err(failed(cmd))?;
            let now = now();
            let mut counter = 0;
            for e in entries.iter().filter(|e| matches(p, e)) {
                match ct.delete_entry(e).await {
                    Ok(()) => {}
                    Err(ct_netlink::Error::NotFound { .. }) => continue,
                    Err(err) => return Err(failed(cmd)(err)),
                }
                stdout_line(so, &render(p, e, now, Printer::Delete))?;
                counter += 1;
            }
            summary(p, cmd, counter)
        }
        Cmd::Update => {
            check_masks(p)?;
            let entries = ct.dump(p.family).await.map_err(failed(cmd))?;
            let now = now();
            let mut counter = 0;
            for e in entries.iter().filter(|e| update_matches(p, e)) {
                let Some(u) = update_for(p, e) else {
                    continue;
                };
                match ct.update(&u).await {
                    Ok(()) => {}
                    Err(ct_netlink::Error::NotFound { .. }) => continue,
                    // conntrack 1.4.7 reports a failed update (no prefix) and goes on to
                    // show and count the entry.
                    Err(err) => eprintln!("Operation failed: {}", err2str(cmd, &err)),
                }
                match ct.get(&e.orig, e.zone).await.map_err(failed(cmd))? {
                    Some(after) => {
                        stdout_line(so, &render(p, &after, now, Printer::Update))?;
                    }
                    None => continue,
                }
                counter += 1;
            }
            summary(p, cmd, counter)
        }
        Cmd::Create | Cmd::Add => {
            let n = new_entry(p)?;
            match ct.create(&n).await {
                Ok(()) => {}
                // conntrack 1.4.7 leaves an existing entry as it is, reports 0 and
                // exits 0.
                Err(ct_netlink::Error::Exists { .. }) if cmd == Cmd::Add => {
                    if !p.batch {
                        eprintln!("{}0 flow entries have been added.", prefix());
                    }
                    return Ok(());
                }
                Err(e) => return Err(failed(cmd)(e)),
            }
            summary(p, cmd, 1)
        }
        Cmd::Flush => {
            ct.flush(p.family).await.map_err(failed(cmd))?;
            eprintln!("{}connection tracking table has been emptied.", prefix());
            Ok(())
        }
        Cmd::Count => {
            let n = ct.count().await.map_err(failed(cmd))?;
            stdout_line(so, &n.to_string())
        }
        Cmd::Stats => {
            let cpus = ct.stats_cpu().await.map_err(failed(cmd))?;
            for c in cpus {
                let mut line = format!("cpu={:<4}\t", c.cpu);
                for (name, v) in c.fields() {
                    line.push_str(&format!("{name}={v} "));
                }
                stdout_line(so, &line)?;
            }
            Ok(())
        }
        Cmd::ExpStats => {
            let cpus = ct.exp_stats_cpu().await.map_err(failed(cmd))?;
            for c in cpus {
                let line = format!(
                    "cpu={:<4}\texpect_new={} expect_create={} expect_delete={} ",
                    c.cpu, c.new, c.create, c.delete
                );
                stdout_line(so, &line)?;
            }
            Ok(())
        }
        Cmd::ExpList => {
            let list = ct.expectations(p.family).await.map_err(failed(cmd))?;
            for x in &list {
                stdout_line(so, &output::expectation(x))?;
            }
            summary(p, cmd, list.len())
        }
        Cmd::ExpCount => {
            let list = ct.expectations(p.family).await.map_err(failed(cmd))?;
            stdout_line(so, &list.len().to_string())
        }
        Cmd::ExpFlush => {
            ct.flush_expectations(p.family).await.map_err(failed(cmd))?;
            eprintln!("{}expectation table has been emptied.", prefix());
            Ok(())
        }
        Cmd::ExpGet | Cmd::ExpDelete => {
            let Some(tuple) = orig_tuple(p) else {
                return Err(Fail::Param(
                    "you have to specify `--src' and `--dst'".into(),
                ));
            };
            if cmd == Cmd::ExpDelete {
                ct.delete_expectation(&tuple).await.map_err(failed(cmd))?;
                // conntrack counts nothing here, so it reports 0 and exits 1.
                return summary(p, cmd, 0);
            }
            let found: Option<Expectation> =
                ct.get_expectation(&tuple).await.map_err(failed(cmd))?;
            match found {
                Some(x) => stdout_line(so, &output::expectation(&x)),
                None => Err(Fail::Other(
                    "Operation failed: No such file or directory".into(),
                )),
            }
        }
        Cmd::Event => {
            check_masks(p)?;
            events(p, so).await
        }
        _ => Err(Fail::Unsupported(format!("{cmd:?}"))),
    }
}

/// Which of conntrack's print callbacks shows an entry: they differ in the `-o` flags
/// they honour (-U and -D ignore ktimestamp, -D shows no labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Printer {
    /// -L and -G.
    Dump,
    Update,
    Delete,
    Event(EventKind),
}

/// One entry as conntrack prints it for this command and `-o` (one line, also XML).
fn render(p: &Parsed, e: &Entry, now: u64, how: Printer) -> String {
    if p.output & out::SAVE != 0 {
        return match how {
            Printer::Delete => output::deleted(e, p.output, now),
            Printer::Event(k) => output::event(k, e, p.output, now),
            _ => output::entry(e, p.output, now),
        };
    }
    let ktms = p.output & out::KTMS != 0 && matches!(how, Printer::Dump | Printer::Event(_));
    let map = p.labelmap.as_ref().filter(|_| how != Printer::Delete);
    if p.output & out::XML != 0 {
        let kind = match how {
            Printer::Event(k) => Some(k),
            _ => None,
        };
        let opts = output::XmlOpts {
            ktimestamp: ktms,
            when: kind.is_some() && p.output & out::TMS != 0,
        };
        let names = map.and_then(|m| e.labels.as_deref().map(|b| labels::names(m, b)));
        return output::xml_flow(e, kind, opts, names, now);
    }
    let mut line = match how {
        Printer::Event(k) => output::event(k, e, p.output, now),
        Printer::Delete => output::deleted(e, p.output, now),
        _ => output::entry(e, p.output, now),
    };
    if ktms {
        line = output::with_ktimestamp(line, e);
    }
    if let Some(m) = map {
        line.push_str(&labels::suffix(m, e.labels.as_deref()));
    }
    line
}

fn xml(p: &Parsed) -> bool {
    p.output & (out::XML | out::SAVE) == out::XML
}

/// `-l`: the entry has every label asked for.
fn labels_match(p: &Parsed, e: &Entry) -> bool {
    p.label_filter.as_ref().is_none_or(|want| {
        e.labels
            .as_deref()
            .is_some_and(|have| want.is_subset(&labels::bits_of(have)))
    })
}

/// A ctnetlink socket in the namespace `--netns` names; conntrack's "Can't open handler"
/// with the capability that is missing.
fn open(p: &Parsed) -> Result<Conntrack, Fail> {
    let opened = match netns_path(p)? {
        Some(path) => Conntrack::open_in_netns(path),
        None => Conntrack::open(),
    };
    opened.map_err(|e| match e.errno() {
        Some(libc::ENOENT) => Fail::Other(format!("{e}")),
        _ => Fail::Other(format!("Can't open handler: {e}")),
    })
}

/// ctscope's `--netns`: the namespace's path, `None` for ctscope's own. Checks the
/// capabilities ctnetlink there needs; an unknown namespace is a parameter problem.
fn netns_path(p: &Parsed) -> Result<Option<PathBuf>, Fail> {
    let denied = |e: anyhow::Error| Fail::Other(format!("Can't open handler: {e:#}"));
    caps::require(&[Cap::NetAdmin], "ctnetlink").map_err(denied)?;
    let Some(arg) = &p.netns else {
        return Ok(None);
    };
    let named = netns::resolve(arg).map_err(|e| match e.is_usage() {
        true => Fail::Param(e.to_string()),
        false => Fail::Other(e.to_string()),
    })?;
    if named.current {
        return Ok(None);
    }
    caps::require(
        &[Cap::SysAdmin],
        &format!("entering network namespace {arg:?}"),
    )
    .map_err(denied)?;
    Ok(Some(named.path))
}

/// `-E`: stream events until SIGINT/SIGTERM, then the summary (exit 0).
async fn events(p: &Parsed, so: &mut CStdout) -> Result<(), Fail> {
    let mut groups = None;
    let mask = if p.options & opt::EVENT_MASK != 0 {
        p.event_mask
    } else {
        ev::ALL
    };
    for (bit, g) in [
        (ev::NEW, EventGroups::NEW),
        (ev::UPDATE, EventGroups::UPDATE),
        (ev::DESTROY, EventGroups::DESTROY),
    ] {
        if mask & bit != 0 {
            groups = Some(groups.map_or(g, |all| all | g));
        }
    }
    let mut opts = ListenerOptions {
        netns: netns_path(p)?,
        ..ListenerOptions::default()
    };
    if let Some(b) = p.buffer_size {
        opts.recv_buffer = b;
    }
    let Some(groups) = groups else {
        return Err(Fail::Other("Can't open netlink socket".into()));
    };
    let mut l = EventListener::subscribe(groups, &opts)
        .map_err(|_| Fail::Other("Can't open netlink socket".into()))?;
    if p.buffer_size.is_some() {
        let size = l.recv_buffer().unwrap_or(0);
        eprintln!("NOTICE: Netlink socket buffer size has been set to {size} bytes.");
    }
    let sig = |k| signal(k).map_err(|e| Fail::Other(format!("signal: {e}")));
    let (mut int, mut term) = (sig(SignalKind::interrupt())?, sig(SignalKind::terminate())?);
    let mut counter = 0;
    loop {
        let ev = tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            ev = l.next() => ev,
        };
        match ev {
            Ok(Event::Conntrack { kind, entry }) => {
                if p.family.is_some_and(|f| f != entry.family) || !matches(p, &entry) {
                    continue;
                }
                let mut line = String::new();
                if counter == 0 && xml(p) {
                    line.push_str(output::XML_HEADER);
                    line.push('\n');
                }
                if p.output & out::TMS != 0 && p.output & out::XML == 0 {
                    let t = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    line.push_str(&format!("[{}.{:06}]\t", t.as_secs(), t.subsec_micros()));
                }
                line.push_str(&render(p, &entry, now(), Printer::Event(kind)));
                // conntrack flushes each event.
                stdout_line(so, &line)?;
                let _ = so.flush();
                counter += 1;
            }
            Ok(Event::Overrun { .. }) => eprintln!(
                "WARNING: We have hit ENOBUFS! We are losing events.\nThis message means \
                 that the current netlink socket buffer size is too small.\nPlease, check \
                 --buffer-size in conntrack(8) manpage."
            ),
            Err(e) => {
                return Err(Fail::Other(format!(
                    "failed to received netlink event: {e}"
                )));
            }
        }
    }
    if counter > 0 && xml(p) {
        stdout_line(so, output::XML_FOOTER)?;
        let _ = so.flush();
    }
    eprintln!("{}{counter} flow events have been shown.", prefix());
    Ok(())
}

/// The original tuple the options describe (for -G and expectations).
fn orig_tuple(p: &Parsed) -> Option<Tuple> {
    let (src, dst) = (p.orig_src?.addr, p.orig_dst?.addr);
    Some(tuple(p, src, dst, p.l4.sport, p.l4.dport))
}

fn tuple(p: &Parsed, src: IpAddr, dst: IpAddr, sport: Option<u16>, dport: Option<u16>) -> Tuple {
    let num = p.proto.unwrap_or(0);
    match ProtoKind::of(num) {
        ProtoKind::Icmp | ProtoKind::Icmpv6 => Tuple::icmp(
            src,
            dst,
            p.l4.icmp_type.unwrap_or(0),
            p.l4.icmp_code.unwrap_or(0),
            p.l4.icmp_id.unwrap_or(0),
        ),
        ProtoKind::Ports(_) | ProtoKind::Gre => {
            Tuple::ports(num, src, dst, sport.unwrap_or(0), dport.unwrap_or(0))
        }
        ProtoKind::Other => {
            let mut t = Tuple::ports(num, src, dst, 0, 0);
            t.src_port = None;
            t.dst_port = None;
            t
        }
    }
}

/// Whether the command would send SCTP's or DCCP's protocol info, which ct-netlink
/// does not encode.
fn sets_sctp_dccp_info(p: &Parsed) -> bool {
    let l4 = &p.l4;
    l4.sctp_state.is_some()
        || l4.dccp_state.is_some()
        || l4.vtag_orig.is_some()
        || l4.vtag_reply.is_some()
        || l4.dccp_role.is_some()
}

/// -I / -A: the entry to create (reply set up from the original or the reverse).
fn new_entry(p: &Parsed) -> Result<NewEntry, Fail> {
    let orig = p
        .orig_src
        .zip(p.orig_dst)
        .map(|(s, d)| tuple(p, s.addr, d.addr, p.l4.sport, p.l4.dport));
    let reply = p
        .reply_src
        .zip(p.reply_dst)
        .map(|(s, d)| tuple(p, s, d, p.l4.reply_sport, p.l4.reply_dport));
    let (mut orig, reply) = match (orig, reply) {
        (Some(o), r) => (o, r),
        (None, Some(r)) => (r.inverted(), Some(r)),
        (None, None) => {
            return Err(Fail::Param(
                "you have to specify `--src' and `--dst'".into(),
            ));
        }
    };
    // Directional zones go into their own tuple only (conntrack's reply set-up does
    // not copy the original's zone).
    let mut reply = reply.unwrap_or_else(|| orig.inverted());
    orig.zone = p.orig_zone;
    reply.zone = p.reply_zone;
    let mut n = NewEntry::new(orig, p.timeout.unwrap_or(0));
    n.reply = Some(reply);
    n.status = (p.options & opt::STATUS != 0).then_some(p.status);
    n.mark = p.mark.map(|(m, _)| m);
    n.zone = p.zone;
    n.tcp_state = p.l4.state.map(TcpState);
    // libnetfilter_conntrack sends the NAT port only for TCP and UDP.
    let with_port = matches!(p.proto, Some(proto::TCP | proto::UDP));
    let range = |nat: Option<NatArg>| {
        nat.and_then(|a| {
            Some(NatRange {
                addr: a.addr?,
                port: a.port.filter(|_| with_port),
            })
        })
    };
    if p.options & opt::ADD_LABEL != 0 {
        let bits = p.label_modify.clone().unwrap_or_default();
        n.labels = Some(labels::bytes_of(&bits, 0));
    }
    n.src_nat = range(p.src_nat);
    n.dst_nat = range(p.dst_nat);
    Ok(n)
}

/// The masked address test of `-s ADDR/BITS` and `--mask-src`: `addr & mask == net &
/// mask` (masks need not be contiguous).
fn in_network(addr: IpAddr, net: IpAddr, mask: IpAddr) -> bool {
    match (addr, net, mask) {
        (IpAddr::V4(a), IpAddr::V4(n), IpAddr::V4(m)) => {
            let m = u32::from(m);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n), IpAddr::V6(m)) => {
            let m = u128::from(m);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// One address of the original tuple against -s/-d and their mask.
fn addr_matches(
    p: &Parsed,
    e: &Entry,
    want: Option<AddrArg>,
    mask: Option<IpAddr>,
    have: IpAddr,
) -> bool {
    match (want, mask) {
        (Some(a), Some(m)) => p.family == Some(e.family) && in_network(have, a.addr, m),
        (Some(a), None) => a.addr == have,
        (None, _) => true,
    }
}

/// conntrack's nfct_filter_init: a mask needs its address (checked when the command
/// runs, after the option checks).
fn check_masks(p: &Parsed) -> Result<(), Fail> {
    if p.options & opt::MASK_SRC != 0 && p.options & opt::ORIG_SRC == 0 {
        return Err(Fail::Param("Can't use --mask-src without --src".into()));
    }
    if p.options & opt::MASK_DST != 0 && p.options & opt::ORIG_DST == 0 {
        return Err(Fail::Param("Can't use --mask-dst without --dst".into()));
    }
    Ok(())
}

fn eq<T: PartialEq>(want: Option<T>, have: Option<T>) -> bool {
    want.is_none() || want == have
}

/// conntrack's filter_nat for -n/-g/-j given as filters.
fn nat_matches(p: &Parsed, e: &Entry) -> bool {
    let check = |nat: Option<NatArg>, addr_hit: bool, port_hit: bool, any: bool| -> bool {
        let Some(n) = nat else { return false };
        match (n.addr, n.port) {
            (None, None) => any,
            (Some(_), None) => addr_hit,
            (None, Some(_)) => port_hit,
            (Some(_), Some(_)) => addr_hit && port_hit,
        }
    };
    let snat_arg = p.src_nat.or(p.any_nat);
    let dnat_arg = p.dst_nat.or(p.any_nat);
    let has_src = check(
        snat_arg,
        snat_arg
            .and_then(|n| n.addr)
            .is_some_and(|a| is_snat(e) && a == e.reply.dst),
        snat_arg
            .and_then(|n| n.port)
            .is_some_and(|port| is_spat(e) && Some(port) == e.reply.dst_port),
        is_snat(e) || is_spat(e),
    );
    let has_dst = check(
        dnat_arg,
        dnat_arg
            .and_then(|n| n.addr)
            .is_some_and(|a| is_dnat(e) && a == e.reply.src),
        dnat_arg
            .and_then(|n| n.port)
            .is_some_and(|port| is_dpat(e) && Some(port) == e.reply.src_port),
        is_dnat(e) || is_dpat(e),
    );
    if p.options & opt::ANY_NAT != 0 {
        has_src || has_dst
    } else if p.options & opt::SRC_NAT != 0 && p.options & opt::DST_NAT != 0 {
        has_src && has_dst
    } else if p.options & opt::SRC_NAT != 0 {
        has_src
    } else if p.options & opt::DST_NAT != 0 {
        has_dst
    } else {
        true
    }
}

/// Whether the tuple's port fields take part in filtering: libnetfilter_conntrack's
/// comparison has no GRE keys, so conntrack's GRE key options never filter.
fn ports_filter(e: &Entry) -> bool {
    e.proto != proto::GRE
}

/// The tuple part of conntrack's template comparison (original direction).
fn orig_matches(p: &Parsed, e: &Entry) -> bool {
    let ports = ports_filter(e);
    addr_matches(p, e, p.orig_src, p.mask_src, e.orig.src)
        && addr_matches(p, e, p.orig_dst, p.mask_dst, e.orig.dst)
        && eq(p.proto, Some(e.proto))
        && (!ports || eq(p.l4.sport, e.orig.src_port))
        && (!ports || eq(p.l4.dport, e.orig.dst_port))
        && eq(p.l4.icmp_type, e.orig.icmp_type)
        && eq(p.l4.icmp_code, e.orig.icmp_code)
        && eq(p.l4.icmp_id, e.orig.icmp_id)
}

/// The reply-direction part.
fn reply_matches(p: &Parsed, e: &Entry) -> bool {
    eq(p.reply_src, Some(e.reply.src))
        && eq(p.reply_dst, Some(e.reply.dst))
        && eq(p.proto, Some(e.proto))
        && (!ports_filter(e) || eq(p.l4.reply_sport, e.reply.src_port))
        && (!ports_filter(e) || eq(p.l4.reply_dport, e.reply.dst_port))
}

/// -L, -D and -E filters (conntrack's nfct_filter).
fn matches(p: &Parsed, e: &Entry) -> bool {
    let mark_ok = p
        .mark
        .is_none_or(|(v, mask)| e.mark.is_some_and(|m| m & mask == v));
    // -L also filters in the kernel on (status, mask), so negated names and UNREPLIED
    // count there; -D and -E only require the named bits, as conntrack does.
    let status_ok = p.options & opt::STATUS == 0 || {
        let mask = if p.cmd == Some(Cmd::List) {
            p.status_mask | p.status
        } else {
            p.status
        };
        e.status.0 & mask == p.status
    };
    let state_ok =
        p.l4.state
            .is_none_or(|s| e.tcp.as_ref().is_some_and(|t| t.state.0 == s))
            && p.l4
                .sctp_state
                .is_none_or(|s| e.sctp.as_ref().is_some_and(|i| i.state.0 == s))
            && p.l4
                .dccp_state
                .is_none_or(|s| e.dccp.as_ref().is_some_and(|i| i.state.0 == s));
    nat_matches(p, e)
        && labels_match(p, e)
        && mark_ok
        && orig_matches(p, e)
        && reply_matches(p, e)
        && status_ok
        && state_ok
        && eq(p.zone, Some(e.zone.unwrap_or(0)))
        && eq(p.orig_zone, Some(e.orig.zone.unwrap_or(0)))
        && eq(p.reply_zone, Some(e.reply.zone.unwrap_or(0)))
        // An entry without a secmark (a kernel without CONFIG_NF_CONNTRACK_SECMARK
        // sends none) is not compared, as in libnetfilter_conntrack's nfct_cmp.
        && (e.secmark.is_none() || eq(p.secmark, e.secmark))
        && eq(p.id, e.id)
}

/// -U selects by NAT, masks, id and the tuples only (mark and status are new values).
fn update_matches(p: &Parsed, e: &Entry) -> bool {
    nat_matches(p, e)
        && labels_match(p, e)
        && eq(p.id, e.id)
        && (p.options & (opt::ORIG_SRC | opt::ORIG_DST | opt::PROTO) == 0 || orig_matches(p, e))
        && (p.options & (opt::REPL_SRC | opt::REPL_DST | opt::PROTO) == 0 || reply_matches(p, e))
        && p.l4.state.is_none_or(|_| true)
}

/// The change -U makes to `e`, or None when it would change nothing (conntrack then
/// skips the entry and does not count it).
fn update_for(p: &Parsed, e: &Entry) -> Option<Update> {
    let mut u = Update::new(e.orig.clone());
    u.zone = e.zone;
    let mut changed = false;
    if let Some(t) = p.timeout {
        u.timeout = Some(t);
        changed |= e.timeout != Some(t);
    }
    if let Some((value, mask)) = p.mark {
        let old = e.mark.unwrap_or(0);
        let new = (old & !mask) ^ value;
        u.mark = Some(new);
        changed |= e.mark != Some(new);
    }
    if p.options & opt::STATUS != 0 {
        let new = e.status.0 | p.status;
        u.status = Some(new & !(Status::DYING));
        changed |= new != e.status.0;
    }
    if let Some(s) = p.l4.state
        && e.proto == proto::TCP
    {
        u.tcp_state = Some(TcpState(s));
        changed |= e.tcp.as_ref().is_none_or(|t| t.state.0 != s);
    }
    if p.options & (opt::ADD_LABEL | opt::DEL_LABEL) != 0 {
        let modify = p.label_modify.clone().unwrap_or_default();
        let add = p.options & opt::ADD_LABEL != 0;
        match e.labels.as_deref() {
            // conntrack sends labels and a mask as long as the kernel's, which makes
            // every entry with labels count as updated, even when nothing changes.
            Some(have) => {
                let mut bits = labels::bits_of(have);
                if add {
                    bits.extend(modify);
                } else if p.label_modify.is_some() {
                    bits.retain(|b| !modify.contains(b));
                } else {
                    bits.clear();
                }
                u.labels = Some(labels::bytes_of(&bits, have.len()));
                changed = true;
            }
            None if add => {
                u.labels = Some(labels::bytes_of(&modify, 0));
                changed = true;
            }
            None => {}
        }
    }
    changed.then_some(u)
}

/// conntrack -h.
fn usage() -> String {
    format!(
        "Command line interface for the connection tracking system. Version {}\n\
Usage: conntrack [commands] [options]\n\
\n\
Commands:\n\
\x20 -L [table] [options]\t\tList conntrack or expectation table\n\
\x20 -G [table] parameters\t\tGet conntrack or expectation\n\
\x20 -D [table] parameters\t\tDelete conntrack or expectation\n\
\x20 -I [table] parameters\t\tCreate a conntrack or expectation\n\
\x20 -U [table] parameters\t\tUpdate a conntrack\n\
\x20 -E [table] [options]\t\tShow events\n\
\x20 -F [table]\t\t\tFlush table\n\
\x20 -C [table]\t\t\tShow counter\n\
\x20 -S\t\t\t\tShow statistics\n\
\n\
Tables: conntrack, expect, dying, unconfirmed\n\
\n\
Conntrack parameters and options:\n\
\x20 -n, --src-nat ip\t\t\tsource NAT ip\n\
\x20 -g, --dst-nat ip\t\t\tdestination NAT ip\n\
\x20 -j, --any-nat ip\t\t\tsource or destination NAT ip\n\
\x20 -m, --mark mark\t\t\tSet mark\n\
\x20 -c, --secmark secmark\t\t\tSet selinux secmark\n\
\x20 -e, --event-mask eventmask\t\tEvent mask, eg. NEW,DESTROY\n\
\x20 -z, --zero \t\t\t\tZero counters while listing\n\
\x20 -o, --output type[,...]\t\tOutput format, eg. xml\n\
\x20 -l, --label label[,...]\t\tconntrack labels\n\
\n\
Expectation parameters and options:\n\
\x20 --tuple-src ip\tSource address in expect tuple\n\
\x20 --tuple-dst ip\tDestination address in expect tuple\n\
\n\
Updating parameters and options:\n\
\x20 --label-add label\tAdd label\n\
\x20 --label-del label\tDelete label\n\
\n\
Common parameters and options:\n\
\x20 -s, --src, --orig-src ip\t\tSource address from original direction\n\
\x20 -d, --dst, --orig-dst ip\t\tDestination address from original direction\n\
\x20 -r, --reply-src ip\t\tSource addres from reply direction\n\
\x20 -q, --reply-dst ip\t\tDestination address from reply direction\n\
\x20 -p, --protonum proto\t\tLayer 4 Protocol, eg. 'tcp'\n\
\x20 -f, --family proto\t\tLayer 3 Protocol, eg. 'ipv6'\n\
\x20 -t, --timeout timeout\t\tSet timeout\n\
\x20 -u, --status status\t\tSet status, eg. ASSURED\n\
\x20 -w, --zone value\t\tSet conntrack zone\n\
\x20 --orig-zone value\t\tSet zone for original direction\n\
\x20 --reply-zone value\t\tSet zone for reply direction\n\
\x20 -b, --buffer-size\t\tNetlink socket buffer size\n\
\x20 --mask-src ip\t\t\tSource mask address\n\
\x20 --mask-dst ip\t\t\tDestination mask address\n\
\n",
        super::VERSION
    )
}

//! Carrying out a parsed conntrack command over ct-netlink, with conntrack's output,
//! summaries and exit statuses.

use std::{
    io::{self, Write},
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use ct_netlink::{
    Conntrack, DumpFilter, Entry, Event, EventGroups, EventKind, EventListener, Expectation,
    ListenerOptions, Table,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    sys::caps::{self, Cap},
    sys::netns,
    sys::stdout::CStdout,
};

use super::{
    Fail,
    filter::{check_masks, eq, kernel_filters_status, labels_match, matches, update_matches},
    labels, output,
    parse::{Cmd, Parsed, ProtoKind, TableArg, ev, opt, out},
    prefix,
    request::{new_entry, orig_tuple, sets_sctp_dccp_info, update_for},
    usage::usage,
};

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
        Cmd::List => list(p, cmd, &mut ct, so).await,
        Cmd::Get => get(p, cmd, &mut ct, so).await,
        Cmd::Delete => delete(p, cmd, &mut ct, so).await,
        Cmd::Update => update(p, cmd, &mut ct, so).await,
        Cmd::Create | Cmd::Add => create(p, cmd, &mut ct).await,
        Cmd::Flush => flush(p, cmd, &mut ct).await,
        Cmd::Count => count(cmd, &mut ct, so).await,
        Cmd::Stats => stats(cmd, &mut ct, so).await,
        Cmd::ExpStats => exp_stats(cmd, &mut ct, so).await,
        Cmd::ExpList => exp_list(p, cmd, &mut ct, so).await,
        Cmd::ExpCount => exp_count(p, cmd, &mut ct, so).await,
        Cmd::ExpFlush => exp_flush(p, cmd, &mut ct).await,
        Cmd::ExpGet | Cmd::ExpDelete => exp_get_or_delete(p, cmd, &mut ct, so).await,
        Cmd::Event => {
            check_masks(p)?;
            events(p, so).await
        }
        _ => Err(Fail::Unsupported(format!("{cmd:?}"))),
    }
}

/// `-L [table]`: dump, filter as conntrack does, print.
async fn list(p: &Parsed, cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
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
        // conntrack hands `-u` to the kernel's dump filter and prints what comes back:
        // 5.17+ filters (and refuses an empty mask: `-u UNSET`, or only SRC_NAT/DST_NAT,
        // "invalid parameters"), older kernels ignore it and list everything.
        status: kernel_filters_status(p).then_some((p.status, p.status_mask | p.status)),
        zero_counters: p.options & opt::ZERO != 0,
        ..DumpFilter::default()
    };
    let entries = ct.dump_filtered(&f).await.map_err(failed(cmd))?;
    let now = crate::clock::unix_secs();
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

/// `-G`: one entry by its original tuple.
async fn get(p: &Parsed, cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
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
    stdout_line(so, &render(p, &e, crate::clock::unix_secs(), Printer::Dump))?;
    summary(p, cmd, 1)
}

/// `-D`: delete the entries that match, printing each.
async fn delete(p: &Parsed, cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
    check_masks(p)?;
    let f = DumpFilter {
        family: p.family,
        mark: p.mark,
        ..DumpFilter::default()
    };
    let entries = ct.dump_filtered(&f).await.map_err(failed(cmd))?;
    let now = crate::clock::unix_secs();
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

/// `-U`: change the entries that match, printing each as it is afterwards.
async fn update(p: &Parsed, cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
    check_masks(p)?;
    let entries = ct.dump(p.family).await.map_err(failed(cmd))?;
    let now = crate::clock::unix_secs();
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

/// `-I` / `-A`: create one entry.
async fn create(p: &Parsed, cmd: Cmd, ct: &mut Conntrack) -> Result<(), Fail> {
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

/// `-F`.
async fn flush(p: &Parsed, cmd: Cmd, ct: &mut Conntrack) -> Result<(), Fail> {
    ct.flush(p.family).await.map_err(failed(cmd))?;
    eprintln!("{}connection tracking table has been emptied.", prefix());
    Ok(())
}

/// `-C`.
async fn count(cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
    let n = ct.count().await.map_err(failed(cmd))?;
    stdout_line(so, &n.to_string())
}

/// `-S`: per-CPU counters.
async fn stats(cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
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

/// `-S expect`: per-CPU expectation counters.
async fn exp_stats(cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
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

/// `-L expect`.
async fn exp_list(p: &Parsed, cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
    let list = ct.expectations(p.family).await.map_err(failed(cmd))?;
    for x in &list {
        stdout_line(so, &output::expectation(x))?;
    }
    summary(p, cmd, list.len())
}

/// `-C expect`.
async fn exp_count(p: &Parsed, cmd: Cmd, ct: &mut Conntrack, so: &mut CStdout) -> Result<(), Fail> {
    let list = ct.expectations(p.family).await.map_err(failed(cmd))?;
    stdout_line(so, &list.len().to_string())
}

/// `-F expect`.
async fn exp_flush(p: &Parsed, cmd: Cmd, ct: &mut Conntrack) -> Result<(), Fail> {
    ct.flush_expectations(p.family).await.map_err(failed(cmd))?;
    eprintln!("{}expectation table has been emptied.", prefix());
    Ok(())
}

/// `-G expect` / `-D expect`: one expectation by its tuple.
async fn exp_get_or_delete(
    p: &Parsed,
    cmd: Cmd,
    ct: &mut Conntrack,
    so: &mut CStdout,
) -> Result<(), Fail> {
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
    let found: Option<Expectation> = ct.get_expectation(&tuple).await.map_err(failed(cmd))?;
    match found {
        Some(x) => stdout_line(so, &output::expectation(&x)),
        None => Err(Fail::Other(
            "Operation failed: No such file or directory".into(),
        )),
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
                line.push_str(&render(
                    p,
                    &entry,
                    crate::clock::unix_secs(),
                    Printer::Event(kind),
                ));
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

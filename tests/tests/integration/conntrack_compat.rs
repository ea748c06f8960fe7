//! `ctscope conntrack ARGS` against conntrack(8) itself: a table of command forms, each
//! run through both tools in the same namespace from the same starting table, comparing
//! stdout, stderr (summaries and error messages, with conntrack's prefix), the exit
//! status and the table afterwards. Timeouts and ids, which differ between two
//! insertions of the same entry, are normalised away; lines are sorted.
//!
//! Forms where conntrack 1.4.7 misbehaves and ctscope deliberately does not follow
//! are not in the table; README lists them: `-U` without an address family fails with
//! EOPNOTSUPP, `-U` of an entry in a non-zero zone fails with ENOENT, `-F -f ipv6`
//! flushes every family, `-I` from the reply tuple alone loses the protocol.
//!
//! Read-only forms run against one baseline table (checked unchanged afterwards);
//! each changing form gets a fresh baseline for each tool.

use std::{
    net::SocketAddrV4,
    process::{Command, Output, Stdio},
    thread::sleep,
    time::Duration,
};

use ctscope_tests::{cmd, ctscope, netns::Netns, traffic};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::common::{Ctx, Watch};

/// 10.200.30.0/24: no other scenario uses it.
const SUBNET: u8 = 30;
const A: &str = "10.200.30.1";
const B: &str = "10.200.30.2";
const A6: &str = "fd00:30::1";
const B6: &str = "fd00:30::2";
/// UDP port the -E form's traffic goes to.
const EVENT_PORT: u16 = 5330;

/// The starting table of every form (inserted with the real conntrack).
fn baseline() -> Vec<Vec<String>> {
    let lines = [
        format!("-p udp -s {A} -d {B} --sport 1001 --dport 53"),
        format!(
            "-p tcp -s {A} -d {B} --sport 1002 --dport 80 --state ESTABLISHED \
             -u SEEN_REPLY,ASSURED -m 5 -w 3"
        ),
        format!("-p icmp -s {A} -d {B} --icmp-type 8 --icmp-code 0 --icmp-id 9"),
        format!("-p udp -s {A6} -d {B6} --sport 1003 --dport 53"),
        format!("-p tcp -s {A} -d {B} --sport 1004 --dport 443 --state SYN_SENT -m 0x12"),
        format!("-p icmpv6 -s {A6} -d {B6} --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 10"),
    ];
    lines
        .iter()
        .map(|l| {
            let mut v: Vec<String> = ["-I", "-t", "1000"].map(String::from).to_vec();
            v.extend(l.split_whitespace().map(String::from));
            v
        })
        .collect()
}

/// Read-only forms: the table must be unchanged afterwards by both.
fn read_only() -> Vec<String> {
    let mut v: Vec<String> = [
        "-L",
        "-L conntrack",
        "-L -o extended",
        "-L -o id",
        "-L -o save",
        "-L -o extended,id",
        "-L -p udp",
        "-L -p tcp --dport 80",
        "-L -p tcp --state ESTABLISHED",
        "-L -p tcp --state SYN_SENT -o save",
        "-L -m 5",
        "-L -m 0x10/0xf0",
        "-L -w 3",
        "-L -w 0",
        "-L -u ASSURED",
        "-L -u UNREPLIED",
        "-L -u !ASSURED",
        "-L -u SEEN_REPLY,ASSURED",
        "-L -s 10.200.30.0/24",
        "-L -d 10.200.0.0/16 -p tcp",
        "-L -f ipv6",
        "-L -f ipv4 -p udp",
        "-L -p icmp --icmp-type 8",
        "-L -p icmpv6 --icmpv6-id 10",
        "-L -j",
        "-L -n",
        "-L -g",
        "-L -z",
        "--dump",
        "-L dying",
        "-L unconfirmed",
        "-L expect",
        "-C",
        "-C expect",
        "-V",
        "-h",
        // Errors.
        "-L -D",
        "-L --dport 53 -p udp",
        "-X",
        "--bogus",
        "-L foo",
        "-L -s",
        "-L -o",
        "-L -s 10.0.0.1 -d ::1",
        "-L -f ipv4 -s ::1",
        "-I -p udp -s 10.0.0.1",
        "-I -p udp -s 10.0.0.1 -d 10.0.0.2 -t 10",
        "-I -p tcp -s 10.0.0.1 -d 10.0.0.2 -t 10 --sport 1 --dport 2",
        "-I -p icmp -s 10.0.0.1 -d 10.0.0.2 -t 10",
        "-I -p tcp -s 10.0.0.1 -r 10.0.0.2 -t 10 --sport 1 --dport 2 --state NONE",
        "-G",
        "-G -p udp -s 10.0.0.1 -d 10.0.0.2",
        "-L -t 5",
        "-F conntrack -s 1.2.3.4",
        "-L -z -p udp",
        "-L -f ipv7",
        "-L -p tcp --state FOO",
        "-L -u FOO",
        "-L -o bogus",
        "-L -o save,id",
        "-E dying",
        "-U expect",
        "-L -r 10.0.0.0/24",
        "-L -d 10.0.0.0/33",
        "-L -p bogus",
        "-E -e BAD",
        "-s 1.2.3.4",
        "-L --orig",
        "-L --sta",
        "-j 1.2.3.4 -n",
    ]
    .map(String::from)
    .to_vec();
    v.extend([
        format!("-G -p udp -s {A} -d {B} --sport 1001 --dport 53"),
        format!("-G -p udp -s {A} -d {B} --sport 1001 --dport 53 -o extended,id"),
        format!("-G -p icmp -s {A} -d {B} --icmp-type 8 --icmp-code 0 --icmp-id 9"),
        format!("-G -p udp -s {A} -d {B} --sport 1001 --dport 54"),
        format!("-L -r {B} -p tcp --reply-port-src 80"),
        format!("-L -d {B6}"),
        format!("-L --orig-src {A} --dst {B} -p tcp --sport 1004"),
    ]);
    v
}

/// Forms that change the table.
fn mutating() -> Vec<String> {
    let mut v: Vec<String> = [
        "-D -p udp --dport 53",
        "-D -f ipv6",
        "-D -m 5",
        "-D -m 0x10/0xf0 -o save",
        "-D",
        "-D -p udp --dport 9",
        "-D -p icmp -o save",
        "-D -w 3 -o extended",
        "-D -u UNREPLIED",
        "-F",
        "-U -f ipv4 -p tcp -u ASSURED",
        "-U -f ipv6 -p udp -m 1",
        "-U -f ipv4 -p udp -m 0x100/0x100 -o id",
        "-U -f ipv4 -p icmp -m 1 -o extended",
        "-I -p udp -s 10.200.30.5 -d 10.200.30.6 --sport 7 --dport 8 -t 300 -m 3",
        "-I -p tcp -s 10.200.30.5 -d 10.200.30.6 --sport 7 --dport 8 -t 300 --state ESTABLISHED -u SEEN_REPLY,ASSURED -w 4",
        "-I -p icmp -s 10.200.30.7 -d 10.200.30.8 --icmp-type 8 --icmp-code 0 --icmp-id 3 -t 300",
        "-I -p udp -s fd00:30::5 -d fd00:30::6 --sport 7 --dport 8 -t 300",
        "-I -p udp -s fd00:30::5 -d 10.200.30.6 --sport 7 --dport 8 -t 300",
        "-I -p udp -f ipv6 -s 10.200.30.5 -d 10.200.30.6 --sport 7 --dport 8 -t 300",
    ]
    .map(String::from)
    .to_vec();
    v.extend([
        format!("-D -p udp -s {A} -d {B} --sport 1001 --dport 53"),
        format!("-U -p udp -s {A} -d {B} --sport 1001 --dport 53 -m 7"),
        format!("-U -p udp -s {A} -d {B} --sport 1001 --dport 53 -t 50"),
        format!("-U -s {A} -p tcp --dport 443 -u SEEN_REPLY"),
        format!("-U -s {A} -p udp -m 3"),
        format!("-U -p udp -s {A} -d {B} --sport 1 --dport 2 -m 1"),
        format!("-I -p udp -s {A} -d {B} --sport 1001 --dport 53 -t 100"),
        format!("-A -p udp -s {A} -d {B} --sport 1001 --dport 53 -t 100 -m 4"),
    ]);
    v
}

/// What one run of one tool produced.
#[derive(Debug, PartialEq, Eq)]
struct Result {
    stdout: Vec<String>,
    stderr: Vec<String>,
    status: Option<i32>,
    table: Vec<String>,
}

/// Timeouts, ids and `-t` values out; sorted lines.
fn normalise(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields: Vec<String> = line.split(' ').map(String::from).collect();
            // `[NEW] ` / `ipv4     2 ` prefixes, then `proto num TIMEOUT`.
            let words: Vec<usize> = (0..fields.len())
                .filter(|i| !fields[*i].is_empty())
                .collect();
            let mut w = 0;
            if words.first().is_some_and(|i| fields[*i].starts_with('[')) {
                w += 1;
            }
            if words
                .get(w)
                .is_some_and(|i| fields[*i] == "ipv4" || fields[*i] == "ipv6")
            {
                w += 2;
            }
            if let Some(&i) = words.get(w + 2)
                && fields[i].bytes().all(|b| b.is_ascii_digit())
            {
                fields[i] = "T".into();
            }
            for i in 0..fields.len() {
                if fields[i].starts_with("id=") && !line.contains("type=") {
                    fields[i] = "id=N".into();
                }
                if fields[i] == "-t" && i + 1 < fields.len() {
                    fields[i + 1] = "T".into();
                }
            }
            let joined = fields.join(" ");
            // `... use=1 id=123`: the entry id is the last id= field.
            match joined.rsplit_once(" id=") {
                Some((head, tail)) if tail.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("{head} id=N")
                }
                _ => joined,
            }
        })
        .collect();
    lines.sort();
    lines
}

fn text(out: &Output, which: fn(&Output) -> &Vec<u8>) -> String {
    String::from_utf8_lossy(which(out)).into_owned()
}

struct Compat {
    ctx: Ctx,
    ctscope: String,
}

impl Compat {
    fn ns(&self) -> &Netns {
        &self.ctx.pair.c
    }

    /// The argv of `tool ARGS` (tool = conntrack or ctscope conntrack).
    fn argv<'a>(&'a self, ours: bool, args: &'a [String]) -> Vec<&'a str> {
        let mut argv = if ours {
            vec![self.ctscope.as_str(), "conntrack"]
        } else {
            vec!["conntrack"]
        };
        argv.extend(args.iter().map(String::as_str));
        argv
    }

    /// Flush and insert the baseline in one `conntrack -R -` (load-file) run.
    fn reset(&self) {
        let mut script = String::from("-F\n");
        for args in baseline() {
            script.push_str(&args.join(" "));
            script.push('\n');
        }
        self.ns()
            .exec_with_input(&["conntrack", "-R", "-"], &script);
    }

    fn table(&self) -> Vec<String> {
        normalise(&self.ns().exec(&["conntrack", "-L"]))
    }

    /// One run; `changes`: from a fresh baseline, and the table afterwards is part of
    /// the result. ctscope enters the namespace itself (`--netns`), which saves an
    /// `ip netns exec` per run.
    fn run(&self, ours: bool, args: &[String], changes: bool) -> Result {
        if changes {
            self.reset();
        }
        let out = if ours {
            let mut argv = vec![
                self.ctscope.as_str(),
                "conntrack",
                "--netns",
                self.ns().name(),
            ];
            argv.extend(args.iter().map(String::as_str));
            cmd::output(&argv, None).unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
        } else {
            self.ns().exec_output(&self.argv(false, args))
        };
        Result {
            stdout: normalise(&text(&out, |o| &o.stdout)),
            stderr: text(&out, |o| &o.stderr)
                .lines()
                .map(String::from)
                .collect(),
            status: out.status.code(),
            table: if changes { self.table() } else { Vec::new() },
        }
    }

    /// `-E`: listen, make one UDP flow, stop with SIGINT; stdout, stderr, status.
    fn run_events(&self, ours: bool, args: &[String]) -> Result {
        self.reset();
        let p = &self.ctx.pair;
        let mut argv = vec!["ip", "netns", "exec", self.ns().name()];
        argv.extend(self.argv(ours, args));
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        sleep(Duration::from_millis(200));
        let dst = SocketAddrV4::new(p.s_addr, EVENT_PORT);
        let sink = traffic::UdpSink::bind(&p.s, dst);
        for r in traffic::udp_flows(&p.c, p.c_addr, &[24001], dst) {
            r.unwrap_or_else(|e| panic!("UDP flow to {dst}: {e}"));
        }
        sleep(Duration::from_millis(200));
        drop(sink);
        // `ip netns exec` execs the tool, so the child's pid is the tool's.
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        let out = child.wait_with_output().expect("wait for -E");
        Result {
            stdout: normalise(&text(&out, |o| &o.stdout)),
            stderr: text(&out, |o| &o.stderr)
                .lines()
                .map(String::from)
                .collect(),
            status: out.status.code(),
            table: Vec::new(),
        }
    }
}

pub fn run() {
    let ctx = Ctx::new(Watch::KernelOnly, SUBNET, |_| {});
    let ctscope = ctscope::binary_or_panic().display().to_string();
    // The binary found may be a stale build (the test crate does not build ctscope).
    let version = cmd::output(&[&ctscope, "conntrack", "-V"], None)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        version.starts_with("conntrack v1.4.7"),
        "{ctscope} has no `conntrack` subcommand (stale build?): run `cargo build -p ct-user` \
         and set CTSCOPE_BIN to the ctscope it built"
    );
    let t = Compat { ctx, ctscope };
    let split = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        ReadOnly,
        Changes,
        Events,
    }
    let mut forms: Vec<(Vec<String>, Kind)> = read_only()
        .iter()
        .map(|f| (split(f), Kind::ReadOnly))
        .chain(mutating().iter().map(|f| (split(f), Kind::Changes)))
        .collect();
    for extra in ["", " -o extended", " -o save"] {
        let f = format!("-E -e NEW -p udp --dport {EVENT_PORT}{extra}");
        forms.push((split(&f), Kind::Events));
    }

    t.reset();
    let baseline = t.table();
    assert_eq!(baseline.len(), 6, "baseline table: {baseline:?}");
    let mut mismatches = Vec::new();
    let mut read_only_done = false;
    for (args, kind) in &forms {
        if *kind != Kind::ReadOnly && !read_only_done {
            // The read-only forms ran one after the other on the baseline.
            assert_eq!(t.table(), baseline, "the read-only forms changed the table");
            read_only_done = true;
        }
        let (theirs, ours) = match kind {
            Kind::Events => (t.run_events(false, args), t.run_events(true, args)),
            Kind::Changes => (t.run(false, args, true), t.run(true, args, true)),
            Kind::ReadOnly => (t.run(false, args, false), t.run(true, args, false)),
        };
        if theirs != ours {
            mismatches.push(format!(
                "conntrack {}:\n  conntrack: {theirs:?}\n  ctscope:   {ours:?}",
                args.join(" ")
            ));
        }
    }
    let matched = forms.len() - mismatches.len();
    println!(
        "conntrack_compat: compared {} command forms, {matched} matched",
        forms.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} forms differ:\n{}",
        mismatches.len(),
        forms.len(),
        mismatches.join("\n")
    );
}

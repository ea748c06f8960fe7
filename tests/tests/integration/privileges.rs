//! ctscope with capabilities taken away, and `--netns` in every form.
//!
//! `capabilities`: each command runs inside a fresh namespace under util-linux `setpriv`
//! with one capability removed from the bounding set (root keeps every other one); a
//! command that cannot work exits 1 naming the missing capability, one that can go on
//! with less says what it lacks in a warning and succeeds. `capabilities_tier2`: events
//! at tier 2 with only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN verify destroy reasons in
//! their own namespace and warn that others need CAP_SYS_ADMIN. `netns_forms`: every
//! command family takes `--netns` as a name, a /proc/PID/ns/net path or an inode alike,
//! and rejects an unknown name or inode and a file that is not a namespace with exit 2.

use std::{
    net::SocketAddrV4,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use ctscope_tests::{
    ctscope::{self, Events, EventsOpts, Probe},
    events, kernel,
    netns::{Netns, Pair},
    nft, traffic,
};

use crate::common::{UDP_PORT, event_wait};

/// The subnet of `capabilities_tier2`'s pair (10.200.63.0/24).
const SUBNET: u8 = 63;

/// Addresses of the entries `get` and `insert` name (only ever in a fresh namespace).
const TUPLE: [&str; 10] = [
    "-p",
    "udp",
    "-s",
    "10.200.64.1",
    "-d",
    "10.200.64.2",
    "--sport",
    "1000",
    "--dport",
    "53",
];

/// How long one command may take before it counts as hanging.
const LIMIT: Duration = Duration::from_secs(60);

/// `setpriv` arguments that remove `caps` (`sys_admin`, ...) from the bounding set and
/// clear the inheritable and ambient sets: after exec root holds every other one.
fn without(caps: &[&str]) -> Vec<String> {
    let drop: Vec<String> = caps.iter().map(|c| format!("-{c}")).collect();
    [
        "setpriv".into(),
        format!("--bounding-set={}", drop.join(",")),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
    .into()
}

/// `ctscope ARGS` with `setpriv` arguments `priv`, run inside `ns` (its own namespace).
fn spawn(ns: &Netns, privs: &[String], args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(privs)
        .arg(ctscope::binary_or_panic())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run setpriv ctscope {args:?}: {e}"))
}

/// Runs `ctscope ARGS` to its end (killed after [`LIMIT`]).
fn run(ns: &Netns, privs: &[String], args: &[&str]) -> Output {
    let mut child = spawn(ns, privs, args);
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("ctscope {args:?} ran over {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args` without `caps`; checks the exit status and that stderr names `named`.
fn expect(ns: &Netns, caps: &[&str], args: &[&str], code: i32, named: &str) {
    let out = run(ns, &without(caps), args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "ctscope {args:?} without {caps:?}: stderr:\n{err}"
    );
    assert!(
        err.contains(named),
        "ctscope {args:?} without {caps:?} must name {named}; stderr:\n{err}"
    );
}

/// The commands that talk to ctnetlink, each with its arguments.
fn table_commands<'a>(extra: &'a [&'a str]) -> Vec<Vec<&'a str>> {
    let mut cmds: Vec<Vec<&str>> = vec![
        vec!["list", "--no-agent"],
        vec!["count"],
        vec!["stats", "--no-agent"],
        vec!["delete", "-p", "udp"],
        vec!["flush"],
        [&["get", "--no-agent"][..], &TUPLE].concat(),
        [&["insert"][..], &TUPLE].concat(),
        vec!["diagnose", "--no-agent"],
        vec!["top", "--no-agent"],
        vec!["timeouts", "--no-agent"],
        vec!["events", "--tier", "3", "--duration", "0.2"],
    ];
    for c in &mut cmds {
        c.extend_from_slice(extra);
    }
    cmds
}

/// A private socket path for a `watch` run.
fn socket(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ctscope-privs-{}-{tag}.sock", std::process::id()))
}

pub fn capabilities() {
    let (own, other) = (Netns::new(), Netns::new());
    let net_admin = &["net_admin"][..];
    for args in table_commands(&[]) {
        expect(&own, net_admin, &args, 1, "CAP_NET_ADMIN");
    }
    expect(&own, net_admin, &["conntrack", "-L"], 1, "CAP_NET_ADMIN");
    let sock = socket("na");
    let sock_arg = sock.display().to_string();
    let watch3 = ["watch", "--headless", "--tier", "3", "--socket", &sock_arg];
    expect(&own, net_admin, &watch3, 1, "CAP_NET_ADMIN");
    assert!(!sock.exists(), "no socket left behind by a refused agent");
    expect(&own, net_admin, &["probe"], 0, "CAP_NET_ADMIN");

    // Another namespace needs CAP_SYS_ADMIN; ctscope's own does not.
    let sys_admin = &["sys_admin"][..];
    for args in table_commands(&["--netns", other.name()]) {
        expect(&own, sys_admin, &args, 1, "CAP_SYS_ADMIN");
    }
    let conntrack = ["conntrack", "--netns", other.name(), "-L"];
    expect(&own, sys_admin, &conntrack, 1, "CAP_SYS_ADMIN");
    for args in [
        &["list", "--no-agent"][..],
        &["count"],
        &["conntrack", "-L"],
    ] {
        let out = run(&own, &without(sys_admin), args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "ctscope {args:?} in its own namespace without CAP_SYS_ADMIN: {}",
            stderr(&out)
        );
    }
    expect(
        &own,
        sys_admin,
        &["count", "--all-netns"],
        0,
        "CAP_SYS_ADMIN",
    );
    expect(&own, sys_admin, &["probe"], 0, "CAP_SYS_ADMIN");
    watch_warns(&own, &without(sys_admin), "3", "CAP_SYS_ADMIN", |_| {});

    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON: both go.
    for (cap, name) in [("bpf", "CAP_BPF"), ("perfmon", "CAP_PERFMON")] {
        let caps = &[cap, "sys_admin"][..];
        let events2 = ["events", "--tier", "2", "--duration", "0.2"];
        expect(&own, caps, &events2, 1, name);
        let sock = socket(cap);
        let sock_arg = sock.display().to_string();
        let watch2 = ["watch", "--headless", "--tier", "2", "--socket", &sock_arg];
        expect(&own, caps, &watch2, 1, name);
        expect(&own, caps, &["probe"], 0, name);
        // The best tier falls back to tier 3 and says why.
        let events = ["events", "--no-agent", "--duration", "0.2"];
        expect(&own, caps, &events, 0, name);
    }

    // A process holding capabilities ctscope lacks: its namespace needs CAP_SYS_PTRACE.
    let sleeper = Sleeper::start(&other);
    let list = ["list", "--no-agent", "--netns", &sleeper.path];
    expect(&own, &["sys_ptrace"], &list, 1, "CAP_SYS_PTRACE");
    expect(&own, &["sys_ptrace"], &list, 1, "permission denied");
}

/// A `sleep` in a namespace, killed on drop: a full-capability process there.
struct Sleeper {
    child: Child,
    /// Its /proc/PID/ns/net.
    path: String,
}

impl Sleeper {
    fn start(ns: &Netns) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sleep", "60"])
            .spawn()
            .expect("sleep in the namespace");
        let path = format!("/proc/{}/ns/net", child.id());
        wait_in(&path, ns.inode());
        Sleeper { child, path }
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` (a process's namespace) is namespace `inode`.
fn wait_in(path: &str, inode: u64) {
    use std::os::unix::fs::MetadataExt as _;
    let start = Instant::now();
    while std::fs::metadata(path).map(|m| m.ino()).ok() != Some(inode) {
        assert!(
            start.elapsed() < LIMIT,
            "{path} never entered namespace {inode}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `watch --tier TIER` under `setpriv` arguments `privs` gets ready, warning that it
/// lacks `named`; `ready` runs with its socket before it is stopped.
fn watch_warns(
    ns: &Netns,
    privs: &[String],
    tier: &str,
    named: &str,
    ready: impl FnOnce(&std::path::Path),
) {
    let sock = socket(&format!("warn{tier}"));
    let ready_file = sock.with_extension("ready");
    let sock_arg = sock.display().to_string();
    let ready_arg = ready_file.display().to_string();
    let args = [
        "watch",
        "--headless",
        "--tier",
        tier,
        "--socket",
        &sock_arg,
        "--ready-file",
        &ready_arg,
    ];
    let mut child = spawn(ns, privs, &args);
    let start = Instant::now();
    while !ready_file.exists() && child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < LIMIT, "watch never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    if ready_file.exists() {
        ready(&sock);
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let _ = std::fs::remove_file(&ready_file);
    let err = stderr(&out);
    assert!(
        err.contains("ctscope: watching"),
        "watch {privs:?} must get ready: {err}"
    );
    assert!(
        err.contains(named),
        "watch {privs:?} must warn about {named}: {err}"
    );
}

/// `setpriv` arguments that keep only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.
/// Plus, as README's *Privileges* says, CAP_SYS_RESOURCE where the kernel charges BPF
/// maps to RLIMIT_MEMLOCK (before 5.11), and CAP_SYSLOG where tier 2 tells an entry's
/// free by its caller's address in /proc/kallsyms (5.10's tracepoints do not say).
fn only_bpf_perfmon_net_admin() -> Vec<String> {
    let mut caps = String::from("-all,+bpf,+perfmon,+net_admin");
    if kernel::bpf_maps_charge_memlock() {
        caps.push_str(",+sys_resource");
    }
    let probe = Probe::run().expect("ctscope probe");
    if probe.notes().iter().any(|n| n.contains("/proc/kallsyms")) {
        caps.push_str(",+syslog");
    }
    vec![
        "setpriv".into(),
        format!("--bounding-set={caps}"),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

pub fn capabilities_tier2() {
    let pair = Pair::new(SUBNET);
    nft::apply(&pair.c, nft::CT_ENABLE);
    let keep = only_bpf_perfmon_net_admin();
    let opts = EventsOpts {
        extra: ["--tier", "2", "--netns", pair.c.name()]
            .map(String::from)
            .into(),
        wrapper: [
            &[
                "ip".to_string(),
                "netns".into(),
                "exec".into(),
                pair.c.name().into(),
            ][..],
            &keep,
        ]
        .concat(),
        ..Default::default()
    };
    let stream = Events::start(&opts);
    let dst = SocketAddrV4::new(pair.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&pair.s, dst);
    let port = 23000;
    traffic::udp_flows(&pair.c, pair.c_addr, &[port], dst)
        .into_iter()
        .for_each(|r| r.expect("UDP flow"));
    let (src, dst_addr) = (pair.c_addr.to_string(), pair.s_addr.to_string());
    let (sport, dport) = (port.to_string(), UDP_PORT.to_string());
    let filter = [
        "-p", "udp", "-s", &src, "-d", &dst_addr, "--sport", &sport, "--dport", &dport,
    ];
    assert_eq!(kernel::ct_delete(&pair.c, &filter), 1, "conntrack -D");
    let inode = pair.c.inode();
    stream.wait_until(event_wait(), |ev| {
        !events::select(ev, "destroy", inode, None).is_empty()
    });
    let finished = stream.stop();
    let destroys = events::select(&finished.events, "destroy", inode, None);
    assert_eq!(
        destroys.len(),
        1,
        "one destroy; stderr:\n{}",
        finished.stderr
    );
    let ev = destroys[0];
    assert_eq!(
        (ev["reason"].as_str(), ev.get("unverified")),
        (Some("ctnetlink"), None),
        "verified in ctscope's own namespace without CAP_SYS_ADMIN: {ev}"
    );
    assert!(
        finished.stderr.contains("CAP_SYS_ADMIN"),
        "warns that other namespaces need CAP_SYS_ADMIN; stderr:\n{}",
        finished.stderr
    );
    // The agent seeds its table from its own namespace all the same.
    pair.c.exec(
        &["conntrack", "-I"]
            .iter()
            .chain(&filter)
            .chain(&["-t", "100"])
            .copied()
            .collect::<Vec<_>>(),
    );
    // Tier 2 does not see ctnetlink inserts: the entry comes from the dump.
    watch_warns(&pair.c, &keep, "2", "CAP_SYS_ADMIN", |sock| {
        let sock = sock.display().to_string();
        let list = ["list", "--socket", &sock, "--netns", pair.c.name()];
        let out = run(&pair.s, &[], &list);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("sport={port} dport={UDP_PORT}")),
            "the agent dumped its own namespace: {text}{}",
            stderr(&out)
        );
    });
    // Without CAP_NET_ADMIN tier 2 still runs, saying its reasons go unverified.
    let events = ["events", "--tier", "2", "--duration", "0.5"];
    expect(&pair.c, &["net_admin"], &events, 0, "CAP_NET_ADMIN");
}

/// The command families that take `--netns`, each with its arguments; `insert` creates
/// the entry with source port `sport`.
fn families(sport: u16) -> Vec<Vec<String>> {
    let sport = sport.to_string();
    let mut insert = [&["insert"][..], &TUPLE].concat();
    insert[8] = &sport;
    let cmds: Vec<Vec<&str>> = vec![
        vec!["list", "--no-agent"],
        vec!["count"],
        vec!["stats", "--no-agent"],
        vec!["delete", "-p", "udp", "--dport", "9"],
        vec!["flush"],
        [&["get", "--no-agent"][..], &TUPLE].concat(),
        vec!["expect", "list"],
        vec!["diagnose", "--no-agent"],
        vec!["top", "--no-agent"],
        vec!["timeouts", "--no-agent"],
        vec!["events", "--tier", "3", "--duration", "0.2"],
        insert,
    ];
    cmds.into_iter()
        .map(|c| c.into_iter().map(String::from).collect())
        .collect()
}

/// `ctscope ARGS --netns FORM` with every capability, from a namespace of its own.
fn with_netns(from: &Netns, args: &[String], form: &str) -> Output {
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    argv.extend(["--netns", form]);
    run(from, &[], &argv)
}

/// Every form of `--netns` for one namespace, and the wrong ones.
pub fn netns_forms() {
    let (ns, from) = (Netns::new(), Netns::new());
    let sleeper = Sleeper::start(&ns);
    let inode = ns.inode().to_string();
    let good = [ns.name(), &sleeper.path, &inode];
    let bad = ["ctst-no-such-ns", "1", "/etc/passwd"];
    for (i, args) in families(2000).iter().enumerate() {
        // delete and get find nothing to act on (exit 1); the others succeed.
        let want = if matches!(args[0].as_str(), "delete" | "get") {
            1
        } else {
            0
        };
        for (j, form) in good.iter().enumerate() {
            // A tuple of its own per form, or the second insert finds it taken.
            let args = &families(2000 + j as u16)[i];
            let out = with_netns(&from, args, form);
            assert_eq!(
                out.status.code(),
                Some(want),
                "{args:?} --netns {form}: accepted like the name; stderr:\n{}",
                stderr(&out)
            );
        }
        for form in bad {
            let out = with_netns(&from, args, form);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?} --netns {form}: {err}");
            assert!(
                err.contains(form),
                "{args:?} --netns {form} names it: {err}"
            );
        }
    }
    // conntrack's own front end: 0 for the forms, 2 (a parameter problem) for the others.
    for (forms, want) in [(&good[..], 0), (&bad[..], 2)] {
        for form in forms {
            let out = run(&from, &[], &["conntrack", "--netns", form, "-L"]);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(want),
                "conntrack --netns {form}: {err}"
            );
            if want == 2 {
                assert!(
                    err.contains(form),
                    "conntrack --netns {form} names it: {err}"
                );
            }
        }
    }
}

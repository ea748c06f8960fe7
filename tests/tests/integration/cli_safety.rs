//! Bad input, closed pipes and missing privileges (issue 20): each ends in a clear
//! message and the documented exit status, never a panic.
//!
//! - out-of-range values are usage errors (exit 2) with the subcommand's usage;
//! - a stdout whose reader has gone ends a command quietly with status 0, and
//!   `ctscope conntrack` dies of SIGPIPE exactly when and how conntrack(8) does;
//! - `insert` refuses a TCP state on UDP and takes addresses alone for a protocol
//!   without ports;
//! - `probe` without capabilities says per tier what is missing;
//! - `events` says in one short line on stderr when it starts seeing.

use std::{
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use ctscope_tests::{ctscope, netns::Netns, wait};
use serde_json::Value;

/// Addresses of these trials' entries, apart from every other trial's.
const SRC: &str = "10.201.7.1";
const DST: &str = "10.201.7.2";

/// The unprivileged user `probe` runs as.
const NOBODY: u32 = 65534;

/// Runs ctscope with `args`; kills it after `limit` (a value that was wrongly accepted
/// would otherwise run an agent or a stream forever) and fails the trial.
fn ctscope_bounded(args: &[&str], limit: Duration) -> Output {
    let bin = ctscope::binary_or_panic();
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let exited = wait::poll(limit, Duration::from_millis(20), || {
        child.try_wait().expect("wait for ctscope")
    });
    if exited.is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("reap ctscope");
        panic!(
            "ctscope {args:?} still ran after {limit:?} (accepted?); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().expect("ctscope output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A usage error: exit 2, a message naming `says`, no panic, and where a usage line is
/// shown (clap shows none for a bad value), the one of subcommand `sub`.
fn assert_usage_error(args: &[&str], sub: &str, says: &str) {
    let out = ctscope_bounded(args, Duration::from_secs(20));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "ctscope {args:?}: {err}");
    assert!(
        !err.contains("panicked"),
        "ctscope {args:?} panicked: {err}"
    );
    assert!(
        err.contains(says),
        "ctscope {args:?} should say {says:?}: {err}"
    );
    if err.contains("Usage:") {
        assert!(
            err.contains(&format!("Usage: ctscope {sub}")),
            "ctscope {args:?} should show the usage of `{sub}`: {err}"
        );
    }
}

/// A socket path no agent listens on, so a wrongly accepted `watch` touches nothing
/// real.
fn scratch_socket() -> PathBuf {
    std::env::temp_dir().join(format!("ctscope-cli-safety-{}.sock", std::process::id()))
}

/// `events --duration 1e30` & co.: usage errors, not panics (the deadline overflowed).
pub fn out_of_range_values() {
    let socket = scratch_socket();
    let socket = socket.to_str().expect("UTF-8 temp dir");
    for d in [
        "1e30",
        "1.8e19",
        "315360001",
        "0",
        "nan",
        "inf",
        "-1",
        "soon",
    ] {
        let arg = format!("--duration={d}");
        assert_usage_error(&["events", "--no-agent", &arg], "events", "--duration");
    }
    for size in ["1000", "0", "6000", "4294967296"] {
        let arg = format!("--ring-size={size}");
        assert_usage_error(&["events", "--no-agent", &arg], "events", "power of two");
    }
    for r in ["1e30", "inf", "-0.5", "nan"] {
        let arg = format!("--resync={r}");
        let args = ["watch", "--headless", "--socket", socket, &arg];
        assert_usage_error(&args, "watch", "--resync");
    }
    // The bounds themselves are accepted: --resync 0 (after losses only) parses, seen
    // through the conflict it then meets.
    assert_usage_error(
        &["watch", "--status", "--resync", "0", "--socket", socket],
        "watch",
        "--resync",
    );
    // --status asks a running agent: the agent's own flags would be silently ignored.
    for flag in [
        &["--tier", "2"][..],
        &["--headless"],
        &["--ring-size", "8192"],
    ] {
        let mut args = vec!["watch", "--status", "--socket", socket];
        args.extend_from_slice(flag);
        assert_usage_error(&args, "watch", "cannot be used with");
    }
    // Tier 3 cannot see insert failures: waiting for them would wait forever.
    assert_usage_error(
        &["events", "--tier", "3", "--kind", "insert_failed"],
        "events",
        "new, destroy, lost",
    );
    assert!(
        !std::path::Path::new(socket).exists(),
        "no usage error may start an agent"
    );
}

/// Runs `argv` with stdout a pipe whose reader is already closed; stderr captured.
fn with_closed_stdout(argv: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let (prog, args) = argv.split_first().expect("a command");
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    child.wait_with_output().expect("wait")
}

/// `-p udp -s SRC -d DST --sport SPORT --dport 53`: the tuple of these trials' entries.
fn udp_tuple(sport: u16) -> String {
    format!("-p udp -s {SRC} -d {DST} --sport {sport} --dport 53")
}

/// A command line written as one string, as argv.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// `ctscope count | (exec 0<&-; sleep .3)`: exit 0, nothing on stderr, for every
/// command that writes to stdout; `ctscope conntrack` as conntrack(8) itself.
pub fn closed_stdout() {
    let ns = Netns::new();
    let n = ns.name();
    ns.exec(&words(&format!("conntrack -I {} -t 300", udp_tuple(1000))));
    let bin = ctscope::binary_or_panic();
    let bin = bin.to_str().expect("UTF-8 binary path");
    let commands = [
        format!("count --netns {n}"),
        format!("count --json --netns {n}"),
        // Once: loading BPF twice is slow under emulation (the VMs).
        "probe --json".into(),
        format!("stats --no-agent --netns {n}"),
        format!("list --no-agent --netns {n}"),
        format!("list --json --no-agent --netns {n}"),
        format!("top --no-agent --netns {n}"),
        format!("timeouts --no-agent --netns {n}"),
        format!("diagnose --no-agent --netns {n}"),
        format!("expect count --netns {n}"),
        format!("get --no-agent --netns {n} {}", udp_tuple(1000)),
        "count --help".into(),
        // insert writes after it created the entry: the entry stays (checked below).
        format!("insert --netns {n} {}", udp_tuple(1001)),
    ];
    for args in &commands {
        let out = with_closed_stdout(&words(&format!("{bin} {args}")));
        assert_eq!(
            (out.status.code(), stderr(&out).as_str()),
            (Some(0), ""),
            "ctscope {args} with stdout closed: {}",
            out.status
        );
    }
    let table = ns.exec(&["conntrack", "-L"]);
    assert!(
        table.contains("sport=1001 dport=53"),
        "the inserted entry is in the table:\n{table}"
    );

    // conntrack(8) dies of SIGPIPE (the shell's 141) at its first write to a closed
    // pipe: at exit for short outputs, after its summary on stderr. ctscope conntrack
    // does the same.
    let get = format!("-G {}", udp_tuple(1000));
    for args in [
        "-L",
        "-L -o extended",
        "-C",
        "-S",
        "-h",
        "-V",
        "-L expect",
        &get,
    ] {
        let run = |tool: &str| {
            let out = with_closed_stdout(&words(&format!("ip netns exec {n} {tool} {args}")));
            (out.status.code(), out.status.signal(), stderr(&out))
        };
        let theirs = run("conntrack");
        let ours = run(&format!("{bin} conntrack"));
        assert_eq!(ours, theirs, "conntrack {args} with stdout closed");
    }
}

/// `insert` checks the protocol's fields as conntrack does: `--state` is TCP's, and a
/// protocol without ports takes addresses alone.
pub fn insert_checks() {
    let ns = Netns::new();
    let n = ns.name();
    let with_state = format!("--netns {n} {} --state ESTABLISHED", udp_tuple(2000));
    for sub in ["insert", "update"] {
        assert_usage_error(&words(&format!("{sub} {with_state}")), sub, "--state");
    }
    let table = ns.exec(&["conntrack", "-L"]);
    assert!(!table.contains("sport=2000"), "nothing created:\n{table}");

    // Protocol 200 has no ports: addresses alone create it, ports are refused.
    let bare = format!("insert --netns {n} -p 200 -s {SRC} -d {DST}");
    let out = ctscope_bounded(&words(&bare), Duration::from_secs(20));
    assert!(out.status.success(), "insert -p 200: {}", stderr(&out));
    let table = ns.exec(&["conntrack", "-L"]);
    let tuple = format!("src={SRC} dst={DST} [UNREPLIED]");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("unknown  200 ") && l.contains(&tuple)),
        "protocol 200 entry in conntrack -L:\n{table}"
    );
    let ported = format!("{bare} --sport 1 --dport 2");
    assert_usage_error(&words(&ported), "insert", "has no ports");
    // A port protocol still needs both ports.
    let one_port = format!("insert --netns {n} -p udp -s {SRC} -d {DST} --sport 1");
    assert_usage_error(&words(&one_port), "insert", "--dport");

    // The kernel refuses a DYING entry (EBUSY here): its errno text is said once, not
    // once per link of the error chain.
    let dying = format!("insert --netns {n} {} -u DYING", udp_tuple(2001));
    let out = ctscope_bounded(&words(&dying), Duration::from_secs(20));
    let err = stderr(&out);
    let errno = err.trim_end().rsplit(": ").next();
    if let Some(errno) = errno.filter(|_| !out.status.success()) {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.matches(errno).count(), 1, "said once: {err}");
    }
}

/// `probe` as nobody: no tier runs, and each says what it misses; the hooks are listed
/// as not tried; HZ still comes from the kernel config.
/// A copy of the binary under test that uid 65534 may run, whatever the modes of the
/// directories of the checkout it was built in (a CI clone may sit under a 0700 one).
fn binary_for_nobody() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix("ctscope-nobody-")
        .tempdir()
        .expect("a scratch directory");
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open.clone()).expect("chmod the scratch directory");
    let copy = dir.path().join("ctscope");
    std::fs::copy(ctscope::binary_or_panic(), &copy).expect("copy ctscope");
    std::fs::set_permissions(&copy, open).expect("chmod the copy");
    (dir, copy)
}

pub fn probe_unprivileged() {
    let (_dir, bin) = binary_for_nobody();
    // As `setpriv --reuid=65534 --regid=65534 --clear-groups` (std clears the groups when
    // root sets a uid), without needing util-linux's setpriv (the VMs have busybox's).
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} as nobody: {e}", bin.display()));
        assert!(out.status.success(), "{args:?} as nobody: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: Value = serde_json::from_str(&run(&["probe", "--json"])).expect("probe JSON");
    let tiers = json["tiers"].as_array().expect("tiers");
    let reasons: Vec<&str> = tiers
        .iter()
        .filter(|t| t["available"] == false)
        .map(|t| t["reason"].as_str().expect("a reason per unavailable tier"))
        .collect();
    assert_eq!(reasons.len(), 3, "no tier runs without privileges: {json}");
    for (i, r) in reasons.iter().enumerate() {
        assert!(r.contains("CAP_"), "tier {} names a capability: {r}", i + 1);
        for other in &reasons[i + 1..] {
            assert_ne!(r, other, "each tier has its own reason");
        }
    }
    assert!(
        reasons[2].contains("CAP_NET_ADMIN"),
        "tier 3: {}",
        reasons[2]
    );
    assert!(json["tier"].is_null(), "no chosen tier: {json}");
    let hooks = json["hooks"].as_array().expect("hooks");
    assert!(!hooks.is_empty(), "hooks are listed: {json}");
    for h in hooks {
        let reason = h["reason"].as_str().unwrap_or_default();
        assert!(
            h["available"] == false && reason.starts_with("not tried: "),
            "hook: {h}"
        );
    }
    let config = std::path::Path::new("/proc/config.gz").exists()
        || std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|r| std::path::Path::new(&format!("/boot/config-{}", r.trim())).exists());
    if config {
        assert!(
            json["hz"].as_u64() > Some(0),
            "HZ from the kernel config: {json}"
        );
    }

    let text = run(&["probe"]);
    assert!(
        !text.contains("verifier: )"),
        "empty verifier quote:\n{text}"
    );
    assert!(
        text.contains("tier         none"),
        "no tier chosen:\n{text}"
    );
    let hooks_listed = text
        .lines()
        .skip_while(|l| *l != "hooks:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .count();
    assert!(hooks_listed > 0, "hooks section is not empty:\n{text}");
}

/// `events` says once, in one short line on stderr, when it starts seeing (pwru's
/// "Listening for events"), at the tier it runs and at tier 3; `--kind lost` is taken.
pub fn events_watching() {
    for tier in [&[][..], &["--tier", "3"]] {
        let mut args = vec!["events", "--no-agent", "--duration", "1", "--kind", "lost"];
        args.extend_from_slice(tier);
        // Attaching takes long under emulation (15 s in a 6.12 VM).
        let limit = ctscope::ready_timeout() * 2;
        let out = ctscope_bounded(&args, limit);
        let err = stderr(&out);
        assert!(out.status.success(), "ctscope {args:?}: {err}");
        let watching: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("ctscope: watching (tier "))
            .collect();
        assert_eq!(watching.len(), 1, "one watching line: {err}");
        assert!(
            watching[0].ends_with("), Ctrl-C to stop") && watching[0].len() < 120,
            "short: {}",
            watching[0]
        );
        if !tier.is_empty() {
            assert!(watching[0].contains("(tier 3: ctnetlink events"), "{err}");
        }
        assert!(
            err.lines().all(|l| l.len() < 200),
            "no long banner on stderr: {err}"
        );
    }
}

//! A big listing does not hold the agent up: `status` is answered while `list` renders
//! (from a copy of the rows, on a thread of its own); and a client gives up on an agent
//! that never answers, saying to use `--no-agent`.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _},
    os::unix::net::{UnixListener, UnixStream},
    process::Command,
    time::{Duration, Instant},
};

use ctscope_tests::{
    agent::{self, Agent},
    ctscope,
};

use crate::common::{big_udp_table, note};

/// The client namespace's subnet (10.200.N.0/24).
const LIST_SUBNET: u8 = 95;

/// What the CLI waits for an answer to begin (ct-user/src/agent/client.rs).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Up to 40 000 UDP entries; `list --json --all-netns` asked on a raw connection, then
/// `watch --status` on another: the status answer arrives while the listing has not
/// (its header comes once it is rendered), and the listing then has every entry.
pub fn list_does_not_block() {
    let (ctx, _sink, max) = big_udp_table(LIST_SUBNET, 40000);
    let agent = Agent::start(&["--tier", "3", "--resync", "3600"]);
    let mut list = agent.connect(&agent::request_line(&["list", "--json", "--all-netns"]));
    std::thread::sleep(Duration::from_millis(20));
    let asked = Instant::now();
    let status = agent.connect(&agent::request_line(&["watch", "--status"]));
    status
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut answer = String::new();
    BufReader::new(&status)
        .read_to_string(&mut answer)
        .expect("the status answer");
    let status_took = asked.elapsed();
    assert!(answer.contains("\"entries\""), "status answered {answer:?}");
    // Nothing of the listing yet: it is still rendering.
    list.set_nonblocking(true).expect("non-blocking");
    let mut byte = [0u8; 1];
    // (A byte read here is a failure anyway; none is taken from a pending listing.)
    let pending = matches!(list.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    assert!(
        pending,
        "the listing was answered before status ({status_took:?}): the loop waited for it"
    );
    list.set_nonblocking(false).expect("blocking");
    let lines = BufReader::new(&mut list).lines().count();
    let ours = agent.status()["per_netns"][ctx.inode.to_string()]
        .as_u64()
        .unwrap_or(0);
    assert!(
        lines as u64 > ours && ours >= u64::from(max),
        "{lines} lines (header included) for {ours} rows of the client namespace ({max} sent)"
    );
    note(format!(
        "agent_list_nonblocking: status in {status_took:?} while listing {lines} lines"
    ));
    agent.stop();
}

/// A socket that accepts and never answers, as an agent whose loop is stuck would:
/// `ctscope list` gives up after the answer timeout, exits 1 and names `--no-agent`.
pub fn client_timeout() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).expect("binding the wedged socket");
    let hold = std::thread::spawn(move || {
        let held: Vec<UnixStream> = listener.incoming().take(1).flatten().collect();
        std::thread::sleep(ANSWER_TIMEOUT + Duration::from_secs(15));
        drop(held);
    });
    let start = Instant::now();
    let out = Command::new(ctscope::binary_or_panic())
        .args(["list", "--socket"])
        .arg(&path)
        .output()
        .expect("running ctscope list");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("--no-agent"), "stderr: {stderr}");
    assert!(
        took >= ANSWER_TIMEOUT && took < ANSWER_TIMEOUT + Duration::from_secs(10),
        "gave up after {took:?}"
    );
    drop(hold);
}

//! A burst of new flows from one sender: every flow must arrive as exactly one `new` event
//! and nothing may be lost. Also prints the rate the events came at (a figure for the
//! record, not an assertion: the VMs run under TCG and the machines are shared).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddrV4,
    process::{Command, Stdio},
    time::Duration,
};

use ctscope_tests::{ctscope, events, kernel, traffic, wait};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::common::{Ctx, Watch, event_wait, note};

const FLOWS: u16 = 10_000;
const FIRST_PORT: u16 = 30_000;
const SPORT: u16 = 5353;

pub fn run(watch: Watch) {
    let mut ctx = Ctx::new(watch, 6, |_| {});
    let p = &ctx.pair;
    let src = SocketAddrV4::new(p.c_addr, SPORT);
    let (failed, took) = traffic::udp_spray(&p.c, src, p.s_addr, FIRST_PORT..FIRST_PORT + FLOWS);
    assert_eq!(
        failed, 0,
        "sends failed: the table should have room for {FLOWS} entries"
    );
    note(format!(
        "flood: {FLOWS} flows sent in {:.3} s ({:.0} flows/s)",
        took.as_secs_f64(),
        f64::from(FLOWS) / took.as_secs_f64()
    ));
    assert!(
        kernel::ct_count(&p.c) >= u64::from(FLOWS),
        "the kernel should hold all {FLOWS} entries"
    );

    let inode = ctx.inode;
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "new", inode, Some("udp")) >= usize::from(FLOWS)
    });
    let Some(evs) = ctx.finish() else { return };
    let news = events::select(&evs, "new", inode, Some("udp"));
    let mut dports: Vec<u64> = news
        .iter()
        .filter(|e| e["orig"]["sport"] == u64::from(SPORT))
        .filter_map(|e| e["orig"]["dport"].as_u64())
        .collect();
    dports.sort_unstable();
    let reported = dports.len();
    dports.dedup();
    assert_eq!(
        (dports.len(), reported),
        (usize::from(FLOWS), usize::from(FLOWS)),
        "exactly one `new` per flow: (distinct destination ports, `new` events of the flows)"
    );
    let ts: Vec<f64> = news.iter().filter_map(|e| e["ts"].as_f64()).collect();
    let span =
        ts.iter().copied().fold(f64::MIN, f64::max) - ts.iter().copied().fold(f64::MAX, f64::min);
    if span > 0.0 {
        note(format!(
            "flood: {} new events over {span:.3} s of kernel time: {:.0} events/s, 0 lost",
            news.len(),
            news.len() as f64 / span
        ));
    }
}

/// The subnet of [`stalled_reader`].
const STALLED_SUBNET: u8 = 81;

/// New flows made while nobody reads ctscope's stdout: more than its 1 MiB ring buffer
/// holds (~3 500 records).
const STALLED_FLOWS: u16 = 20_000;

/// A reader that stops reading: with a 1 MiB ring buffer and a stdout nobody reads while
/// [`STALLED_FLOWS`] flows are made, every `new` still arrives once the pipe is read
/// again, and nothing is lost: the events wait in ctscope's memory, not in the kernel's
/// ring, which the ring reader's own thread keeps draining.
pub fn stalled_reader() {
    let ctx = Ctx::new(Watch::KernelOnly, STALLED_SUBNET, |_| {});
    let p = &ctx.pair;
    let ready = tempfile::NamedTempFile::new().expect("a ready-file path");
    let ready_path = ready.path().to_path_buf();
    drop(ready);
    let mut child = Command::new(ctscope::binary_or_panic())
        .args(["events", "--json", "--ring-size", "1048576", "--netns"])
        .arg(ctx.inode.to_string())
        .arg("--ready-file")
        .arg(&ready_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ctscope events");
    let attached = wait::poll(ctscope::ready_timeout(), Duration::from_millis(50), || {
        ready_path.exists().then_some(())
    });
    assert!(attached.is_some(), "ctscope events never became ready");
    let src = SocketAddrV4::new(p.c_addr, SPORT);
    let ports = FIRST_PORT..FIRST_PORT + STALLED_FLOWS;
    let (failed, _) = traffic::udp_spray(&p.c, src, p.s_addr, ports);
    assert_eq!(failed, 0, "sends failed");
    // Nobody reads: the pipe fills after a few hundred lines and ctscope's writes block.
    std::thread::sleep(Duration::from_secs(2));
    let stdout = child.stdout.take().expect("stdout piped");
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(2));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT ctscope");
    let status = child.wait().expect("wait for ctscope");
    let evs = lines.join().expect("the reader thread");
    assert!(status.success(), "ctscope events exited {status}");
    let lost: Vec<&Value> = evs.iter().filter(|e| events::kind(e) == "lost").collect();
    assert!(
        lost.is_empty(),
        "events lost while stdout stalled: {lost:?}"
    );
    let news = events::select(&evs, "new", ctx.inode, Some("udp"));
    let mut dports: Vec<u64> = news
        .iter()
        .filter_map(|e| e["orig"]["dport"].as_u64())
        .collect();
    dports.sort_unstable();
    dports.dedup();
    assert_eq!(
        dports.len(),
        usize::from(STALLED_FLOWS),
        "one `new` per flow after the stall"
    );
    note(format!(
        "stalled reader: {} new events after a 2 s stall, 0 lost",
        news.len()
    ));
}

//! `ctscope events --tier 3`: ctnetlink events only. A forced tier 3 is "no BPF": it must
//! load and attach nothing, not even for a moment, and still report the namespace's new
//! entries. A full socket buffer is a counted `lost` record, never a silent gap.

use std::{
    net::SocketAddrV4,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use ctscope_tests::{
    ctscope::{Events, EventsOpts},
    kernel::{self, SysctlGuard},
    traffic,
};

use crate::common::{Ctx, UDP_PORT, Watch, event_wait};

/// The BPF objects (programs, maps, links) process `pid` holds, by their fd links.
fn bpf_fds(pid: &str) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new(); // gone meanwhile
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.contains("bpf"))
        .collect()
}

/// Processes whose command line has every word of `words`.
fn processes_with(words: &[String]) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|p| p.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            words.iter().all(|w| args.contains(&w.as_bytes()))
        })
        .collect()
}

/// Watches, every 2 ms until stopped, the BPF objects held by the processes whose command
/// line has `words`: loading and verifying takes far longer, so a load is caught.
struct BpfWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl BpfWatch {
    fn start(words: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (halt, found) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                for pid in processes_with(&words) {
                    found.lock().unwrap().extend(bpf_fds(&pid));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        BpfWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

fn new_sports(events: &[serde_json::Value]) -> Vec<u64> {
    let mut s: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "new")
        .filter_map(|e| e["orig"]["sport"].as_u64())
        .collect();
    s.sort_unstable();
    s
}

pub fn run() {
    let ctx = Ctx::new(Watch::KernelOnly, 61, |_| {});
    let p = &ctx.pair;
    let mut opts = EventsOpts::netns(ctx.inode);
    opts.extra.extend(["--tier".into(), "3".into()]);
    let watch = BpfWatch::start(vec![
        "events".into(),
        "--tier".into(),
        "3".into(),
        ctx.inode.to_string(),
    ]);
    let events = Events::start(&opts);

    let udp = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, udp);
    let ports = traffic::ports(29000, 3);
    traffic::udp_flows(&p.c, p.c_addr, &ports, udp);
    let want: Vec<u64> = ports.iter().map(|&p| u64::from(p)).collect();
    events.wait_until(event_wait(), |evs| new_sports(evs) == want);
    let mut held = watch.finish();
    held.sort();
    held.dedup();
    let finished = events.stop();
    assert!(
        held.is_empty(),
        "events --tier 3 held BPF objects: {held:?}"
    );
    assert_eq!(new_sports(&finished.events), want, "{:#?}", finished.events);
}

/// Flows the overrun trial makes while ctscope is stopped: more than its socket buffer
/// (8 MiB asked, about 13 000 events) holds.
const OVERRUN_FLOWS: u16 = 30000;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// `new` events and the events `lost` records count as dropped by the netlink socket.
fn seen_and_lost(events: &[serde_json::Value]) -> (u64, u64) {
    let news = events.iter().filter(|e| e["kind"] == "new").count() as u64;
    let lost = events
        .iter()
        .filter(|e| e["kind"] == "lost" && e["lost_kind"] == "ctnetlink_overrun")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    (news, lost)
}

/// ctscope stopped (SIGSTOP) while 30 000 flows are made: once it runs again, the `new`
/// events it reports and the events its `lost` records count add up to exactly 30 000 —
/// read while it runs, and again when it is told to stop (SIGINT) at once on waking: the
/// events still in its socket then must be read, not left there uncounted (a slow reader,
/// such as a busy VM, is stopped with much of the burst unread).
pub fn overrun() {
    let max: u32 = kernel::read_global("net.netfilter.nf_conntrack_max")
        .parse()
        .expect("nf_conntrack_max");
    let _max = (max < 2 * u32::from(OVERRUN_FLOWS))
        .then(|| SysctlGuard::set("net.netfilter.nf_conntrack_max", 2 * OVERRUN_FLOWS as u32));
    overrun_round(Stop::WhenAllCame);
    overrun_round(Stop::AtOnce);
}

/// When the overrun trial stops ctscope after continuing it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    WhenAllCame,
    AtOnce,
}

fn overrun_round(stop: Stop) {
    let ctx = Ctx::new(Watch::KernelOnly, 62, |_| {});
    let p = &ctx.pair;
    let mut opts = EventsOpts::netns(ctx.inode);
    opts.extra.extend(["--tier".into(), "3".into()]);
    let events = Events::start(&opts);
    signal(events.pid(), "-STOP");
    let (failed, _) = traffic::udp_spray(
        &p.c,
        SocketAddrV4::new(p.c_addr, UDP_PORT),
        p.s_addr,
        1..1 + OVERRUN_FLOWS,
    );
    signal(events.pid(), "-CONT");
    assert_eq!(failed, 0, "sends failed");
    let want = u64::from(OVERRUN_FLOWS);
    if stop == Stop::WhenAllCame {
        events.wait_until(event_wait(), |evs| {
            let (news, lost) = seen_and_lost(evs);
            news + lost >= want
        });
    }
    let finished = events.stop();
    let (news, lost) = seen_and_lost(&finished.events);
    assert!(
        lost > 0,
        "stopped {stop:?}: no lost record: {news} new events of {want}"
    );
    assert_eq!(
        news + lost,
        want,
        "stopped {stop:?}: {news} new events and {lost} counted lost, of {want} flows; \
         ctscope's stderr:\n{}",
        finished.stderr
    );
}

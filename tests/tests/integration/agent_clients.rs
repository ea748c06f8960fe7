//! Hostile and stalled clients of the agent's socket cost only themselves: a huge
//! request, listings nobody reads and a flood of connections leave the agent's memory
//! bounded and its socket answering; stalled `events` subscribers do not starve a
//! reading one, each learns what it missed (`lost`), and closed ones stop being counted.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::SocketAddrV4,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use ctscope_tests::{
    agent::{self, Agent},
    traffic, wait,
};
use serde_json::Value;

use crate::{
    agent::args,
    common::{Ctx, UDP_PORT, Watch, big_udp_table, event_wait, note},
};

/// The agent's limits (ct-user/src/agent/outbox.rs), as the tests check them.
const MAX_REQUEST_KIB: u64 = 64;
const MAX_CONNECTIONS: usize = 256;
/// The answer budget the trial gives the agent: 8 MiB rather than the default 64 fills
/// with a few answers, so a slow VM fills it well within the 30 s stall limit.
const ANSWER_BUDGET_MIB: u64 = 8;

/// The client namespaces' subnets (10.200.N.0/24).
const BOUNDS_SUBNET: u8 = 48;
const SLOW_SUBNET: u8 = 49;

/// One line from a raw client, waiting at most `limit`.
fn first_line(s: &UnixStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).expect("read timeout");
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

/// The error a header line carries ("" for `{"ok":true}`).
fn header_error(line: &str) -> String {
    let h: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("header {line:?}: {e}"));
    h["error"].as_str().unwrap_or_default().to_owned()
}

/// A request of 8 MiB without a newline, a flood of `list --json` clients that never
/// read, and more connections than the agent serves: each is refused with the limit
/// named, memory stays bounded, and `status` answers throughout.
pub fn client_bounds() {
    // A big table makes big answers.
    let (ctx, _sink, max) = big_udp_table(BOUNDS_SUBNET, 8000);
    let p = &ctx.pair;
    // Tier 3: no BPF, so the trial runs wherever root does; no resync during it.
    let budget = ANSWER_BUDGET_MIB.to_string();
    let agent = Agent::start(&[
        "--tier",
        "3",
        "--resync",
        "3600",
        "--answer-budget-mib",
        &budget,
    ]);
    let listing = agent
        .ctscope(&["list", "--json", "--netns", p.c.name()])
        .stdout;
    let answer_kib = listing.len() as u64 / 1024;
    note(format!(
        "client_bounds: {max} entries, list --json answers {answer_kib} KiB"
    ));

    huge_request(&agent);
    stalled_listings(
        &agent,
        &agent::request_line(&["list", "--json", "--netns", p.c.name()]),
        answer_kib,
    );
    connection_cap(&agent);
    agent.stop();
}

/// 8 MiB without a newline: refused, naming the limit; the agent grows by < 16 MiB.
fn huge_request(agent: &Agent) {
    let before = agent.rss_kib();
    let mut client = agent.connect(b"");
    let reader = client.try_clone().expect("clone the client");
    let writer = std::thread::spawn(move || {
        // The agent stops reading at the limit and closes: the rest fails to send.
        let _ = client.write_all(&vec![b'{'; 8 << 20]);
    });
    let line = first_line(&reader, Duration::from_secs(10));
    let _ = reader.shutdown(std::net::Shutdown::Both);
    writer.join().expect("writer thread");
    let error = header_error(&line);
    assert!(
        error.contains(&format!("{MAX_REQUEST_KIB} KiB")),
        "an 8 MiB request: {line:?}"
    );
    let grew = agent.rss_kib().saturating_sub(before);
    note(format!("huge request: refused ({error}); RSS +{grew} KiB"));
    assert!(
        grew < 16 * 1024,
        "an 8 MiB request grew the agent by {grew} KiB"
    );
}

/// 150 clients ask for the listing and never read. Unbounded, the agent would hold
/// 150 answers; bounded, it holds at most the answer budget plus one answer being
/// built, and refuses the rest, saying why. `status` answers meanwhile.
fn stalled_listings(agent: &Agent, request: &[u8], answer_kib: u64) {
    const CLIENTS: usize = 150;
    let bound = (ANSWER_BUDGET_MIB + 32) * 1024 + 2 * answer_kib;
    let unbounded = CLIENTS as u64 * answer_kib;
    assert!(
        unbounded > 2 * bound,
        "the table is too small to tell: {CLIENTS} answers of {answer_kib} KiB"
    );
    let before = agent.rss_kib();
    let clients: Vec<UnixStream> = (0..CLIENTS).map(|_| agent.connect(request)).collect();
    let mut headers: Vec<Option<String>> = vec![None; CLIENTS];
    let mut peak = before;
    let start = Instant::now();
    // Until every client has its header. (In a slow VM the first answers may be cut off
    // after 30 s unread before the last header comes: that keeps memory bounded too.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while headers.iter().any(Option::is_none) && Instant::now() < deadline {
        peak = peak.max(agent.rss_kib());
        let status = agent.status(); // Must answer while the budget is full.
        assert!(status["entries"].as_u64() > Some(0), "{status}");
        for (c, h) in clients.iter().zip(&mut headers) {
            if h.is_none() {
                *h = header_now(c);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    peak = peak.max(agent.rss_kib());
    let (mut ok, mut refused) = (0, 0);
    for line in headers.iter().flatten() {
        let error = header_error(line);
        if error.is_empty() {
            ok += 1;
        } else {
            assert!(
                error.contains("not read yet") && error.contains("retry"),
                "{line:?}"
            );
            refused += 1;
        }
    }
    let grew = peak.saturating_sub(before);
    note(format!(
        "stalled listings: {ok} answered, {refused} refused in {:.1} s; RSS +{grew} KiB (bound {bound}, \
         unbounded ~{unbounded})",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(ok + refused, CLIENTS, "clients without a header after 60 s");
    assert!(
        refused > 0,
        "no client was refused: the answer budget held {ok} answers"
    );
    assert!(
        grew < bound,
        "{CLIENTS} stalled listings grew the agent by {grew} KiB"
    );
}

/// A raw client's header line if it has arrived (reading no further than its end, give
/// or take a few hundred bytes of the body).
fn header_now(c: &UnixStream) -> Option<String> {
    c.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 512];
    let n = (&*c).read(&mut buf).ok()?;
    let line = buf[..n].split(|&b| b == b'\n').next()?;
    (n > 0).then(|| String::from_utf8_lossy(line).into_owned())
}

/// More connections than the agent serves: the ones past the cap get an error line.
fn connection_cap(agent: &Agent) {
    const EXTRA: usize = 44;
    // The stalled listings' connections end as their clients close.
    std::thread::sleep(Duration::from_millis(500));
    let clients: Vec<UnixStream> = (0..MAX_CONNECTIONS + EXTRA)
        .map(|_| agent.connect(b""))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let refusals: Vec<String> = clients.iter().filter_map(header_now).collect();
    note(format!("connection cap: {} refused", refusals.len()));
    assert_eq!(refusals.len(), EXTRA, "{refusals:?}");
    for r in &refusals {
        let error = header_error(r);
        assert!(
            error.contains(&format!("{MAX_CONNECTIONS} connections")),
            "{r:?}"
        );
    }
    drop(clients);
    let back = wait::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let s = UnixStream::connect(agent.socket()).ok()?;
        drop(s);
        agent.status()["entries"].as_u64()
    });
    assert!(back.is_some(), "the agent serves no one after the flood");
}

/// 200 `events` subscribers that never read, one `ctscope events --kind new` that
/// does, and 4000 new UDP flows: the reader gets every flow's `new` and no `lost`; a
/// stalled `--kind new` subscriber, once it reads, gets `new` + `lost` adding up to the
/// flows; closed subscribers stop being counted.
pub fn slow_subscribers(tier: &'static [&'static str]) {
    const FLOWS: u16 = 4000;
    // A burst's events (~360 KB of JSON) fit one subscriber's queue (512 KiB): the
    // reader must get them all however late the machine schedules it, so the agent may
    // not let 200 stalled subscribers crowd it out, nor drop its events for theirs.
    const BURST: u16 = 1000;
    const STALLED: usize = 200;
    const FIRST_DPORT: u16 = 10000;
    let ctx = Ctx::new(Watch::KernelOnly, SLOW_SUBNET, |_| {});
    let p = &ctx.pair;
    let _sink = traffic::UdpSink::bind(&p.s, SocketAddrV4::new(p.s_addr, UDP_PORT));
    let agent = Agent::start(&args(tier, &["--resync", "0"]));
    let netns = p.c.name();
    let every = agent::request_line(&["events", "--json", "--netns", netns]);
    let new_only = agent::request_line(&["events", "--json", "--kind", "new", "--netns", netns]);
    let stalled: Vec<UnixStream> = (0..STALLED).map(|_| agent.connect(&every)).collect();
    let quiet_new = agent.connect(&new_only);
    let (count, duration) = (FLOWS.to_string(), (event_wait().as_secs() + 30).to_string());
    let mut reader = agent.spawn(&[
        "events",
        "--json",
        "--kind",
        "new",
        "--netns",
        netns,
        "--count",
        &count,
        "--duration",
        &duration,
    ]);
    let read = Lines::collect(reader.stdout.take().expect("the reader's stdout"));
    agent.wait_subscribers(STALLED as u64 + 2);

    // Bursts, each left for the reader to take before the next: the trial is about
    // slow clients, not the ring buffer or how busy the machine is.
    for first in (FIRST_DPORT..FIRST_DPORT + FLOWS).step_by(BURST.into()) {
        let src = SocketAddrV4::new(p.c_addr, 32000);
        let (failed, _) = traffic::udp_spray(&p.c, src, p.s_addr, first..first + BURST);
        assert_eq!(failed, 0, "sends failed");
        let sent = usize::from(first - FIRST_DPORT + BURST);
        read.wait_for(sent, event_wait());
    }

    let status = reader.wait().expect("ctscope events");
    assert!(
        status.success(),
        "ctscope events through the agent: {status}"
    );
    let lines: Vec<Value> = read
        .finish()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let lost: Vec<&Value> = lines.iter().filter(|e| e["kind"] == "lost").collect();
    let mut dports: Vec<u64> = lines
        .iter()
        .filter(|e| e["kind"] == "new")
        .filter_map(|e| e["orig"]["dport"].as_u64())
        .collect();
    dports.sort_unstable();
    dports.dedup();
    note(format!(
        "slow subscribers: the reader got {} new, {} lost records; agent {}",
        dports.len(),
        lost.len(),
        agent.status()["totals"]
    ));
    assert!(lost.is_empty(), "the reading client lost events: {lost:?}");
    assert_eq!(
        dports.len(),
        usize::from(FLOWS),
        "the reading client's new events"
    );

    let (new, lost) = read_owed(&quiet_new, u64::from(FLOWS));
    note(format!(
        "the stalled --kind new subscriber: {new} new + {lost} lost"
    ));
    assert_eq!(new + lost, u64::from(FLOWS), "{new} new + {lost} lost");
    assert!(
        lost > 0,
        "the stalled subscriber took all {new}: nothing tested"
    );

    drop(stalled);
    drop(quiet_new);
    if let Err(last) = agent.wait_subscribers_exactly(0, Duration::from_secs(2)) {
        panic!("closed subscribers still counted after 2 s: {last}");
    }
    agent.stop();
}

/// Reads a stalled subscriber's stream until its `new` events and `lost` counts reach
/// `want` (or 10 s pass): the two sums.
fn read_owed(s: &UnixStream, want: u64) -> (u64, u64) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut r = BufReader::new(s);
    let (mut new, mut lost) = (0, 0);
    let mut line = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while new + lost < want && Instant::now() < deadline {
        match r.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.ends_with(b"\n") => {
                let v: Value = serde_json::from_slice(&line).expect("a JSON line");
                match v["kind"].as_str() {
                    Some("new") => new += 1,
                    Some("lost") => lost += v["count"].as_u64().unwrap_or(0),
                    _ => assert_eq!(v["ok"], true, "{v}"),
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the stalled subscriber: {e}"),
        }
    }
    (new, lost)
}

/// A child's stdout, read line by line as it comes.
struct Lines {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Lines {
    fn collect(out: impl std::io::Read + Send + 'static) -> Self {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Lines { lines, thread }
    }

    /// Waits until `n` lines came, or `limit` passed (the caller's checks then fail).
    fn wait_for(&self, n: usize, limit: Duration) {
        let _ = wait::poll(limit, Duration::from_millis(20), || {
            (self.lines.lock().unwrap().len() >= n).then_some(())
        });
    }

    /// Every line, once the stream ended.
    fn finish(self) -> Vec<String> {
        let _ = self.thread.join();
        std::mem::take(&mut self.lines.lock().unwrap())
    }
}

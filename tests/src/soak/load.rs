//! The soak's background load: steady traffic in client/server pairs, a namespace created
//! and one deleted every second, ctnetlink deletes and inserts. Every unit of work runs
//! under a gate that a checkpoint closes, so the tables hold still while they are compared.

use std::{
    collections::{HashSet, VecDeque},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    sync::{
        Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    ctscope, kernel,
    netns::{Netns, Pair},
    nft, traffic,
};

/// The pairs' subnets, 10.200.N.0/24 (no other test uses them).
pub const SUBNETS: [u8; 3] = [150, 151, 152];
/// Timeouts of unreplied UDP and closing TCP entries in the pairs: the short-lived flows
/// die by expiry within a checkpoint's settling.
pub const SHORT_TIMEOUT: u32 = 2;
const UDP_SINK: u16 = 5300;
const CLOSER_PORT: u16 = 8080;
const HOLDER_PORT: u16 = 8081;
/// Source port of the steady UDP flows (one socket, a moving window of destination ports).
const STEADY_SPORT: u16 = 9000;
/// Long-lived TCP connections per pair: ESTABLISHED entries that outlive the soak.
const HELD: usize = 10;
const TICK: Duration = Duration::from_millis(100);
const UDP_PER_TICK: u16 = 20;
const TCP_PER_TICK: usize = 2;
const CHURN_EVERY: Duration = Duration::from_secs(1);
/// Churn namespaces alive at once: each lives about this many seconds.
const CHURN_LIVE: usize = 3;
const CHURN_FLOWS: usize = 10;
const CTNETLINK_EVERY: Duration = Duration::from_millis(300);
/// Inserted entries per pair, each deleted and inserted again on its turn.
const SLOTS: usize = 40;

/// What the load did, for the report.
#[derive(Debug, Default)]
pub struct Counts {
    pub udp_flows: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub reconnects: AtomicU64,
    pub namespaces_created: AtomicU64,
    pub namespaces_deleted: AtomicU64,
    pub ct_deletes: AtomicU64,
    pub ct_inserts: AtomicU64,
    /// ctnetlink inserts refused (a full table) or tools that failed otherwise.
    pub ct_errors: AtomicU64,
}

impl Counts {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("udp_flows", get(&self.udp_flows)),
            ("tcp_connections", get(&self.tcp_connections)),
            ("reconnects", get(&self.reconnects)),
            ("namespaces_created", get(&self.namespaces_created)),
            ("namespaces_deleted", get(&self.namespaces_deleted)),
            ("ct_deletes", get(&self.ct_deletes)),
            ("ct_inserts", get(&self.ct_inserts)),
            ("ct_errors", get(&self.ct_errors)),
        ]
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A client/server pair with conntrack on both sides and short timeouts, a UDP sink, a
/// TCP server that closes at once and one that holds connections open. Sockets are
/// declared before the pair: they close before the namespaces are deleted.
pub struct Steady {
    held: Mutex<Vec<TcpStream>>,
    _holder: traffic::TcpHolder,
    _closer: traffic::TcpCloser,
    _sink: traffic::UdpSink,
    pub pair: Pair,
}

impl Steady {
    pub fn new(subnet: u8) -> Self {
        let pair = Pair::new(subnet);
        for ns in [&pair.c, &pair.s] {
            nft::apply(ns, nft::CT_ENABLE);
            kernel::short_timeouts(ns, SHORT_TIMEOUT);
        }
        let sink = traffic::UdpSink::bind(&pair.s, SocketAddrV4::new(pair.s_addr, UDP_SINK));
        let closer =
            traffic::TcpCloser::start(&pair.s, SocketAddrV4::new(pair.s_addr, CLOSER_PORT));
        let holder =
            traffic::TcpHolder::start(&pair.s, SocketAddrV4::new(pair.s_addr, HOLDER_PORT));
        let steady = Steady {
            held: Mutex::new(Vec::new()),
            _holder: holder,
            _closer: closer,
            _sink: sink,
            pair,
        };
        let held = (0..HELD)
            .map(|_| steady.connect_held())
            .collect::<Result<_, _>>();
        *steady.held.lock().unwrap() = held.expect("long-lived TCP connection");
        steady
    }

    /// The namespaces: client, then server.
    pub fn namespaces(&self) -> [&Netns; 2] {
        [&self.pair.c, &self.pair.s]
    }

    fn connect_held(&self) -> std::io::Result<TcpStream> {
        let dst = SocketAddrV4::new(self.pair.s_addr, HOLDER_PORT);
        self.pair
            .c
            .run(move || TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2)))
    }

    /// One tick: new unreplied UDP flows (a window of destination ports moving each tick),
    /// short TCP connections the server closes, a byte on every long-lived connection.
    fn tick(&self, n: u64, counts: &Counts) {
        let first = 10_000 + (n % 1000) as u16 * UDP_PER_TICK;
        let src = SocketAddrV4::new(self.pair.c_addr, STEADY_SPORT);
        traffic::udp_spray(
            &self.pair.c,
            src,
            self.pair.s_addr,
            first..first + UDP_PER_TICK,
        );
        Counts::add(&counts.udp_flows, u64::from(UDP_PER_TICK));
        let dst = SocketAddrV4::new(self.pair.s_addr, CLOSER_PORT);
        let made = self.pair.c.run(move || {
            (0..TCP_PER_TICK)
                .filter(|_| short_connection(dst).is_ok())
                .count()
        });
        Counts::add(&counts.tcp_connections, made as u64);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for conn in held.iter_mut() {
            if conn.write_all(b"x").is_err()
                && let Ok(fresh) = self.connect_held()
            {
                *conn = fresh;
                Counts::add(&counts.reconnects, 1);
            }
        }
    }

    /// The client's local ports of the long-lived connections.
    fn held_ports(&self) -> Vec<u16> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.iter()
            .filter_map(|c| c.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}

/// Connects, waits for the server's FIN, closes: an entry that ends in TIME_WAIT.
fn short_connection(dst: SocketAddrV4) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 16];
    stream.read(&mut buf).map(drop)
}

/// A short-lived namespace with conntrack on and a few UDP flows over loopback. The sink
/// goes first: an open socket would keep the namespace alive after `ip netns del`.
pub struct ChurnNs {
    _sink: traffic::UdpSink,
    pub ns: Netns,
    pub inode: u64,
}

impl ChurnNs {
    fn new() -> Self {
        let ns = Netns::new();
        nft::apply(&ns, nft::CT_ENABLE);
        let sink_addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, UDP_SINK);
        let sink = traffic::UdpSink::bind(&ns, sink_addr);
        let ports = traffic::ports(30_000, CHURN_FLOWS);
        traffic::udp_flows(&ns, Ipv4Addr::LOCALHOST, &ports, sink_addr);
        let inode = ns.inode();
        ChurnNs {
            _sink: sink,
            ns,
            inode,
        }
    }
}

/// The churn namespaces alive now, and the inodes of those deleted (the kernel reuses
/// inodes: one may be alive again).
#[derive(Default)]
pub struct Churn {
    pub live: VecDeque<ChurnNs>,
    pub deleted: HashSet<u64>,
}

/// The running load. Dropping it stops and joins its threads.
pub struct Load {
    gate: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    pub churn: Arc<Mutex<Churn>>,
    pub counts: Arc<Counts>,
}

/// What every load thread shares.
#[derive(Clone)]
struct Shared {
    gate: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    pairs: Arc<Vec<Steady>>,
}

impl Shared {
    /// Runs `unit` every `every` (under the gate) until stopped.
    fn repeat(&self, every: Duration, mut unit: impl FnMut(u64)) {
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            {
                let _open = self.gate.read().unwrap_or_else(PoisonError::into_inner);
                unit(n);
            }
            n += 1;
            std::thread::sleep(every.saturating_sub(started.elapsed()));
        }
    }
}

impl Load {
    pub fn start(pairs: Arc<Vec<Steady>>) -> Self {
        let shared = Shared {
            gate: Arc::new(RwLock::new(())),
            stop: Arc::new(AtomicBool::new(false)),
            counts: Arc::new(Counts::default()),
            pairs,
        };
        let churn = Arc::new(Mutex::new(Churn::default()));
        let s = shared.clone();
        let traffic = std::thread::spawn(move || {
            s.repeat(TICK, |n| s.pairs.iter().for_each(|p| p.tick(n, &s.counts)))
        });
        let (s, c) = (shared.clone(), churn.clone());
        let namespaces =
            std::thread::spawn(move || s.repeat(CHURN_EVERY, |_| churn_once(&c, &s.counts)));
        let s = shared.clone();
        let ctnetlink = std::thread::spawn(move || {
            s.repeat(CTNETLINK_EVERY, |n| ctnetlink_once(&s.pairs, n, &s.counts))
        });
        Load {
            gate: shared.gate,
            stop: shared.stop,
            threads: vec![
                ("traffic", traffic),
                ("namespace churn", namespaces),
                ("ctnetlink", ctnetlink),
            ],
            churn,
            counts: shared.counts,
        }
    }

    /// Holds the load still until the guard drops: every unit under way finishes first.
    pub fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A load thread that ended (it panicked): its name and message.
    pub fn died(&mut self) -> Option<String> {
        let i = self.threads.iter().position(|(_, t)| t.is_finished())?;
        let (name, thread) = self.threads.remove(i);
        let why = match thread.join() {
            Ok(()) => "ended".to_owned(),
            Err(p) => panic_text(&p),
        };
        Some(format!("the {name} load thread died: {why}"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, t) in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A panic's message.
pub fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Creates a namespace and deletes the oldest beyond [`CHURN_LIVE`].
fn churn_once(churn: &Mutex<Churn>, counts: &Counts) {
    let fresh = ChurnNs::new();
    Counts::add(&counts.namespaces_created, 1);
    let mut churn = churn.lock().unwrap_or_else(PoisonError::into_inner);
    churn.live.push_back(fresh);
    while churn.live.len() > CHURN_LIVE {
        let old = churn.live.pop_front().expect("more than CHURN_LIVE");
        churn.deleted.insert(old.inode);
        drop(old);
        Counts::add(&counts.namespaces_deleted, 1);
    }
}

/// Step `n`: in one pair's client, the inserted entry of this turn's slot is deleted and
/// inserted again (`conntrack -D` then `ctscope insert`, or `ctscope delete` then
/// `conntrack -I`, in turn); every fourth step a long-lived connection's entry is deleted
/// too (its next byte makes a new one).
fn ctnetlink_once(pairs: &[Steady], n: u64, counts: &Counts) {
    let steady = &pairs[n as usize % pairs.len()];
    let slot = (n as usize / pairs.len()) % SLOTS;
    let subnet = steady.pair.c_addr.octets()[2];
    let tuple = [
        "-p".to_owned(),
        "udp".into(),
        "-s".into(),
        Ipv4Addr::new(10, 200, subnet, 100).to_string(),
        "-d".into(),
        Ipv4Addr::new(10, 200, subnet, 200).to_string(),
        "--sport".into(),
        (40_000 + slot).to_string(),
        "--dport".into(),
        "7000".into(),
    ];
    let tuple: Vec<&str> = tuple.iter().map(String::as_str).collect();
    let insert: Vec<&str> = tuple.iter().copied().chain(["-t", "600"]).collect();
    let ns = &steady.pair.c;
    let (deleted, inserted) = if n.is_multiple_of(2) {
        (conntrack(ns, "-D", &tuple), ctscope(ns, "insert", &insert))
    } else {
        (ctscope(ns, "delete", &tuple), conntrack(ns, "-I", &insert))
    };
    // A delete that matched nothing fails too: the slot was empty (first round, early drop).
    Counts::add(&counts.ct_deletes, u64::from(deleted));
    Counts::add(&counts.ct_inserts, u64::from(inserted));
    Counts::add(&counts.ct_errors, u64::from(!inserted));
    if n.is_multiple_of(4)
        && let Some(port) = steady.held_ports().get((n / 4) as usize % HELD)
    {
        let (sport, dport) = (port.to_string(), HOLDER_PORT.to_string());
        let tcp = ["-p", "tcp", "--sport", &sport, "--dport", &dport];
        Counts::add(&counts.ct_deletes, u64::from(conntrack(ns, "-D", &tcp)));
    }
}

/// `conntrack OP ARGS` in `ns`; whether it succeeded.
fn conntrack(ns: &Netns, op: &str, args: &[&str]) -> bool {
    let argv: Vec<&str> = ["conntrack", op]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    ns.exec_output(&argv).status.success()
}

/// `ctscope COMMAND --netns NS ARGS` (the binary under test, talking to the kernel);
/// whether it succeeded.
fn ctscope(ns: &Netns, command: &str, args: &[&str]) -> bool {
    std::process::Command::new(ctscope::binary_or_panic())
        .args([command, "--netns", ns.name()])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

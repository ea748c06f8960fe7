//! Traffic between namespaces: UDP flows with chosen source ports, TCP connections that
//! close cleanly or stay open, and the single-port SNAT clash. Sockets are created inside the
//! namespace (see [`Netns::run`]).

use std::{
    io::{self, Read},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
        UdpSocket,
    },
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

/// A UDP socket bound in the server namespace. Receiving is unnecessary: its existence
/// keeps the server from answering with ICMP port unreachable, which would add RELATED
/// traffic to the client's conntrack.
#[derive(Debug)]
pub struct UdpSink {
    _socket: UdpSocket,
}

impl UdpSink {
    pub fn bind(ns: &Netns, addr: impl Into<SocketAddr>) -> Self {
        let addr = addr.into();
        let socket = ns.run(move || {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP sink {addr}: {e}"))
        });
        UdpSink { _socket: socket }
    }
}

/// Sends one datagram from `src:port` to `dst` for each port, each from its own socket:
/// one new conntrack entry per port. Returns each `sendto` result in order (EPERM when
/// netfilter dropped the packet, e.g. table full).
pub fn udp_flows(
    ns: &Netns,
    src: impl Into<IpAddr>,
    ports: &[u16],
    dst: impl Into<SocketAddr>,
) -> Vec<io::Result<()>> {
    let (src, dst) = (src.into(), dst.into());
    let ports = ports.to_vec();
    ns.run(move || {
        ports
            .iter()
            .map(|&port| {
                let socket = UdpSocket::bind(SocketAddr::new(src, port))
                    .unwrap_or_else(|e| panic!("bind UDP {src}:{port}: {e}"));
                socket.send_to(b"ctscope", dst).map(drop)
            })
            .collect()
    })
}

/// One UDP flow per port from `src:port` in `client` to `dst` in `server`, each answered
/// once: the entries have seen a reply and, answered within 2 s, are not yet ASSURED.
/// Returns once every answer has arrived.
pub fn udp_answered_flows(
    client: &Netns,
    server: &Netns,
    src: impl Into<IpAddr>,
    ports: &[u16],
    dst: impl Into<SocketAddr>,
) {
    let (src, dst) = (src.into(), dst.into());
    let echo = server
        .run(move || UdpSocket::bind(dst).unwrap_or_else(|e| panic!("bind UDP echo {dst}: {e}")));
    let wait = Some(Duration::from_secs(10));
    echo.set_read_timeout(wait).expect("set_read_timeout");
    for &port in ports {
        let from = SocketAddr::new(src, port);
        let socket = client
            .run(move || UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind UDP {from}: {e}")));
        socket.set_read_timeout(wait).expect("set_read_timeout");
        socket
            .send_to(b"ctscope", dst)
            .unwrap_or_else(|e| panic!("send {from} -> {dst}: {e}"));
        let mut buf = [0u8; 16];
        let (_, peer) = echo
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("echo {dst} waiting for {from}: {e}"));
        echo.send_to(b"answer", peer)
            .unwrap_or_else(|e| panic!("answer {peer}: {e}"));
        socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{from} waiting for the answer: {e}"));
    }
}

/// Sends one datagram from a single socket on `src:sport` to each of `dports` on `dst`, as
/// fast as one thread can: one new conntrack entry per destination port without a bind per
/// flow. Returns how many sends failed and how long the sending took.
pub fn udp_spray(
    ns: &Netns,
    src: SocketAddrV4,
    dst: Ipv4Addr,
    dports: std::ops::Range<u16>,
) -> (usize, std::time::Duration) {
    ns.run(move || {
        let socket = UdpSocket::bind(src).unwrap_or_else(|e| panic!("bind UDP {src}: {e}"));
        let start = std::time::Instant::now();
        let failed = dports
            .filter(|&port| {
                socket
                    .send_to(b"ctscope", SocketAddrV4::new(dst, port))
                    .is_err()
            })
            .count();
        (failed, start.elapsed())
    })
}

/// `n` consecutive source ports starting at `first`.
pub fn ports(first: u16, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| first.checked_add(i as u16).expect("port range overflows"))
        .collect()
}

/// A TCP listener in a namespace, served by a thread until stopped; stopped and joined on
/// drop (the server's panic re-raised, unless already panicking).
#[derive(Debug)]
struct Served<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Served<T> {
    /// Binds `addr` in `ns` and runs `serve(listener, stop)` on a thread. The listener is
    /// non-blocking so the loop can notice `stop` without a wake-up connection.
    fn start(
        ns: &Netns,
        addr: SocketAddr,
        serve: impl FnOnce(TcpListener, &AtomicBool) -> T + Send + 'static,
    ) -> Self {
        let listener = ns.run(move || {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen TCP {addr}: {e}"))
        });
        listener.set_nonblocking(true).expect("set_nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, &flag));
        Served {
            stop,
            thread: Some(thread),
        }
    }

    fn join(&mut self) -> Option<T> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    }
}

impl<T> Drop for Served<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && !std::thread::panicking()
            && let Err(p) = t.join()
        {
            std::panic::resume_unwind(p);
        }
    }
}

/// A TCP listener in the server namespace that accepts and immediately closes every
/// connection, so the server sends the first FIN. Stopped and joined on drop.
#[derive(Debug)]
pub struct TcpCloser(Served<usize>);

impl TcpCloser {
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>) -> Self {
        let addr = addr.into();
        TcpCloser(Served::start(ns, addr, move |listener, stop| {
            let mut accepted = 0;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted += 1;
                        drop(stream);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
            accepted
        }))
    }

    /// Stops the listener and returns how many connections it accepted.
    pub fn stop(mut self) -> usize {
        self.0.join().unwrap_or(0)
    }
}

/// A TCP listener that keeps every connection open and reads whatever comes: long-lived
/// ESTABLISHED entries. Stopped and joined (its connections closed) on drop.
#[derive(Debug)]
pub struct TcpHolder {
    _served: Served<()>,
}

impl TcpHolder {
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>) -> Self {
        let addr = addr.into();
        let served = Served::start(ns, addr, |listener, stop| {
            let mut open: Vec<TcpStream> = Vec::new();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                while let Ok((stream, _)) = listener.accept() {
                    if stream.set_nonblocking(true).is_ok() {
                        open.push(stream);
                    }
                }
                open.retain_mut(|s| match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        TcpHolder { _served: served }
    }
}

/// Opens `n` TCP connections from `ns` to `dst` (served by a [`TcpCloser`]), waits for the
/// server's FIN on each, then closes: every conntrack entry ends in TIME_WAIT.
/// Returns the client source ports, all distinct because the connections overlap.
pub fn tcp_connections(ns: &Netns, dst: impl Into<SocketAddr>, n: usize) -> Vec<u16> {
    let dst = dst.into();
    ns.run(move || {
        let streams: Vec<TcpStream> = (0..n)
            .map(|i| {
                TcpStream::connect_timeout(&dst, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("TCP connect #{i} to {dst}: {e}"))
            })
            .collect();
        let ports = streams
            .iter()
            .map(|s| s.local_addr().expect("local_addr").port())
            .collect();
        for mut stream in streams {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("set_read_timeout");
            let mut buf = [0u8; 16];
            let n = stream
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for the server's FIN from {dst}: {e}"));
            assert_eq!(n, 0, "the server sent data instead of closing");
        }
        ports
    })
}

/// Outcome of [`snat_clash`].
#[derive(Debug)]
pub struct SnatClash {
    /// Source ports of the two sockets, in sending order.
    pub ports: [u16; 2],
    pub first: io::Result<()>,
    pub second: io::Result<()>,
}

/// Two UDP sockets send to `dst` (port 53, matched by [`crate::nft::snat_single_port`])
/// from `src:ports[0]` then `src:ports[1]`. Both are rewritten to the one SNAT tuple; the
/// second is dropped at confirm and `sendto` fails with EPERM.
pub fn snat_clash(
    ns: &Netns,
    src: impl Into<IpAddr>,
    ports: [u16; 2],
    dst: impl Into<SocketAddr>,
) -> SnatClash {
    let mut results = udp_flows(ns, src, &ports, dst).into_iter();
    SnatClash {
        ports,
        first: results.next().expect("two results"),
        second: results.next().expect("two results"),
    }
}

/// Whether `r` failed the way a netfilter drop of a locally sent packet fails.
/// The ports whose send netfilter dropped (EPERM), given `udp_flows`' results for
/// `ports`; panics on any other send error.
pub fn dropped_ports(ports: &[u16], results: &[io::Result<()>]) -> Vec<u16> {
    let other: Vec<_> = results
        .iter()
        .filter(|r| r.is_err() && !is_eperm(r))
        .collect();
    assert!(other.is_empty(), "unexpected send errors: {other:?}");
    ports
        .iter()
        .zip(results)
        .filter(|(_, r)| is_eperm(r))
        .map(|(&port, _)| port)
        .collect()
}

pub fn is_eperm(r: &io::Result<()>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc_eperm()))
}

fn libc_eperm() -> i32 {
    nix::errno::Errno::EPERM as i32
}

/// ICMPv6 echo request, the type conntrack tracks as a new ICMPv6 flow.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// Its answer, the type of the entry's reply tuple.
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Sends one ICMPv6 echo request to `dst` per id, from a raw socket in `ns`: one new
/// conntrack entry per id (the id is the ICMP tuple's "port"); `dst`'s kernel answers.
/// The kernel computes ICMPv6 checksums of raw sockets (RFC 3542). Returns each send's
/// result in order (EPERM when netfilter dropped it), as [`udp_flows`] does.
pub fn icmpv6_echoes(ns: &Netns, dst: Ipv6Addr, ids: &[u16]) -> Vec<io::Result<()>> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let ids = ids.to_vec();
    ns.run(move || {
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .unwrap_or_else(|e| panic!("raw ICMPv6 socket: {e}"));
        let to = SockAddr::from(SocketAddrV6::new(dst, 0, 0, 0));
        ids.iter()
            .map(|id| {
                let [i0, i1] = id.to_be_bytes();
                let request = [ICMPV6_ECHO_REQUEST, 0, 0, 0, i0, i1, 0, 1, b'c', b't'];
                socket.send_to(&request, &to).map(drop)
            })
            .collect()
    })
}

/// Panics naming the first failed send of `results` (one per item of `what`).
pub fn assert_sent<T: std::fmt::Debug>(what: &[T], results: &[io::Result<()>]) {
    for (item, r) in what.iter().zip(results) {
        if let Err(e) = r {
            panic!("send {item:?}: {e}");
        }
    }
}

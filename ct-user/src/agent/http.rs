//! `ctscope watch --metrics`: an HTTP/1.1 endpoint for Prometheus at `/metrics`, in
//! Prometheus text or OpenMetrics as the `Accept` header prefers, and `/healthz` for
//! probes (404 elsewhere).
//!
//! It runs on a thread of its own with its own single-threaded runtime, because the
//! agent's loop must never wait on a scrape: all the loop does is copy its counts into a
//! [`Snapshot`] when asked over a channel ([`Asks`], beside the socket's requests), a few
//! small maps per namespace. The rest — connections, each namespace's kernel counters
//! over ctnetlink (entering a namespace takes a thread of its own for a moment), encoding
//! — happens here, so neither a slow client nor a hundred namespaces take the loop's time,
//! and a loop busy merging a dump only delays the snapshot. Scrapes are answered one at a
//! time: two Prometheus servers scraping at once cost one round of reads each, in turn.
//! Who lives in each namespace (its workload labels) is read here too, once per namespace.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Semaphore, mpsc, oneshot},
    time::timeout,
};

use super::metrics::{Format, Scrape, Snapshot, Workloads};

/// `--metrics` without a value listens on loopback, on this port: outside Prometheus'
/// exporter range 9100-9999 (full) and the ports of the exporters and eBPF agents that
/// run beside it on nodes, and below the ephemeral and NodePort ranges (README "Metrics").
pub const DEFAULT_PORT: u16 = 18427;

/// What `--metrics` alone means.
pub const DEFAULT_ADDR: &str = "127.0.0.1:18427";

/// At most this many connections at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 16;

/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection lives at most this long (Prometheus reconnects): a stalled client cannot
/// hold a slot for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The agent's loop has this long to hand over a snapshot; Prometheus' default scrape
/// timeout is 10 s.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// A scrape's request for the agent's snapshot.
pub struct Ask(oneshot::Sender<Snapshot>);

impl Ask {
    pub fn answer(self, snapshot: Snapshot) {
        let _ = self.0.send(snapshot); // The scrape gave up: nothing to do.
    }
}

/// The asks the agent's loop answers; none ever without `--metrics`.
pub struct Asks {
    rx: mpsc::Receiver<Ask>,
    /// Without an endpoint, a sender nobody uses keeps `next` pending.
    _idle: Option<mpsc::Sender<Ask>>,
}

impl Asks {
    /// No endpoint.
    pub fn none() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Asks {
            rx,
            _idle: Some(tx),
        }
    }

    /// The next ask. Cancel-safe.
    pub async fn next(&mut self) -> Option<Ask> {
        self.rx.recv().await
    }
}

/// Listens on `addr` (errors now, naming the address) and serves from a thread of its own.
pub fn serve(addr: SocketAddr) -> anyhow::Result<Asks> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot listen on {addr} for --metrics: give a free ADDR:PORT (default 127.0.0.1:{DEFAULT_PORT})"
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("making the metrics listener non-blocking")?;
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("ctscope-metrics".into())
        .spawn(move || run(listener, tx))
        .context("starting the metrics thread")?;
    Ok(Asks { rx, _idle: None })
}

fn run(listener: std::net::TcpListener, asks: mpsc::Sender<Ask>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(accept(listener, asks)),
        Err(e) => log::error!("metrics: no runtime, not serving: {e}"),
    }
}

async fn accept(listener: std::net::TcpListener, asks: mpsc::Sender<Ask>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return log::error!("metrics: not serving: {e}"),
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // One scrape at a time, holding the workload labels read by the ones before.
    let one_at_a_time = Arc::new(Mutex::new(Workloads::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // Dropped: closed.
        };
        let (asks, lock) = (asks.clone(), one_at_a_time.clone());
        let service = service_fn(move |req| respond(req, asks.clone(), lock.clone()));
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = timeout(CONNECTION_LIFETIME, conn).await {
                log::debug!("metrics: a connection ended: {e}");
            }
            drop(slot);
        });
    }
}

type Answer = Response<Full<Bytes>>;

async fn respond<B>(
    req: Request<B>,
    asks: mpsc::Sender<Ask>,
    lock: Arc<Mutex<Workloads>>,
) -> Result<Answer, Infallible> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: ctscope serves its metrics at /metrics, its health at /healthz\n",
        ));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "takes GET or HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    if path == "/healthz" {
        return Ok(health(&asks).await);
    }
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    Ok(metrics(negotiate(accept), &asks, &lock).await)
}

/// `/healthz`: 200 while the agent's loop hands over its counts in time, for liveness
/// and readiness probes that must not cost a scrape's kernel reads.
async fn health(asks: &mpsc::Sender<Ask>) -> Answer {
    match snapshot(asks).await {
        Some(_) => plain(StatusCode::OK, "ok\n"),
        None => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent's loop did not answer in time\n",
        ),
    }
}

async fn metrics(format: Format, asks: &mpsc::Sender<Ask>, lock: &Mutex<Workloads>) -> Answer {
    let mut workloads = lock.lock().await;
    let started = Instant::now();
    let Some(snapshot) = snapshot(asks).await else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent did not hand over its counts in time: retry\n",
        );
    };
    let (asked, namespaces) = (started.elapsed(), snapshot.namespaces.len());
    let scrape = Scrape::gather(snapshot, &mut workloads).await;
    let read = started.elapsed();
    let body = scrape.encode(format);
    log::debug!(
        "metrics: {namespaces} namespaces ({} workloads known), {} bytes: snapshot {asked:?}, \
         kernel reads {:?}, encoding {:?}",
        workloads.known(),
        body.len(),
        read - asked,
        started.elapsed() - read
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

/// The agent's snapshot, or `None` when its loop is gone or did not answer in time.
async fn snapshot(asks: &mpsc::Sender<Ask>) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    let asked = async {
        asks.send(Ask(tx)).await.ok()?;
        rx.await.ok()
    };
    timeout(SNAPSHOT_TIMEOUT, asked).await.ok().flatten()
}

fn plain(status: StatusCode, text: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The format an `Accept` header ranks first: OpenMetrics when it gives
/// `application/openmetrics-text` a quality at least that of plain text (as Prometheus
/// does), else Prometheus text 0.0.4 — also without a header.
pub fn negotiate(accept: Option<&str>) -> Format {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.unwrap_or_default().split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_loopback_on_the_default_port() {
        let addr: SocketAddr = DEFAULT_ADDR.parse().unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), DEFAULT_PORT);
    }

    #[test]
    fn negotiation_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,\
            application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,\
            */*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            negotiate(Some("text/plain, application/openmetrics-text; q=0.5")),
            Format::Prometheus
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text; q=0")),
            Format::Prometheus
        );
    }
}

//! The agent's end of the socket: binds it root-only, reads one request per connection
//! and hands it to the agent's loop with an [`Outbox`] for the answer, then writes the
//! answer out. The loop owns the table, so no lock is needed. The limits on clients are
//! in [`super::outbox`].

use std::{io::Write as _, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::timeout,
};

use super::{
    outbox::{self, Budget, Cut, MAX_CONNECTIONS, MAX_REQUEST, Outbox, REQUEST_TIMEOUT},
    protocol::{Header, Request},
    socket_file::SocketFile,
};

/// A request, and where its answer goes. Dropping `reply` ends the answer.
pub struct Incoming {
    pub request: Request,
    pub reply: Outbox,
}

pub struct Server {
    /// Removes the socket when the server goes (if it is still the one bound).
    _socket: SocketFile,
    requests: mpsc::Receiver<Incoming>,
}

impl Server {
    /// Binds `path` (mode 0600, in a directory created 0700) through [`SocketFile`]:
    /// refuses anything at the path but a stale socket, and the socket of an agent that
    /// still answers. Unread one-shot answers may hold `budget` bytes across clients.
    pub fn bind(path: &Path, budget: Budget) -> anyhow::Result<Self> {
        let (listener, socket) = SocketFile::bind(path)?;
        listener
            .set_nonblocking(true)
            .context("making the agent socket non-blocking")?;
        let listener = UnixListener::from_std(listener).context("listening on the agent socket")?;
        let (tx, requests) = mpsc::channel(64);
        tokio::spawn(accept(listener, tx, budget));
        Ok(Server {
            _socket: socket,
            requests,
        })
    }

    /// The next request. Cancel-safe.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.requests.recv().await
    }
}

async fn accept(listener: UnixListener, tx: mpsc::Sender<Incoming>, budget: Budget) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    tokio::spawn(serve(stream, tx.clone(), budget.clone(), slot));
                }
                Err(_) => refuse(stream),
            },
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                log::warn!("agent socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection past [`MAX_CONNECTIONS`]: one error line, then closed.
fn refuse(stream: UnixStream) {
    let line = Header::line(Some(format!(
        "the agent serves {MAX_CONNECTIONS} connections already (its limit): retry later, \
         or end idle `ctscope events` clients"
    )));
    // A new socket's buffer is empty: the line fits without waiting.
    if let Ok(s) = stream.into_std() {
        let _ = (&s).write(&line);
    }
}

/// One connection: read the request, pass it on, write the answer out until the agent
/// ends it or the client goes away. `_slot` is its place among [`MAX_CONNECTIONS`].
async fn serve(
    stream: UnixStream,
    tx: mpsc::Sender<Incoming>,
    budget: Budget,
    _slot: OwnedSemaphorePermit,
) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let request = match read_request(&mut read).await {
        Ok(r) => r,
        Err(e) => {
            let _ = write.write_all(&Header::line(Some(e))).await;
            return;
        }
    };
    let (reply, mut drain) = outbox::pair(&budget);
    if tx.send(Incoming { request, reply }).await.is_err() {
        return;
    }
    let send = drain.send_to(&mut write);
    tokio::pin!(send);
    let mut probe = [0u8; 512];
    loop {
        tokio::select! {
            r = &mut send => {
                match r {
                    Err(e @ Cut::Stalled) => log::warn!("agent socket: a client {e}"),
                    // A client that closes before reading all: its own business.
                    Err(e @ Cut::Io(_)) => log::debug!("agent socket: a client stopped: {e}"),
                    Ok(()) => {}
                }
                return;
            }
            // The client closed its end: stop, which tells the agent by closing its outbox.
            r = read.read(&mut probe) => if matches!(r, Ok(0) | Err(_)) { return },
        }
    }
}

/// One request line of at most [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`].
async fn read_request(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut bounded = (&mut *read).take(MAX_REQUEST as u64 + 1);
    match timeout(REQUEST_TIMEOUT, bounded.read_until(b'\n', &mut line)).await {
        Ok(Ok(n)) if n > MAX_REQUEST => {
            return Err(format!(
                "request longer than {} KiB: send one JSON object of at most {} KiB and a \
                 newline",
                MAX_REQUEST / 1024,
                MAX_REQUEST / 1024
            ));
        }
        Ok(Ok(n)) if n > 0 => {}
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => return Err("no request: send one JSON object and a newline".into()),
        Err(_) => {
            return Err(format!(
                "no request within {} s: send one JSON object and a newline",
                REQUEST_TIMEOUT.as_secs()
            ));
        }
    }
    Request::parse(&line)
}

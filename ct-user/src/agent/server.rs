//! The agent's end of the socket: binds it root-only, reads one request per connection
//! and hands it to the agent's loop with a channel for the answer, then copies the
//! answer out. The loop owns the table, so no lock is needed.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
    time::timeout,
};

use super::{
    protocol::{Header, Request},
    socket_file::SocketFile,
};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answer chunks a connection buffers before the agent counts a slow reader's loss.
pub const ANSWER_QUEUE: usize = 1024;

/// A request, and where its answer goes. Dropping `reply` ends the answer.
pub struct Incoming {
    pub request: Request,
    pub reply: mpsc::Sender<Vec<u8>>,
}

pub struct Server {
    /// Removes the socket when the server goes (if it is still the one bound).
    _socket: SocketFile,
    requests: mpsc::Receiver<Incoming>,
}

impl Server {
    /// Binds `path` (mode 0600, in a directory created 0700) through [`SocketFile`]:
    /// refuses anything at the path but a stale socket, and the socket of an agent that
    /// still answers.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        let (listener, socket) = SocketFile::bind(path)?;
        listener
            .set_nonblocking(true)
            .context("making the agent socket non-blocking")?;
        let listener = UnixListener::from_std(listener).context("listening on the agent socket")?;
        let (tx, requests) = mpsc::channel(64);
        tokio::spawn(accept(listener, tx));
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

async fn accept(listener: UnixListener, tx: mpsc::Sender<Incoming>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, tx.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                log::warn!("agent socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: read the request, pass it on, copy the answer out until the agent
/// ends it or the client goes away.
async fn serve(stream: UnixStream, tx: mpsc::Sender<Incoming>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let request = match read_request(&mut read).await {
        Ok(r) => r,
        Err(e) => {
            let _ = write.write_all(&Header::line(Some(e))).await;
            return;
        }
    };
    let (reply, mut answer) = mpsc::channel(ANSWER_QUEUE);
    if tx.send(Incoming { request, reply }).await.is_err() {
        return;
    }
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            chunk = answer.recv() => match chunk {
                Some(c) => if write.write_all(&c).await.is_err() { return },
                None => return,
            },
            // The client closed its end: stop, which tells the agent by closing `answer`.
            r = read.read(&mut probe) => if matches!(r, Ok(0) | Err(_)) { return },
        }
    }
}

async fn read_request(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Request, String> {
    let mut line = String::new();
    match timeout(REQUEST_TIMEOUT, read.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        _ => return Err("no request: send one JSON object and a newline".into()),
    }
    Request::parse(line.as_bytes())
}

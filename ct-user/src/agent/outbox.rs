//! What the agent owes each client, and the limits on it: how big and how slow a request
//! may be, how many clients are served at once, how many bytes of one-shot answers may
//! wait unread (one budget across clients), how much one events subscriber may have
//! queued, and how long a client may read nothing of its answer.
//!
//! The agent's loop puts chunks into a client's [`Outbox`] without ever waiting; the
//! client's connection task takes them from its [`Drain`] and writes them out, gathering
//! what is queued into one write.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
    time::timeout,
};

use super::protocol::Header;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Longest request line. A request is a few hundred bytes (the longest, `lifetimes`,
/// lists namespace inodes: 64 KiB holds thousands of them); anything longer is not a
/// ctscope client, and reading it whole is how one connection grew the agent by a GiB.
pub const MAX_REQUEST: usize = 64 * KIB;

/// How long a client may take to send its request: the CLI sends it as it connects.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once. Each costs a task, two socket buffers and what it is
/// owed (below); 256 is far beyond what an operator's shell and scripts open, while the
/// worst case stays bounded: 256 × [`SUBSCRIBER_QUEUE`] = 128 MiB of events.
pub const MAX_CONNECTIONS: usize = 256;

/// Bytes of one-shot answers (`list`, `top`, `stats`, ...) the agent holds for clients
/// that have not read them yet, across clients, unless `watch --answer-budget-mib` says
/// otherwise. `list --json` costs ~400 bytes per entry: 64 MiB lets a dozen clients list
/// a 15k-entry table at once. An answer that alone exceeds it still goes through when
/// nothing else is held, so a huge table can always be listed.
pub const ANSWER_BUDGET: usize = 64 * MIB;

/// Answers this small always go through: `status`, `get` and `stats` must work while
/// stalled clients hold the budget, and 256 connections × 64 KiB bound them to 16 MiB.
const SMALL_ANSWER: usize = 64 * KIB;

/// A client that reads nothing of its answer this long is cut off, returning its share
/// of the budget. Long enough for a paused pipe; short enough that a stalled client
/// does not hold the budget for long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes queued for one `events` subscriber: ~1500 JSON events (~350 bytes each), a
/// burst of seconds for a client that reads. Past it events are dropped and reported to
/// that subscriber alone as `lost`. Chunks are shared between subscribers, so this is
/// an upper bound on what a subscriber costs, not what it costs.
pub const SUBSCRIBER_QUEUE: usize = 512 * KIB;

/// Bytes gathered into one write: small events are written many at a time.
const WRITE_BATCH: usize = 64 * KIB;

/// The bytes of one-shot answers not read yet, across clients, and how many it allows.
#[derive(Clone, Debug)]
pub struct Budget {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(ANSWER_BUDGET)
    }
}

impl Budget {
    /// A budget of `limit` bytes (`watch --answer-budget-mib`).
    pub fn new(limit: usize) -> Self {
        Budget {
            held: Arc::default(),
            limit,
        }
    }

    /// Charges an answer of `n` bytes, or says how many bytes others' unread answers
    /// hold when it does not fit.
    fn charge(&self, n: usize) -> Result<Charge, usize> {
        let held = self.held();
        if n > SMALL_ANSWER && held > 0 && held + n > self.limit {
            return Err(held);
        }
        self.held.fetch_add(n, Ordering::Relaxed);
        Ok(Charge {
            budget: self.clone(),
            n,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Why an answer did not fit: the client is told to retry.
    fn refusal(&self, held: usize) -> Vec<u8> {
        Header::line(Some(format!(
            "the agent holds {} MiB of answers other clients have not read yet (limit {} \
             MiB): retry in a few seconds",
            held.div_ceil(MIB),
            self.limit / MIB
        )))
    }
}

/// An answer's share of the budget, returned when the answer is written or dropped.
#[derive(Debug)]
struct Charge {
    budget: Budget,
    n: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// What the agent sends in one piece: an answer (charged to the budget) or one line of
/// a stream.
#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    charge: Option<Charge>,
}

/// Whether a subscriber's chunk went into its queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue holds [`SUBSCRIBER_QUEUE`] bytes: the client reads too slowly.
    Full,
    /// The client went away.
    Closed,
}

/// The agent's end of one client: what it owes it.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Chunk>,
    queued: Arc<AtomicUsize>,
    budget: Budget,
}

/// The connection's end: what is owed, to write out.
#[derive(Debug)]
pub struct Drain {
    rx: mpsc::UnboundedReceiver<Chunk>,
    queued: Arc<AtomicUsize>,
}

/// A new client's two ends.
pub fn pair(budget: &Budget) -> (Outbox, Drain) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let outbox = Outbox {
        tx,
        queued: queued.clone(),
        budget: budget.clone(),
    };
    (outbox, Drain { rx, queued })
}

impl Outbox {
    /// A one-shot answer (header and body), charged to the budget. Past the budget the
    /// client gets an error header instead, saying how much is held and to retry.
    pub fn answer(self, mut answer: Vec<u8>) {
        answer.shrink_to_fit(); // What is held is the capacity, and the charge its length.
        let chunk = match self.budget.charge(answer.len()) {
            Ok(charge) => Chunk {
                bytes: answer.into(),
                charge: Some(charge),
            },
            Err(held) => Chunk {
                bytes: self.budget.refusal(held).into(),
                charge: None,
            },
        };
        let _ = self.tx.send(chunk);
    }

    /// The longest answer [`Outbox::answer`] would take now, so that an answer costly
    /// to build (`list` of a big table) can stop as soon as it is too long.
    pub fn room(&self) -> usize {
        match self.budget.held() {
            0 => usize::MAX,
            held => self.budget.limit.saturating_sub(held).max(SMALL_ANSWER),
        }
    }

    /// An answer past [`Outbox::room`]: the client is told to retry.
    pub fn refuse(self) {
        let _ = self.tx.send(Chunk {
            bytes: self.budget.refusal(self.budget.held()).into(),
            charge: None,
        });
    }

    /// Queues one chunk of a stream, if the subscriber's queue has room for it.
    pub fn push(&self, bytes: Bytes) -> Push {
        if self.tx.is_closed() {
            return Push::Closed;
        }
        if !self.has_room(bytes.len()) {
            return Push::Full;
        }
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        match self.tx.send(Chunk {
            bytes,
            charge: None,
        }) {
            Ok(()) => Push::Queued,
            Err(_) => Push::Closed,
        }
    }

    /// Whether `n` more bytes fit the subscriber's queue.
    pub fn has_room(&self, n: usize) -> bool {
        self.queued.load(Ordering::Relaxed) + n <= SUBSCRIBER_QUEUE
    }

    /// The client went away (its connection task ended).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Why a connection's output ended early.
#[derive(Debug, thiserror::Error)]
pub enum Cut {
    #[error("read nothing of its answer in {} s: cut off", STALL_TIMEOUT.as_secs())]
    Stalled,
    #[error("writing: {0}")]
    Io(#[from] io::Error),
}

impl Drain {
    /// Writes what is owed as it comes, gathering queued chunks into one write, until
    /// the agent owes nothing more. A write of an answer that makes no progress in
    /// [`STALL_TIMEOUT`] cuts the client off; a stream's writes wait (its queue is
    /// bounded, and a paused `events | less` resumes with a `lost` count).
    pub async fn send_to(&mut self, w: &mut (impl AsyncWrite + Unpin)) -> Result<(), Cut> {
        let mut buf = Vec::with_capacity(WRITE_BATCH);
        while let Some(first) = self.rx.recv().await {
            let mut batch = vec![first];
            let mut size = batch[0].bytes.len();
            while size < WRITE_BATCH
                && let Ok(c) = self.rx.try_recv()
            {
                size += c.bytes.len();
                batch.push(c);
            }
            let answer = batch.iter().any(|c| c.charge.is_some());
            for c in &batch {
                for piece in c.bytes.chunks(WRITE_BATCH) {
                    if buf.len() + piece.len() > WRITE_BATCH {
                        write(w, &buf, answer).await?;
                        buf.clear();
                    }
                    buf.extend_from_slice(piece);
                }
            }
            write(w, &buf, answer).await?;
            buf.clear();
            let streamed: usize = batch
                .iter()
                .filter(|c| c.charge.is_none())
                .map(|c| c.bytes.len())
                .sum();
            self.queued.fetch_sub(streamed, Ordering::Relaxed);
        }
        Ok(())
    }
}

async fn write(w: &mut (impl AsyncWrite + Unpin), buf: &[u8], answer: bool) -> Result<(), Cut> {
    if !answer {
        return Ok(w.write_all(buf).await?);
    }
    match timeout(STALL_TIMEOUT, w.write_all(buf)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Cut::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_limit_but_never_one_answer_alone() {
        let budget = Budget::default();
        let alone = budget.charge(ANSWER_BUDGET * 2).expect("one answer alone");
        assert!(budget.charge(SMALL_ANSWER + 1).is_err());
        assert!(budget.charge(SMALL_ANSWER).is_ok(), "small answers pass");
        drop(alone);
        assert_eq!(budget.held(), 0);
        let half = budget.charge(ANSWER_BUDGET / 2).unwrap();
        let _rest = budget.charge(ANSWER_BUDGET / 2).unwrap();
        let held = budget.charge(MIB).unwrap_err();
        assert_eq!(held, ANSWER_BUDGET);
        let refusal = String::from_utf8(budget.refusal(held)).unwrap();
        assert!(refusal.contains("64 MiB"), "{refusal}");
        drop(half);
        assert!(budget.charge(MIB).is_ok());
    }

    #[test]
    fn room_is_what_the_budget_would_take() {
        let budget = Budget::default();
        let (outbox, _drain) = pair(&budget);
        assert_eq!(outbox.room(), usize::MAX, "nothing held: any size");
        let _held = budget.charge(ANSWER_BUDGET - MIB).unwrap();
        assert_eq!(outbox.room(), MIB);
        let _more = budget.charge(MIB).unwrap();
        assert_eq!(outbox.room(), SMALL_ANSWER, "small answers always");
    }

    #[tokio::test]
    async fn a_subscriber_queue_is_bounded_in_bytes_and_drained_in_one_write() {
        let (outbox, mut drain) = pair(&Budget::default());
        let line = Bytes::from(vec![b'x'; 1000]);
        let mut queued = 0;
        while outbox.push(line.clone()) == Push::Queued {
            queued += 1;
        }
        assert_eq!(queued, SUBSCRIBER_QUEUE / 1000);
        assert!(!outbox.has_room(1000));
        drop(outbox);
        let mut out = Vec::new();
        drain.send_to(&mut out).await.unwrap();
        assert_eq!(out.len(), queued * 1000);
        assert_eq!(drain.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_answer_returns_its_charge_once_written() {
        let budget = Budget::default();
        let (outbox, mut drain) = pair(&budget);
        outbox.answer(vec![b'y'; 3 * WRITE_BATCH + 1]);
        assert_eq!(budget.held(), 3 * WRITE_BATCH + 1);
        let mut out = Vec::new();
        drain.send_to(&mut out).await.unwrap();
        assert_eq!(out.len(), 3 * WRITE_BATCH + 1);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_closed_client_is_seen() {
        let (outbox, drain) = pair(&Budget::default());
        assert!(!outbox.is_closed());
        drop(drain);
        assert!(outbox.is_closed());
        assert_eq!(outbox.push(Bytes::from_static(b"x\n")), Push::Closed);
    }
}

//! Tier 3: ctnetlink NEW and DESTROY events of one namespace, read in batches; a full
//! socket buffer (ENOBUFS) becomes a `lost` record counting the events the socket
//! dropped.

use std::{
    io,
    pin::pin,
    task::{Context, Poll, Waker},
};

use ct_netlink::{Event, EventKind, EventListener};

use super::Wake;
use crate::{
    clock::wall_now,
    event::{CtEvent, Lost, LostAt, LostKind, Record},
    pipeline::tier3,
};

/// Events taken per wake at most, so a flood still lets the consumer's other work run.
const BATCH: usize = 4096;

/// The `lost_kind` of events the netlink socket dropped.
pub struct Netlink {
    listener: EventListener,
    /// Inode of the namespace listened to.
    netns: u32,
    /// An overrun was read and not yet reported.
    overran: bool,
    counted: Dropped,
}

/// How many events the socket dropped, as far as reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The socket's drop counter (it wraps at 2^32), where it can be read.
    pub counter: Option<u32>,
    /// Overruns (ENOBUFS) read: the count where the drop counter cannot be read.
    pub overruns: u64,
}

impl Dropped {
    /// Events lost between `self` and `now`. The drop counter is the truth (the kernel
    /// may raise ENOBUFS more than once for one run of drops); without it, each
    /// overrun counts one.
    pub fn since(self, now: Dropped) -> u64 {
        match (self.counter, now.counter) {
            (Some(before), Some(after)) => u64::from(after.wrapping_sub(before)),
            _ => now.overruns - self.overruns,
        }
    }
}

impl Netlink {
    /// A subscription in the namespace `--netns` names (ctscope's own without one).
    pub fn subscribe(netns_arg: Option<&str>) -> anyhow::Result<Self> {
        let (listener, netns) = tier3::subscribe(netns_arg)?;
        let mut n = Netlink {
            listener,
            netns,
            overran: false,
            counted: Dropped::default(),
        };
        n.counted = n.dropped();
        Ok(n)
    }

    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// Waits for an event, then takes what else is already there. Cancel-safe: the
    /// only wait is the listener's, which loses nothing when dropped.
    pub async fn wait(&mut self, raw: &mut Vec<CtEvent>) -> io::Result<Wake> {
        let first = self.listener.next().await.map_err(io::Error::other)?;
        self.take(first, raw);
        self.drain_now(raw)?;
        Ok(Wake::Events)
    }

    /// Takes what is already received or queued on the socket, without waiting, up to
    /// an overrun (the events after it come with the next wake, after its `lost`).
    pub fn drain_now(&mut self, raw: &mut Vec<CtEvent>) -> io::Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..BATCH {
            if self.overran {
                break;
            }
            // One poll of the cancel-safe `next`: dropped when pending, it loses nothing.
            let polled = {
                let mut next = pin!(self.listener.next());
                next.as_mut().poll(&mut cx)
            };
            match polled {
                Poll::Ready(ev) => self.take(ev.map_err(io::Error::other)?, raw),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// At exit: leaves the event groups, then takes everything the socket holds. Those
    /// events happened before the stop; left unread (a burst waiting in the socket) they
    /// would be gone without a `lost` record. Overruns read meanwhile are counted by the
    /// drop counter, which the caller's last loss check reads.
    pub async fn finish(&mut self, raw: &mut Vec<CtEvent>) -> io::Result<()> {
        self.listener.unsubscribe().map_err(io::Error::other)?;
        // Unconstrained: once tokio's per-task budget is spent its sockets answer Pending
        // with data still queued, which would end the drain early.
        tokio::task::unconstrained(async {
            loop {
                let taken = raw.len();
                self.drain_now(raw)?;
                // Nothing arrives after leaving the groups, so this ends with the queue.
                let overran = std::mem::take(&mut self.overran);
                if raw.len() == taken && !overran {
                    return Ok(());
                }
            }
        })
        .await
    }

    fn take(&mut self, ev: Event, raw: &mut Vec<CtEvent>) {
        match ev {
            Event::Conntrack { kind, entry } if kind != EventKind::Update => {
                raw.push(tier3::to_event(kind, &entry, self.netns));
            }
            Event::Conntrack { .. } => {}
            Event::Overrun { .. } => self.overran = true,
        }
    }

    /// True when an overrun was read and its `lost` record is due now.
    pub fn overran(&self) -> bool {
        self.overran
    }

    /// Events the socket dropped since the last call, as one record.
    pub fn losses(&mut self) -> Vec<Record> {
        self.overran = false;
        let now = self.dropped();
        let count = self.counted.since(now);
        self.counted = now;
        if count == 0 {
            return Vec::new();
        }
        vec![Record::Lost(Lost::new(
            wall_now(),
            LostKind::Other(LostAt::CtnetlinkOverrun),
            count,
        ))]
    }

    fn dropped(&self) -> Dropped {
        let counter = self
            .listener
            .dropped()
            .inspect_err(|e| log::debug!("the socket's drop counter: {e}"))
            .ok();
        Dropped {
            counter,
            overruns: self.listener.overruns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dropped;

    fn d(counter: u32, overruns: u64) -> Dropped {
        Dropped {
            counter: Some(counter),
            overruns,
        }
    }

    fn without_counter(overruns: u64) -> Dropped {
        Dropped {
            counter: None,
            overruns,
        }
    }

    #[test]
    fn the_drop_counter_counts_events() {
        assert_eq!(d(10, 1).since(d(510, 2)), 500);
        assert_eq!(d(10, 1).since(d(10, 1)), 0);
    }

    #[test]
    fn drops_while_congested_count_without_an_overrun() {
        // ENOBUFS is raised once per congestion; later drops only move the counter.
        assert_eq!(d(7, 3).since(d(9, 3)), 2);
    }

    #[test]
    fn a_repeated_enobufs_without_drops_counts_nothing() {
        assert_eq!(d(26893, 1).since(d(26893, 2)), 0);
    }

    #[test]
    fn without_a_counter_each_overrun_counts_one() {
        assert_eq!(without_counter(0).since(without_counter(2)), 2);
        assert_eq!(d(5, 0).since(without_counter(1)), 1);
    }

    #[test]
    fn the_counter_wraps() {
        assert_eq!(d(u32::MAX - 1, 0).since(d(3, 1)), 5);
    }
}

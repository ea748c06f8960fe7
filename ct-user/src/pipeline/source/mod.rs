//! The event pipeline every consumer shares, whatever the tier: events in, `lost`
//! records for whatever could not be delivered. Tiers 1 and 2 read the BPF ring buffer
//! ([`ring`]), tier 3 the namespace's ctnetlink events ([`netlink`]). `ctscope events`
//! prints what comes out; the agent (`ctscope watch`) applies it to its table.
//!
//! Use it in two steps so a `tokio::select!` around it loses nothing: [`EventSource::wait`]
//! is cancel-safe (it only waits and takes events into a private buffer), and
//! [`EventSource::handle`] does the work that must not be cancelled (settling).

mod netlink;
mod ring;

use std::{io, time::Duration};

use tokio::time::{Interval, MissedTickBehavior, interval};

use crate::{
    bpf::loader::{Probes, Tier},
    bpf::reader::{self, ReaderError},
    event::{CtEvent, Record},
};

/// How often loss counters are checked when no event wakes the reader.
const LOSS_POLL: Duration = Duration::from_millis(200);

/// What woke [`EventSource::wait`].
pub enum Wake {
    /// Events were taken from the ring or the socket.
    Events,
    Losses,
    Settle,
}

/// What one [`EventSource::handle`] produced, in order.
#[derive(Default)]
pub struct Output {
    pub events: Vec<CtEvent>,
    /// `lost` records: the ring buffer or the netlink socket overflowed; the consumer
    /// may have missed events.
    pub lost: Vec<Record>,
}

enum Backend {
    /// Boxed: it holds the loaded BPF object.
    Ring(Box<ring::Ring>),
    Netlink(netlink::Netlink),
}

pub struct EventSource {
    backend: Backend,
    raw: Vec<CtEvent>,
    losses: Interval,
}

fn ticker(period: Duration) -> Interval {
    let mut t = interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

impl EventSource {
    /// Tiers 1 and 2: reads the attached probes (and holds them); on tier 2, reads the
    /// namespaces' counters now (increments before this point are not ours to explain).
    pub async fn start(probes: Probes) -> Result<Self, ReaderError> {
        let ring = ring::Ring::start(probes).await?;
        Ok(Self::with(Backend::Ring(Box::new(ring))))
    }

    /// Tier 3: ctnetlink events of the namespace `--netns` names (ctscope's own without
    /// one). Loads no BPF.
    pub fn ctnetlink(netns_arg: Option<&str>) -> anyhow::Result<Self> {
        let netlink = netlink::Netlink::subscribe(netns_arg)?;
        Ok(Self::with(Backend::Netlink(netlink)))
    }

    fn with(backend: Backend) -> Self {
        EventSource {
            backend,
            raw: Vec::new(),
            losses: ticker(LOSS_POLL),
        }
    }

    pub fn tier(&self) -> Tier {
        match &self.backend {
            Backend::Ring(r) => r.tier(),
            Backend::Netlink(_) => Tier::Ctnetlink,
        }
    }

    /// What the tier's hooks are: "fentry" or "kprobes" on tier 1, else the tier's label.
    pub fn hooks_label(&self) -> &'static str {
        match &self.backend {
            Backend::Ring(r) => r.hooks_label(),
            Backend::Netlink(_) => Tier::Ctnetlink.label(),
        }
    }

    /// The most events read and not yet handled at once (0 on tier 3, whose socket
    /// buffers them in the kernel).
    pub fn backlog_peak(&self) -> usize {
        match &self.backend {
            Backend::Ring(r) => r.backlog_peak(),
            Backend::Netlink(_) => 0,
        }
    }

    /// Tier 3: the inode of the one namespace it watches.
    pub fn netns(&self) -> Option<u32> {
        match &self.backend {
            Backend::Ring(_) => None,
            Backend::Netlink(n) => Some(n.netns()),
        }
    }

    /// Waits for events, a loss check or a settling round. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<Wake> {
        let (raw, backend) = (&mut self.raw, &mut self.backend);
        let events = async {
            match backend {
                Backend::Ring(r) => r.wait(raw).await,
                Backend::Netlink(n) => n.wait(raw).await,
            }
        };
        tokio::select! {
            w = events => w,
            _ = self.losses.tick() => Ok(Wake::Losses),
        }
    }

    /// Does what woke [`Self::wait`], appending the results to `out`.
    pub async fn handle(&mut self, wake: Wake, out: &mut Output) {
        match wake {
            Wake::Events => {
                self.route(out);
                // A netlink overrun is reported at once, after the events before it.
                if matches!(&self.backend, Backend::Netlink(n) if n.overran()) {
                    self.check_losses(out);
                }
            }
            Wake::Losses => self.check_losses(out),
            Wake::Settle => {
                if let Backend::Ring(r) = &mut self.backend {
                    r.settle(out).await;
                }
            }
        }
    }

    /// At exit: takes what is left, settles it and reports losses, so nothing seen is
    /// dropped.
    pub async fn finish(&mut self, out: &mut Output) {
        match &mut self.backend {
            Backend::Ring(r) => r.finish(&mut self.raw, out).await,
            Backend::Netlink(n) => {
                if let Err(e) = n.finish(&mut self.raw).await {
                    log::warn!("reading the last ctnetlink events: {e}");
                }
                out.events.append(&mut self.raw);
            }
        }
        self.check_losses(out);
    }

    fn route(&mut self, out: &mut Output) {
        match &mut self.backend {
            Backend::Ring(r) => r.route(&mut self.raw, out),
            Backend::Netlink(_) => out.events.append(&mut self.raw),
        }
        // A burst (a flush of a big table) must not leave its size behind: keep room for
        // what one read takes.
        self.raw.shrink_to(reader::TAKE_MAX);
    }

    fn check_losses(&mut self, out: &mut Output) {
        out.lost.extend(match &mut self.backend {
            Backend::Ring(r) => r.losses(),
            Backend::Netlink(n) => n.losses(),
        });
    }
}

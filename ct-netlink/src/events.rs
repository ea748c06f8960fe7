//! Conntrack event listening (`conntrack -E`) that never loses events silently.
//!
//! NETLINK_NO_ENOBUFS is deliberately left off: when the receive buffer overflows
//! the kernel drops events and reports ENOBUFS on the next `recv`, which this
//! listener turns into [`Event::Overrun`] (and counts). The caller then knows its
//! view is stale and should resync with a dump. A big receive buffer
//! (SO_RCVBUFFORCE, default 8 MiB) makes overruns rare; it does not replace the
//! resync.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NetlinkPayload};
use netlink_packet_netfilter::NetfilterMessageInner;
use netlink_packet_netfilter::conntrack::ConntrackMessage;
use netlink_sys::{AsyncSocket, Socket, TokioSocket};
use serde::Serialize;

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::netns;
use crate::ops::reply_entry;
use crate::socket::{self, Reply};

// enum nfnetlink_groups
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

const DEFAULT_RECV_BUFFER: usize = 8 << 20;
const RECV_BUF: usize = 64 * 1024;

/// SK_MEMINFO_VARS: the length of SO_MEMINFO's array.
const SK_MEMINFO_VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;

/// Event groups to subscribe to (`conntrack -E -e NEW,UPDATES,DESTROY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventGroups(u8);

impl EventGroups {
    pub const NEW: EventGroups = EventGroups(1);
    pub const UPDATE: EventGroups = EventGroups(2);
    pub const DESTROY: EventGroups = EventGroups(4);
    pub const ALL: EventGroups = EventGroups(7);

    /// True if all groups of `other` are in `self`.
    pub fn contains(self, other: EventGroups) -> bool {
        self.0 & other.0 == other.0
    }

    fn multicast_groups(self) -> impl Iterator<Item = u32> {
        [
            (Self::NEW, NFNLGRP_CONNTRACK_NEW),
            (Self::UPDATE, NFNLGRP_CONNTRACK_UPDATE),
            (Self::DESTROY, NFNLGRP_CONNTRACK_DESTROY),
        ]
        .into_iter()
        .filter(move |(g, _)| self.contains(*g))
        .map(|(_, nl)| nl)
    }
}

impl std::ops::BitOr for EventGroups {
    type Output = EventGroups;
    fn bitor(self, rhs: EventGroups) -> EventGroups {
        EventGroups(self.0 | rhs.0)
    }
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Socket receive buffer in bytes (SO_RCVBUFFORCE, falling back to SO_RCVBUF,
    /// which `net.core.rmem_max` caps).
    pub recv_buffer: usize,
    /// Listen in this network namespace instead of the current one.
    pub netns: Option<PathBuf>,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            recv_buffer: DEFAULT_RECV_BUFFER,
            netns: None,
        }
    }
}

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    New,
    Update,
    Destroy,
}

impl EventKind {
    /// `[NEW]`, `[UPDATE]`, `[DESTROY]` as conntrack -E prints them (without brackets).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::New => "NEW",
            EventKind::Update => "UPDATE",
            EventKind::Destroy => "DESTROY",
        }
    }
}

/// One item from the listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A conntrack event.
    Conntrack { kind: EventKind, entry: Box<Entry> },
    /// The socket buffer overflowed and events were lost; `total` counts the
    /// overruns seen so far on this listener. Resync with a dump.
    Overrun { total: u64 },
}

/// A subscription to conntrack events.
pub struct EventListener {
    sock: TokioSocket,
    groups: EventGroups,
    buf: Vec<u8>,
    pending: VecDeque<Event>,
    overruns: u64,
}

impl EventListener {
    /// Subscribe to `groups`. Must run inside a tokio runtime.
    pub fn subscribe(groups: EventGroups, opts: &ListenerOptions) -> Result<Self> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidInput {
            op: "subscribe",
            detail: "must be called inside a tokio runtime".into(),
        })?;
        let sock = match &opts.netns {
            Some(path) => netns::run_in_netns(path, socket::raw_socket)?,
            None => socket::raw_socket(),
        }
        .map_err(|e| Error::from_io("subscribe", e))?;
        configure(&sock, groups, opts.recv_buffer)?;
        Ok(EventListener {
            sock: socket::into_tokio(sock)?,
            groups,
            buf: Vec::with_capacity(RECV_BUF),
            pending: VecDeque::new(),
            overruns: 0,
        })
    }

    /// Leaves the event groups: the kernel queues nothing more, and what the socket
    /// already holds can still be read, so a reader that stops can take all of it.
    pub fn unsubscribe(&self) -> Result<()> {
        for group in self.groups.multicast_groups() {
            self.sock
                .socket_ref()
                .drop_membership(group)
                .map_err(|e| Error::from_io("unsubscribe", e))?;
        }
        Ok(())
    }

    /// Overruns (ENOBUFS) seen so far.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Events the kernel dropped because the receive buffer was full, since the
    /// subscription: the socket's drop counter (SO_MEMINFO). One ENOBUFS
    /// ([`Event::Overrun`]) stands for a whole run of these.
    pub fn dropped(&self) -> Result<u32> {
        meminfo(self.sock.socket_ref())
            .map(|m| m[libc::SK_MEMINFO_DROPS as usize])
            .map_err(|e| Error::from_io("getsockopt SO_MEMINFO", e))
    }

    /// The receive buffer size the kernel granted (it doubles the request).
    pub fn recv_buffer(&self) -> Result<usize> {
        self.sock
            .socket_ref()
            .get_rx_buf_sz()
            .map_err(|e| Error::from_io("getsockopt", e))
    }

    /// Wait for the next event. Cancel-safe: a dropped call loses nothing.
    pub async fn next(&mut self) -> Result<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Poll::Ready(Ok(ev));
            }
            self.buf.clear();
            self.buf.reserve(RECV_BUF);
            match ready!(self.sock.poll_recv(cx, &mut self.buf)) {
                Ok(()) => self.decode_datagram()?,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overruns += 1;
                    return Poll::Ready(Ok(Event::Overrun {
                        total: self.overruns,
                    }));
                }
                Err(e) => return Poll::Ready(Err(Error::from_io("events", e))),
            }
        }
    }

    fn decode_datagram(&mut self) -> Result<()> {
        let pending = &mut self.pending;
        socket::for_each_message("events", &self.buf, |msg| {
            let NetlinkPayload::InnerMessage(message) = msg.payload else {
                return Ok(());
            };
            let reply = Reply {
                header: msg.header,
                message,
            };
            let Some(kind) = event_kind(&reply) else {
                return Ok(());
            };
            if let Some(entry) = reply_entry("events", &reply)? {
                pending.push_back(Event::Conntrack {
                    kind,
                    entry: Box::new(entry),
                });
            }
            Ok(())
        })
    }
}

/// The same events as [`EventListener::next`], as a never-ending stream.
impl Stream for EventListener {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx).map(Some)
    }
}

fn event_kind(r: &Reply) -> Option<EventKind> {
    let NetfilterMessageInner::Conntrack(m) = &r.message.inner else {
        return None;
    };
    match m {
        ConntrackMessage::New(_) if r.header.flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 => {
            Some(EventKind::New)
        }
        ConntrackMessage::New(_) => Some(EventKind::Update),
        ConntrackMessage::Delete(_) => Some(EventKind::Destroy),
        _ => None,
    }
}

fn configure(sock: &Socket, groups: EventGroups, recv_buffer: usize) -> Result<()> {
    for group in groups.multicast_groups() {
        sock.add_membership(group)
            .map_err(|e| Error::from_io("subscribe", e))?;
    }
    set_recv_buffer(sock, recv_buffer).map_err(|e| Error::from_io("setsockopt SO_RCVBUF", e))
}

/// SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; fall back to SO_RCVBUF.
fn set_recv_buffer(sock: &Socket, bytes: usize) -> io::Result<()> {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    match setsockopt_int(sock, libc::SO_RCVBUFFORCE, val) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            setsockopt_int(sock, libc::SO_RCVBUF, val)
        }
        other => other,
    }
}

/// The socket's `SK_MEMINFO_*` counters (Linux 4.12+).
fn meminfo(sock: &Socket) -> io::Result<[u32; SK_MEMINFO_VARS]> {
    let mut mem = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&mem) as libc::socklen_t;
    // SAFETY: the fd is a valid socket owned by `sock`; optval points to `mem`, whose
    // size is passed in optlen, and the kernel writes at most optlen bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            mem.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) <= libc::SK_MEMINFO_DROPS as usize * size_of::<u32>() {
        return Err(io::Error::other("SO_MEMINFO without a drop counter"));
    }
    Ok(mem)
}

fn setsockopt_int(sock: &Socket, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is a valid socket owned by `sock`; optval points to a live
    // c_int whose size is passed as optlen.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

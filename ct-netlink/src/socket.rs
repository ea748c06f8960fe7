//! The netlink socket: request framing, sequence matching, multipart replies.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    NetfilterSubsystem,
};
use netlink_sys::{AsyncSocketExt, Socket, SocketAddr, TokioSocket, protocols::NETLINK_NETFILTER};

use crate::error::{Error, Result};

pub(crate) const NFNL_SUBSYS_CTNETLINK: u8 = 1;
pub(crate) const NFNL_SUBSYS_CTNETLINK_EXP: u8 = 2;
/// Message types below this are netlink's own (NOOP, ERROR, DONE, OVERRUN).
const NLMSG_MIN_TYPE: u16 = 0x10;

/// Receive buffer per `recv`: the kernel caps a dump skb at 32 KiB.
const RECV_BUF: usize = 64 * 1024;

/// One ctnetlink request.
pub(crate) struct Request {
    pub op: &'static str,
    pub subsys: u8,
    pub msg_type: u8,
    /// `NLM_F_*` beyond REQUEST (DUMP, CREATE, EXCL...). ACK is added to non-dumps.
    pub flags: u16,
    pub family: u8,
    /// nfgenmsg version: 0, or 1 where the kernel reads it as "honour the family"
    /// (a flush only filters by family then).
    pub version: u8,
    pub res_id: u16,
    pub attrs: Vec<ConntrackAttribute>,
}

impl Request {
    pub fn new(op: &'static str, msg_type: u8, family: u8) -> Self {
        Request {
            op,
            subsys: NFNL_SUBSYS_CTNETLINK,
            msg_type,
            flags: 0,
            family,
            version: 0,
            res_id: 0,
            attrs: Vec::new(),
        }
    }

    fn is_dump(&self) -> bool {
        self.flags & NLM_F_DUMP == NLM_F_DUMP
    }

    fn inner(&self) -> NetfilterMessageInner {
        let attrs = self.attrs.clone();
        if self.subsys != NFNL_SUBSYS_CTNETLINK {
            return NetfilterMessageInner::Other {
                subsys: NetfilterSubsystem::from(self.subsys),
                message_type: self.msg_type,
                attributes: attrs.into_iter().filter_map(into_default_nla).collect(),
            };
        }
        NetfilterMessageInner::Conntrack(match self.msg_type {
            0 => ConntrackMessage::New(attrs),
            1 => ConntrackMessage::Get(attrs),
            2 => ConntrackMessage::Delete(attrs),
            t => ConntrackMessage::Other {
                message_type: t,
                attributes: attrs.into_iter().filter_map(into_default_nla).collect(),
            },
        })
    }

    fn encode(&self, seq: u32) -> Vec<u8> {
        let header = NetfilterHeader::new(
            NetfilterProtoFamily::from(self.family),
            self.version,
            self.res_id,
        );
        let mut nl_header = NetlinkHeader::default();
        nl_header.flags = NLM_F_REQUEST | self.flags | if self.is_dump() { 0 } else { NLM_F_ACK };
        nl_header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(
            nl_header,
            NetlinkPayload::InnerMessage(NetfilterMessage::new(header, self.inner())),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }
}

/// Messages for subsystems other than conntrack carry only raw attributes.
fn into_default_nla(attr: ConntrackAttribute) -> Option<DefaultNla> {
    match attr {
        ConntrackAttribute::Other(nla) => Some(nla),
        _ => None,
    }
}

/// A reply message handed to the caller's callback.
pub(crate) struct Reply {
    pub header: NetlinkHeader,
    pub message: NetfilterMessage,
}

/// Create a netlink netfilter socket (not yet registered with tokio), bound with an
/// automatic port id. Called inside the target netns by `netns`.
pub(crate) fn raw_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    Ok(sock)
}

/// Hand a socket to tokio.
pub(crate) fn into_tokio(sock: Socket) -> Result<TokioSocket> {
    sock.set_non_blocking(true)
        .map_err(|e| Error::from_io("socket", e))?;
    // SAFETY: into_raw_fd gives up ownership of a valid, open netlink socket fd,
    // and TokioSocket takes that ownership over (closing it on drop).
    let tokio = unsafe { TokioSocket::from_raw_fd(sock.into_raw_fd()) };
    Ok(tokio)
}

/// Split a datagram into netlink messages; messages of other netfilter subsystems are
/// skipped unparsed.
pub(crate) fn for_each_message(
    op: &'static str,
    mut data: &[u8],
    mut f: impl FnMut(NetlinkMessage<NetfilterMessage>) -> Result<()>,
) -> Result<()> {
    while data.len() >= 16 {
        let header = NetlinkBuffer::new_checked(data).map_err(|e| decode_err(op, e))?;
        let (len, message_type) = (header.length() as usize, header.message_type());
        let len = len.clamp(16, data.len());
        if is_conntrack(message_type) {
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&data[..len])
                .map_err(|e| decode_err(op, e))?;
            f(msg)?;
        }
        let next = ((len + 3) & !3).min(data.len());
        data = &data[next..];
    }
    Ok(())
}

/// Netlink control messages and the conntrack subsystems: all a ctnetlink socket
/// receives. netlink-packet-netfilter also parses nftables messages, and a malformed
/// nftables attribute panics inside it (an NLA length below 4, found by the `netlink`
/// fuzz target), so nothing else reaches it.
fn is_conntrack(message_type: u16) -> bool {
    let subsys = (message_type >> 8) as u8;
    message_type < NLMSG_MIN_TYPE
        || subsys == NFNL_SUBSYS_CTNETLINK
        || subsys == NFNL_SUBSYS_CTNETLINK_EXP
}

pub(crate) fn decode_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Decode {
        op,
        detail: e.to_string(),
    }
}

/// What [`NlSocket::request_steps`] reports.
pub(crate) enum Step {
    /// About to wait for the next batch of replies.
    Recv,
    Reply(Reply),
}

/// Request/response socket.
pub(crate) struct NlSocket {
    sock: TokioSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    pub fn new(sock: Socket) -> Result<Self> {
        Ok(NlSocket {
            sock: into_tokio(sock)?,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// The network namespace cookie of this socket (`SO_NETNS_COOKIE`, Linux ≥5.14):
    /// unique per namespace for the boot, unlike inode numbers, which are recycled.
    pub fn netns_cookie(&self) -> Result<u64> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(netlink_sys::AsyncSocket::socket_ref(&self.sock));
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which we own.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::from_io(
                "getsockopt",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(cookie)
    }

    /// Send `req` and feed each reply message of the same sequence to `on_reply`,
    /// until NLMSG_DONE (dumps) or the ACK (other requests).
    pub async fn request(
        &mut self,
        req: &Request,
        mut on_reply: impl FnMut(Reply) -> Result<()>,
    ) -> Result<()> {
        self.request_steps(req, |step| match step {
            Step::Recv => Ok(()),
            Step::Reply(r) => on_reply(r),
        })
        .await
    }

    /// [`Self::request`], also telling `on` when it is about to receive the next batch
    /// (a dump's times depend on it).
    pub async fn request_steps(
        &mut self,
        req: &Request,
        mut on: impl FnMut(Step) -> Result<()>,
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = req.encode(seq);
        let kernel = SocketAddr::new(0, 0);
        self.sock
            .send_to(&bytes, &kernel)
            .await
            .map_err(|e| Error::from_io(req.op, e))?;
        loop {
            self.buf.clear();
            self.buf.reserve(RECV_BUF);
            on(Step::Recv)?;
            self.sock
                .recv(&mut self.buf)
                .await
                .map_err(|e| Error::from_io(req.op, e))?;
            let mut done = false;
            for_each_message(req.op, &self.buf, |msg| {
                if msg.header.sequence_number != seq || done {
                    return Ok(()); // a stale reply of an abandoned request
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => done = true,
                    NetlinkPayload::Error(e) => match e.code {
                        None => done = true,
                        Some(code) => return Err(Error::from_errno(req.op, -code.get())),
                    },
                    NetlinkPayload::InnerMessage(message) => on(Step::Reply(Reply {
                        header: msg.header,
                        message,
                    }))?,
                    _ => {}
                }
                Ok(())
            })?;
            if done {
                return Ok(());
            }
        }
    }
}

//! Table operations: dump, get, create, update, delete, flush, statistics.

use std::net::IpAddr;
use std::path::Path;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_netfilter::NetfilterMessageInner;
use netlink_packet_netfilter::conntrack::ConntrackMessage;
use serde::{Deserialize, Serialize};

use crate::attrs::{self, *};
use crate::entry::{Entry, Family, Status, TcpState, Tuple};
use crate::error::{Error, Result};
use crate::netns;
use crate::socket::{self, NlSocket, Reply, Request, Step};
use crate::stats::{self, CpuStats, GlobalStats};

// enum cntl_msg_types
const IPCTNL_MSG_CT_NEW: u8 = 0;
const IPCTNL_MSG_CT_GET: u8 = 1;
const IPCTNL_MSG_CT_DELETE: u8 = 2;
const IPCTNL_MSG_CT_GET_CTRZERO: u8 = 3;
const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
const IPCTNL_MSG_CT_GET_STATS: u8 = 5;
const IPCTNL_MSG_CT_GET_DYING: u8 = 6;
const IPCTNL_MSG_CT_GET_UNCONFIRMED: u8 = 7;

const AF_UNSPEC: u8 = 0;

/// Which conntrack list a dump reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// The main table (`conntrack -L`).
    #[default]
    Conntrack,
    /// Entries being destroyed (`conntrack -L dying`).
    Dying,
    /// Entries not yet confirmed (`conntrack -L unconfirmed`).
    Unconfirmed,
}

/// Kernel-side dump filter (what ctnetlink filters itself; anything finer is
/// [`TupleFilter`] in userspace).
#[derive(Debug, Clone, Default)]
pub struct DumpFilter {
    pub family: Option<Family>,
    pub table: Table,
    /// `(mark, mask)`: entries with `entry.mark & mask == mark`.
    pub mark: Option<(u32, u32)>,
    /// `(status, mask)`: entries with `entry.status & mask == status` (kernel 5.17+).
    pub status: Option<(u32, u32)>,
    pub zone: Option<u16>,
    /// Zero the counters while dumping (`conntrack -L -z`).
    pub zero_counters: bool,
}

/// Userspace match on entries, as conntrack's -s/-d/-r/-q/-p/--sport... do. Deserializing
/// refuses unknown fields: a misspelt filter must not silently match everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TupleFilter {
    pub family: Option<Family>,
    pub proto: Option<u8>,
    pub orig_src: Option<IpAddr>,
    pub orig_dst: Option<IpAddr>,
    pub reply_src: Option<IpAddr>,
    pub reply_dst: Option<IpAddr>,
    pub orig_src_port: Option<u16>,
    pub orig_dst_port: Option<u16>,
    pub reply_src_port: Option<u16>,
    pub reply_dst_port: Option<u16>,
    /// `(mark, mask)`.
    pub mark: Option<(u32, u32)>,
    pub zone: Option<u16>,
    /// All these status bits must be set.
    pub status: Option<u32>,
}

fn opt_eq<T: PartialEq>(want: Option<T>, have: Option<T>) -> bool {
    want.is_none() || want == have
}

impl TupleFilter {
    /// True when it matches every entry. (No `..`: a new field must be added here.)
    pub fn is_empty(&self) -> bool {
        matches!(
            self,
            TupleFilter {
                family: None,
                proto: None,
                orig_src: None,
                orig_dst: None,
                reply_src: None,
                reply_dst: None,
                orig_src_port: None,
                orig_dst_port: None,
                reply_src_port: None,
                reply_dst_port: None,
                mark: None,
                zone: None,
                status: None,
            }
        )
    }

    /// True when every set field matches.
    pub fn matches(&self, e: &Entry) -> bool {
        opt_eq(self.family, Some(e.family))
            && opt_eq(self.proto, Some(e.proto))
            && opt_eq(self.orig_src, Some(e.orig.src))
            && opt_eq(self.orig_dst, Some(e.orig.dst))
            && opt_eq(self.reply_src, Some(e.reply.src))
            && opt_eq(self.reply_dst, Some(e.reply.dst))
            && opt_eq(self.orig_src_port, e.orig.src_port)
            && opt_eq(self.orig_dst_port, e.orig.dst_port)
            && opt_eq(self.reply_src_port, e.reply.src_port)
            && opt_eq(self.reply_dst_port, e.reply.dst_port)
            && opt_eq(self.zone, Some(e.zone.unwrap_or(0)))
            && self
                .mark
                .is_none_or(|(m, mask)| e.mark.unwrap_or(0) & mask == m)
            && self.status.is_none_or(|s| e.status.contains(s))
    }
}

/// An entry to insert (`conntrack -I`).
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub orig: Tuple,
    /// Defaults to `orig.inverted()` (no NAT).
    pub reply: Option<Tuple>,
    /// Seconds; the kernel requires one.
    pub timeout: u32,
    /// Status bits (`Status::*`); CONFIRMED is added for you.
    pub status: Option<u32>,
    pub mark: Option<u32>,
    pub zone: Option<u16>,
    pub tcp_state: Option<TcpState>,
    pub labels: Option<Vec<u8>>,
    pub helper: Option<String>,
    /// Source NAT set up at creation (`CTA_NAT_SRC`, `conntrack -I --src-nat`): the
    /// kernel rewrites the reply tuple's destination (needs the nf_nat module).
    pub src_nat: Option<NatRange>,
    /// Destination NAT (`CTA_NAT_DST`, `conntrack -I --dst-nat`): the reply tuple's
    /// source is rewritten.
    pub dst_nat: Option<NatRange>,
}

/// A NAT mapping for [`NewEntry`]: one address (same family as the entry) and an
/// optional port, each sent as a min = max range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatRange {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl NewEntry {
    /// An entry with the given original tuple and timeout, everything else default.
    pub fn new(orig: Tuple, timeout: u32) -> Self {
        NewEntry {
            orig,
            reply: None,
            timeout,
            status: None,
            mark: None,
            zone: None,
            tcp_state: None,
            labels: None,
            helper: None,
            src_nat: None,
            dst_nat: None,
        }
    }
}

/// Changes to an existing entry (`conntrack -U`); unset fields stay as they are.
#[derive(Debug, Clone)]
pub struct Update {
    pub orig: Tuple,
    pub zone: Option<u16>,
    pub timeout: Option<u32>,
    pub mark: Option<u32>,
    /// Only the bits of `mask` are changed in the mark (kernel 4.x+).
    pub mark_mask: Option<u32>,
    /// The kernel refuses to clear SEEN_REPLY/ASSURED (EBUSY) and ignores the NAT
    /// bits; CONFIRMED is added for you.
    pub status: Option<u32>,
    pub labels: Option<Vec<u8>>,
    pub labels_mask: Option<Vec<u8>>,
    pub tcp_state: Option<TcpState>,
}

impl Update {
    /// An update of the entry with this original tuple that changes nothing yet.
    pub fn new(orig: Tuple) -> Self {
        Update {
            orig,
            zone: None,
            timeout: None,
            mark: None,
            mark_mask: None,
            status: None,
            labels: None,
            labels_mask: None,
            tcp_state: None,
        }
    }
}

/// A ctnetlink connection to one network namespace's conntrack table.
pub struct Conntrack {
    sock: NlSocket,
}

fn ensure_runtime() -> Result<()> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| Error::InvalidInput {
            op: "open",
            detail: "must be called inside a tokio runtime".into(),
        })
}

fn family_num(f: Option<Family>) -> u8 {
    f.map_or(AF_UNSPEC, Family::to_af)
}

/// The entry carried by a conntrack message, if any.
pub(crate) fn reply_entry(op: &'static str, r: &Reply) -> Result<Option<Entry>> {
    let attrs = match &r.message.inner {
        NetfilterMessageInner::Conntrack(
            ConntrackMessage::New(a) | ConntrackMessage::Get(a) | ConntrackMessage::Delete(a),
        ) => a,
        _ => return Ok(None),
    };
    let af = u8::from(r.message.header.family);
    attrs::decode_entry(af, attrs)
        .map(Some)
        .ok_or_else(|| socket::decode_err(op, "conntrack message without both tuples"))
}

pub(crate) fn raw_attrs(r: &Reply) -> &[netlink_packet_core::DefaultNla] {
    match &r.message.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::Other { attributes, .. }) => attributes,
        NetfilterMessageInner::Other { attributes, .. } => attributes,
        _ => &[],
    }
}

impl Conntrack {
    pub(crate) fn socket(&mut self) -> &mut NlSocket {
        &mut self.sock
    }

    /// Connect to the current network namespace. Must run inside a tokio runtime.
    pub fn open() -> Result<Self> {
        ensure_runtime()?;
        let sock = socket::raw_socket().map_err(|e| Error::from_io("open", e))?;
        Ok(Conntrack {
            sock: NlSocket::new(sock)?,
        })
    }

    /// Connect to the network namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`). The socket keeps talking to that namespace.
    pub fn open_in_netns(path: impl AsRef<Path>) -> Result<Self> {
        ensure_runtime()?;
        let sock = netns::run_in_netns(path.as_ref(), socket::raw_socket)?
            .map_err(|e| Error::from_io("open", e))?;
        Ok(Conntrack {
            sock: NlSocket::new(sock)?,
        })
    }

    async fn collect_entries(&mut self, req: Request) -> Result<Vec<Entry>> {
        let op = req.op;
        let mut out = Vec::new();
        self.sock
            .request(&req, |r| {
                out.extend(reply_entry(op, &r)?);
                Ok(())
            })
            .await?;
        Ok(out)
    }

    /// The main table, each entry with a `stamp()` no later than when the kernel read it
    /// (see [`BatchTimes`]): the kernel computes an entry's timeout as it sends it, a
    /// large dump spans seconds, and the agent must tell whether a `destroy` came after.
    pub async fn dump_stamped<T: Clone>(
        &mut self,
        stamp: impl Fn() -> T,
    ) -> Result<Vec<(Entry, T)>> {
        let mut req = Request::new("dump", IPCTNL_MSG_CT_GET, AF_UNSPEC);
        req.flags = NLM_F_DUMP;
        let op = req.op;
        let mut out = Vec::new();
        let mut batches = BatchTimes::new(stamp());
        self.sock
            .request_steps(&req, |step| {
                match step {
                    Step::Recv => batches.before_recv(stamp()),
                    Step::Reply(r) => {
                        let read = batches.read_since();
                        out.extend(reply_entry(op, &r)?.map(|e| (e, read.clone())));
                    }
                }
                Ok(())
            })
            .await?;
        Ok(out)
    }

    /// All entries of the main table, optionally of one family.
    pub async fn dump(&mut self, family: Option<Family>) -> Result<Vec<Entry>> {
        self.dump_filtered(&DumpFilter {
            family,
            ..DumpFilter::default()
        })
        .await
    }

    /// A dump with the kernel-side filters ctnetlink supports.
    pub async fn dump_filtered(&mut self, f: &DumpFilter) -> Result<Vec<Entry>> {
        let msg = match (f.table, f.zero_counters) {
            (Table::Conntrack, false) => IPCTNL_MSG_CT_GET,
            (Table::Conntrack, true) => IPCTNL_MSG_CT_GET_CTRZERO,
            (Table::Dying, _) => IPCTNL_MSG_CT_GET_DYING,
            (Table::Unconfirmed, _) => IPCTNL_MSG_CT_GET_UNCONFIRMED,
        };
        let mut req = Request::new("dump", msg, family_num(f.family));
        req.flags = NLM_F_DUMP;
        if let Some((mark, mask)) = f.mark {
            req.attrs.push(u32_attr(CTA_MARK, mark));
            req.attrs.push(u32_attr(CTA_MARK_MASK, mask));
        }
        if let Some((status, mask)) = f.status {
            req.attrs.push(status_attr(status));
            req.attrs.push(u32_attr(CTA_STATUS_MASK, mask));
        }
        if let Some(zone) = f.zone {
            req.attrs.push(u16_attr(CTA_ZONE, zone));
        }
        self.collect_entries(req).await
    }

    /// Entries matching a userspace filter (kernel-side family/mark/zone first).
    pub async fn list(&mut self, f: &TupleFilter) -> Result<Vec<Entry>> {
        let kernel = DumpFilter {
            family: f.family,
            mark: f.mark,
            ..DumpFilter::default()
        };
        let mut entries = self.dump_filtered(&kernel).await?;
        entries.retain(|e| f.matches(e));
        Ok(entries)
    }

    /// Number of entries in the table (`conntrack -C`).
    pub async fn count(&mut self) -> Result<u32> {
        Ok(self.stats_global().await?.entries)
    }

    /// Per-CPU counters, sorted by CPU (`conntrack -S`).
    pub async fn stats_cpu(&mut self) -> Result<Vec<CpuStats>> {
        let mut req = Request::new("stats", IPCTNL_MSG_CT_GET_STATS_CPU, AF_UNSPEC);
        req.flags = NLM_F_DUMP;
        let mut out = Vec::new();
        self.sock
            .request(&req, |r| {
                out.push(stats::decode_cpu(r.message.header.res_id, raw_attrs(&r)));
                Ok(())
            })
            .await?;
        out.sort_by_key(|s| s.cpu);
        Ok(out)
    }

    /// Table-wide entry count and limit.
    pub async fn stats_global(&mut self) -> Result<GlobalStats> {
        let req = Request::new("count", IPCTNL_MSG_CT_GET_STATS, AF_UNSPEC);
        let mut out = None;
        self.sock
            .request(&req, |r| {
                out = Some(stats::decode_global(raw_attrs(&r)));
                Ok(())
            })
            .await?;
        out.ok_or_else(|| socket::decode_err("count", "no statistics message in the reply"))
    }

    /// The entry with this original tuple, or `None`.
    pub async fn get(&mut self, orig: &Tuple, zone: Option<u16>) -> Result<Option<Entry>> {
        let mut req = Request::new("get", IPCTNL_MSG_CT_GET, orig.family().to_af());
        req.attrs.push(tuple_orig(orig));
        push_zone(&mut req, zone);
        match self.collect_entries(req).await {
            Ok(mut v) => Ok(v.pop()),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The cookie of the namespace this socket lives in (see `SO_NETNS_COOKIE`).
    pub fn netns_cookie(&self) -> Result<u64> {
        self.sock.netns_cookie()
    }

    /// The entry with this reply tuple, or `None` (finds the owner of a NAT mapping).
    pub async fn get_by_reply(
        &mut self,
        reply: &Tuple,
        zone: Option<u16>,
    ) -> Result<Option<Entry>> {
        let mut req = Request::new("get", IPCTNL_MSG_CT_GET, reply.family().to_af());
        req.attrs.push(tuple_reply(reply));
        push_zone(&mut req, zone);
        match self.collect_entries(req).await {
            Ok(mut v) => Ok(v.pop()),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the entry with this original tuple ([`Error::NotFound`] if none).
    pub async fn delete(&mut self, orig: &Tuple, zone: Option<u16>) -> Result<()> {
        let mut req = Request::new("delete", IPCTNL_MSG_CT_DELETE, orig.family().to_af());
        req.attrs.push(tuple_orig(orig));
        push_zone(&mut req, zone);
        self.sock.request(&req, |_| Ok(())).await
    }

    /// Delete exactly this entry: tuple, zone and id must all still match.
    pub async fn delete_entry(&mut self, e: &Entry) -> Result<()> {
        let mut req = Request::new("delete", IPCTNL_MSG_CT_DELETE, e.family.to_af());
        req.attrs.push(tuple_orig(&e.orig));
        push_zone(&mut req, e.zone);
        if let Some(id) = e.id {
            req.attrs.push(u32_attr(CTA_ID, id));
        }
        self.sock.request(&req, |_| Ok(())).await
    }

    /// Delete every entry the filter matches (`conntrack -D` with filters); returns
    /// the entries deleted. Entries that vanish meanwhile are skipped.
    pub async fn delete_matching(&mut self, f: &TupleFilter) -> Result<Vec<Entry>> {
        let mut deleted = Vec::new();
        for e in self.list(f).await? {
            match self.delete_entry(&e).await {
                Ok(()) => deleted.push(e),
                Err(Error::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(deleted)
    }

    /// Delete all entries (of one family, if given) (`conntrack -F`).
    pub async fn flush(&mut self, family: Option<Family>) -> Result<()> {
        let mut req = Request::new("flush", IPCTNL_MSG_CT_DELETE, family_num(family));
        // Without version 1 (or CTA_FILTER) the kernel flushes every family.
        req.version = u8::from(family.is_some());
        self.sock.request(&req, |_| Ok(())).await
    }

    /// Insert a new entry ([`Error::Exists`] if the tuple is taken).
    pub async fn create(&mut self, n: &NewEntry) -> Result<()> {
        let reply = n.reply.clone().unwrap_or_else(|| n.orig.inverted());
        let mut req = Request::new("create", IPCTNL_MSG_CT_NEW, n.orig.family().to_af());
        req.flags = NLM_F_CREATE | NLM_F_EXCL;
        req.attrs.push(tuple_orig(&n.orig));
        req.attrs.push(tuple_reply(&reply));
        req.attrs.push(u32_attr(CTA_TIMEOUT, n.timeout));
        push_common(&mut req, n.status, n.mark, None, n.tcp_state);
        push_zone(&mut req, n.zone);
        if let Some(labels) = &n.labels {
            req.attrs.push(bytes_attr(CTA_LABELS, labels));
        }
        if let Some(helper) = &n.helper {
            req.attrs.push(helper_attr(helper));
        }
        if let Some(nat) = n.src_nat {
            req.attrs.push(nat_attr(CTA_NAT_SRC, nat.addr, nat.port));
        }
        if let Some(nat) = n.dst_nat {
            req.attrs.push(nat_attr(CTA_NAT_DST, nat.addr, nat.port));
        }
        self.sock.request(&req, |_| Ok(())).await
    }

    /// Change an existing entry ([`Error::NotFound`] if none).
    pub async fn update(&mut self, u: &Update) -> Result<()> {
        let mut req = Request::new("update", IPCTNL_MSG_CT_NEW, u.orig.family().to_af());
        req.attrs.push(tuple_orig(&u.orig));
        push_zone(&mut req, u.zone);
        if let Some(t) = u.timeout {
            req.attrs.push(u32_attr(CTA_TIMEOUT, t));
        }
        push_common(&mut req, u.status, u.mark, u.mark_mask, u.tcp_state);
        if let Some(labels) = &u.labels {
            req.attrs.push(bytes_attr(CTA_LABELS, labels));
            let mask = u
                .labels_mask
                .clone()
                .unwrap_or_else(|| vec![0xff; labels.len()]);
            req.attrs.push(bytes_attr(CTA_LABELS_MASK, &mask));
        }
        self.sock.request(&req, |_| Ok(())).await
    }
}

fn push_zone(req: &mut Request, zone: Option<u16>) {
    if let Some(z) = zone {
        req.attrs.push(u16_attr(CTA_ZONE, z));
    }
}

fn push_common(
    req: &mut Request,
    status: Option<u32>,
    mark: Option<u32>,
    mark_mask: Option<u32>,
    tcp: Option<TcpState>,
) {
    if let Some(s) = status {
        // The kernel answers EBUSY to any attempt to change CONFIRMED, which a
        // new or existing table entry always has: keep it set.
        req.attrs.push(status_attr(s | Status::CONFIRMED));
    }
    if let Some(m) = mark {
        req.attrs.push(u32_attr(CTA_MARK, m));
    }
    if let Some(m) = mark_mask {
        req.attrs.push(u32_attr(CTA_MARK_MASK, m));
    }
    if let Some(t) = tcp {
        req.attrs.push(tcp_state_attr(t));
    }
}

/// When the kernel read a dump's batch, at the latest time known to be no later: it fills
/// the next batch at the end of the `recv` before the one that returns it (the first one
/// while the request is sent). Stamping entries when they are decoded instead could be
/// seconds late on a busy reader, and an entry destroyed in between would look younger
/// than its `destroy`.
struct BatchTimes<T> {
    /// The batch being decoded was read no earlier than this.
    current: T,
    /// Taken before the last `recv`: the next batch is read after it.
    last_recv: Option<T>,
}

impl<T: Clone> BatchTimes<T> {
    /// `sent`: taken before the request was sent.
    fn new(sent: T) -> Self {
        BatchTimes {
            current: sent,
            last_recv: None,
        }
    }

    fn before_recv(&mut self, now: T) {
        if let Some(previous) = self.last_recv.replace(now) {
            self.current = previous;
        }
    }

    fn read_since(&self) -> T {
        self.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::BatchTimes;

    /// Batch 1 is read while the request is sent; batch n at the end of recv n-1.
    #[test]
    fn a_batch_is_dated_by_the_recv_before_it() {
        let mut t = BatchTimes::new(0);
        t.before_recv(10);
        assert_eq!(t.read_since(), 0, "batch 1");
        t.before_recv(20);
        assert_eq!(t.read_since(), 10, "batch 2");
        t.before_recv(30);
        assert_eq!(t.read_since(), 20, "batch 3");
    }
}

//! The fixed-size event record the BPF programs write into the ring buffer.

/// What happened to a conntrack entry.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum EventKind {
    /// An entry entered the table: confirmed by the packet path, or inserted via ctnetlink.
    New = 1,
    /// A confirmed entry left the table; `cause` holds a [`DestroyReason`].
    Destroy = 2,
    /// `__nf_conntrack_confirm` dropped a new entry; `cause` holds a [`Cause`].
    InsertFailed = 3,
    /// A clash at confirm was resolved (merged into the winner, or NAT-clash reply-only insert).
    ClashResolved = 4,
    /// `__nf_conntrack_alloc` failed: the table is full and early_drop freed nothing.
    TableFull = 5,
    /// An entry was evicted by `early_drop()` to make room; it has left the table.
    EarlyDrop = 6,
}

impl EventKind {
    /// Number of slots needed to index counters by kind (kinds start at 1).
    pub const COUNT: usize = 8;

    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::New,
            2 => Self::Destroy,
            3 => Self::InsertFailed,
            4 => Self::ClashResolved,
            5 => Self::TableFull,
            6 => Self::EarlyDrop,
            _ => return None,
        })
    }

    /// The name users read, as serde writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Destroy => "destroy",
            Self::InsertFailed => "insert_failed",
            Self::ClashResolved => "clash_resolved",
            Self::TableFull => "table_full",
            Self::EarlyDrop => "early_drop",
        }
    }
}

/// Why an insert failed, or how a clash was resolved (`kind` InsertFailed / ClashResolved).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Cause {
    Unknown = 0,
    /// The clash was in the REPLY direction: two flows got the same NAT mapping.
    NatPortClash = 1,
    /// The clash was in the ORIGINAL direction (same flow from two CPUs) and was not merged.
    SameFlowRace = 2,
    /// The entry was already DYING when confirm ran (killed while unconfirmed).
    Dying = 3,
    /// No clash, not dying: the hash chain was too long (`chaintoolong`).
    ChainTooLong = 4,
    /// The entry was already CONFIRMED (cloned/broadcast skb); the kernel WARNs, no counter.
    AlreadyConfirmed = 5,
    /// Clash resolved by merging the loser into the winner (`clash_resolve`).
    Merged = 6,
    /// Clash resolved by inserting the loser reply-only with IPS_NAT_CLASH (`clash_resolve`).
    NatClashReplyOnly = 7,
    /// Table full: `nf_conntrack_max` reached and early_drop found nothing to evict.
    TableFull = 8,
}

impl Cause {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::NatPortClash,
            2 => Self::SameFlowRace,
            3 => Self::Dying,
            4 => Self::ChainTooLong,
            5 => Self::AlreadyConfirmed,
            6 => Self::Merged,
            7 => Self::NatClashReplyOnly,
            8 => Self::TableFull,
            _ => Self::Unknown,
        }
    }

    /// The name users read, as serde writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::NatPortClash => "nat_port_clash",
            Self::SameFlowRace => "same_flow_race",
            Self::Dying => "dying",
            Self::ChainTooLong => "chain_too_long",
            Self::AlreadyConfirmed => "already_confirmed",
            Self::Merged => "merged",
            Self::NatClashReplyOnly => "nat_clash_reply_only",
            Self::TableFull => "table_full",
        }
    }
}

/// Why a confirmed entry left the table (`kind` Destroy / EarlyDrop).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum DestroyReason {
    Unknown = 0,
    /// Expired and reaped by the gc worker.
    Timeout = 1,
    /// Expired and reaped lazily by a lookup on the packet path. Users see it as
    /// `timeout`, with `via: lookup` beside it.
    #[cfg_attr(feature = "user", serde(rename = "timeout", skip_deserializing))]
    TimeoutLookup = 2,
    /// Evicted by `early_drop()` on allocation.
    EarlyDrop = 3,
    /// Evicted by the gc worker while the table was nearly full (not expired).
    GcEvict = 4,
    /// Deleted through ctnetlink (`conntrack -D`, `conntrack -F`): netlink portid != 0.
    Ctnetlink = 5,
    /// TCP: killed in CLOSE / TIME_WAIT (RST-only reply, SYN reopening a closed connection).
    TcpClose = 6,
    /// The network namespace was torn down.
    NetnsExit = 7,
    /// Another iterate-cleanup: masquerade device/address change, helper unload, flowtable.
    Cleanup = 8,
}

impl DestroyReason {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Timeout,
            2 => Self::TimeoutLookup,
            3 => Self::EarlyDrop,
            4 => Self::GcEvict,
            5 => Self::Ctnetlink,
            6 => Self::TcpClose,
            7 => Self::NetnsExit,
            8 => Self::Cleanup,
            _ => Self::Unknown,
        }
    }

    /// The name users read, as serde writes it: both timeouts are `timeout`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Timeout | Self::TimeoutLookup => "timeout",
            Self::EarlyDrop => "early_drop",
            Self::GcEvict => "gc_evict",
            Self::Ctnetlink => "ctnetlink",
            Self::TcpClose => "tcp_close",
            Self::NetnsExit => "netns_exit",
            Self::Cleanup => "cleanup",
        }
    }
}

/// One direction of a conntrack tuple, copied raw from `struct nf_conntrack_tuple`.
///
/// Ports (and the ICMP id, type and code) stay in the kernel's byte layout: `sport` is
/// `src.u.all` (network order port, or ICMP id) and `dport` is `dst.u.all` (network order
/// port, or ICMP type in the first byte and code in the second). IPv4 addresses use the
/// first 4 bytes of the 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// `Event::flags`: the `winner` tuple is valid (clash events).
pub const FLAG_HAS_WINNER: u8 = 1;
/// `Event::flags`: a `New` that came from `nf_conntrack_hash_check_insert` (ctnetlink/BPF).
pub const FLAG_FROM_CTNETLINK: u8 = 2;
/// `Event::flags`: a tier-2 candidate the tracepoints cannot decide alone (an insert
/// failure, a table-full drop, a merged clash, or a destroy by early_drop or ctnetlink);
/// the agent confirms it against the kernel's per-namespace counter deltas.
pub const FLAG_UNVERIFIED: u8 = 4;
/// `Event::flags`: the record is a [`crate::RawCtEvent`]; its entry fields are in `raw`.
pub const FLAG_RAW_CT: u8 = 8;

/// The record every program writes into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()` at the hook.
    pub ts_ns: u64,
    /// Address of the `struct nf_conn`: identity while the entry lives (slabs recycle it).
    pub ct: u64,
    /// Address of the winner `struct nf_conn` for clash events, else 0.
    pub winner_ct: u64,
    /// Inode number of the entry's network namespace.
    pub netns: u32,
    /// `ct->status` (low 32 bits of the `unsigned long`).
    pub status: u32,
    /// `ct->mark` (0 where the kernel has no CONFIG_NF_CONNTRACK_MARK).
    pub mark: u32,
    /// Jiffies left before expiry (negative if expired); `i32::MIN` if not known.
    pub timeout_jiffies: i32,
    /// PID (thread group) of the task in whose context the hook ran; 0 in softirq of idle.
    pub pid: u32,
    /// `ct->zone.id`.
    pub zone: u16,
    /// [`EventKind`] as u8.
    pub kind: u8,
    /// [`Cause`] or [`DestroyReason`] as u8, depending on `kind`.
    pub cause: u8,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub l3proto: u8,
    /// IP protocol number (`tuple.dst.protonum`).
    pub l4proto: u8,
    /// `ct->proto.tcp.state` (enum tcp_conntrack) for TCP, else 0.
    pub tcp_state: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Explicit padding so the tuples start 8-aligned and no byte is uninitialised.
    pub _pad: [u8; 3],
    /// Original direction tuple (as the first packet had it, before NAT).
    pub orig: Tuple,
    /// Reply direction tuple (after NAT, reversed).
    pub reply: Tuple,
    /// Clash events: the winner's original tuple.
    pub winner_orig: Tuple,
    /// Clash events: the winner's reply tuple.
    pub winner_reply: Tuple,
}

const _: () = assert!(core::mem::size_of::<Tuple>() == 36);
const _: () = assert!(core::mem::size_of::<Event>() == 200);

impl Event {
    pub const fn zeroed() -> Self {
        const T: Tuple = Tuple {
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
        };
        Self {
            ts_ns: 0,
            ct: 0,
            winner_ct: 0,
            netns: 0,
            status: 0,
            mark: 0,
            timeout_jiffies: i32::MIN,
            pid: 0,
            zone: 0,
            kind: 0,
            cause: 0,
            l3proto: 0,
            l4proto: 0,
            tcp_state: 0,
            flags: 0,
            _pad: [0; 3],
            orig: T,
            reply: T,
            winner_orig: T,
            winner_reply: T,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integers and integer arrays, explicit padding-free layout asserted above.
unsafe impl aya::Pod for Event {}

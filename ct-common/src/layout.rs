//! Field offsets of the running kernel's conntrack structures.
//!
//! Rust BPF has no CO-RE field relocations, so the agent computes these from the kernel's
//! BTF at start (ct-user's `btf` module) and writes them into the BPF global `LAYOUT`
//! before load. Offsets are in bytes from the start of the named struct.

/// Marks a field or argument the running kernel does not have.
pub const ABSENT: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `struct sk_buff::_nfct` (unsigned long: ct pointer | ctinfo in the low 3 bits).
    pub skb_nfct: u32,
    /// `struct nf_conn::status` (unsigned long).
    pub ct_status: u32,
    /// `struct nf_conn::timeout` (u32 jiffies; absolute once confirmed).
    pub ct_timeout: u32,
    /// `struct nf_conn::tuplehash` (array of 2 `nf_conntrack_tuple_hash`).
    pub ct_tuplehash: u32,
    /// `sizeof(struct nf_conntrack_tuple_hash)`.
    pub tuplehash_size: u32,
    /// `struct nf_conntrack_tuple_hash::tuple`.
    pub tuplehash_tuple: u32,
    /// `struct nf_conntrack_tuple::src.u3` (16 bytes).
    pub tuple_src_u3: u32,
    /// `struct nf_conntrack_tuple::src.u.all` (be16).
    pub tuple_src_port: u32,
    /// `struct nf_conntrack_tuple::src.l3num` (u16).
    pub tuple_src_l3num: u32,
    /// `struct nf_conntrack_tuple::dst.u3`.
    pub tuple_dst_u3: u32,
    /// `struct nf_conntrack_tuple::dst.u.all`.
    pub tuple_dst_port: u32,
    /// `struct nf_conntrack_tuple::dst.protonum` (u8).
    pub tuple_dst_protonum: u32,
    /// `struct nf_conntrack_tuple::dst.dir` (u8).
    pub tuple_dst_dir: u32,
    /// `struct nf_conn::ct_net` (`possible_net_t`, whose first member is `struct net *net`).
    pub ct_net: u32,
    /// `struct net::ns.inum` (u32).
    pub net_ns_inum: u32,
    /// `struct nf_conn::mark`, or [`ABSENT`] without CONFIG_NF_CONNTRACK_MARK.
    pub ct_mark: u32,
    /// `struct nf_conn::zone.id`, or [`ABSENT`] without CONFIG_NF_CONNTRACK_ZONES.
    pub ct_zone_id: u32,
    /// `struct nf_conn::proto.tcp.state` (u8).
    pub ct_tcp_state: u32,
    /// Zero-based index of `struct nf_conntrack_tuple_hash *h` among the arguments of
    /// `nf_ct_resolve_clash`: 1 on ≥5.7 `(skb, h, reply_hash)`, 3 before `(net, skb, ctinfo, h)`.
    pub resolve_clash_h_arg: u32,
    /// Zero-based index of `struct sk_buff *skb` among `nf_ct_resolve_clash`'s arguments.
    pub resolve_clash_skb_arg: u32,
    /// `SKB_DROP_REASON_NETFILTER_DROP` on this kernel (values move between versions).
    pub drop_reason_netfilter: u32,
    /// Kernel HZ, to turn jiffies into seconds where BPF needs it (0 if unknown).
    pub hz: u32,
    // ---- tier 2 (tracepoints only) ----
    /// `struct kmem_cache::name` (const char *).
    pub kmem_cache_name: u32,
    /// What the third argument of the `kmem_cache_free` tracepoint is: 0 the
    /// `struct kmem_cache *` (≥6.2), 1 the cache's name (`const char *`, 5.12–6.1), or
    /// [`ABSENT`] when the tracepoint does not name the cache (tier 2 cannot run).
    pub kmem_free_arg_is_name: u32,
    /// The namespace refcount inside `struct net` (`ns.count`, `ns.__ns_ref` on ≥6.18):
    /// zero while the namespace is being torn down.
    pub net_ns_ref: u32,
    /// `struct sk_buff::dev` (struct net_device *).
    pub skb_dev: u32,
    /// `struct sk_buff::sk` (struct sock *).
    pub skb_sk: u32,
    /// `struct sk_buff::head` (unsigned char *).
    pub skb_head: u32,
    /// `struct sk_buff::network_header` (u16 offset from head).
    pub skb_network_header: u32,
    /// `struct sk_buff::transport_header` (u16 offset from head; 0xffff if unset).
    pub skb_transport_header: u32,
    /// `struct net_device::nd_net` (possible_net_t: `struct net *` first).
    pub dev_nd_net: u32,
    /// `struct sock::__sk_common.skc_net` (possible_net_t).
    pub sk_net: u32,
    /// Bytes of `struct nf_conn` a raw record copies: enough for every field above that
    /// lives in it, at most `RAW_CT_BYTES`; [`ABSENT`] if they do not fit (no raw records).
    pub ct_raw_bytes: u32,
}

const _: () = assert!(core::mem::size_of::<KernelLayout>() == 33 * 4);

impl KernelLayout {
    /// All-absent layout: what the BPF object holds until the loader fills it in.
    pub const fn absent() -> Self {
        Self {
            skb_nfct: ABSENT,
            ct_status: ABSENT,
            ct_timeout: ABSENT,
            ct_tuplehash: ABSENT,
            tuplehash_size: ABSENT,
            tuplehash_tuple: ABSENT,
            tuple_src_u3: ABSENT,
            tuple_src_port: ABSENT,
            tuple_src_l3num: ABSENT,
            tuple_dst_u3: ABSENT,
            tuple_dst_port: ABSENT,
            tuple_dst_protonum: ABSENT,
            tuple_dst_dir: ABSENT,
            ct_net: ABSENT,
            net_ns_inum: ABSENT,
            ct_mark: ABSENT,
            ct_zone_id: ABSENT,
            ct_tcp_state: ABSENT,
            resolve_clash_h_arg: ABSENT,
            resolve_clash_skb_arg: ABSENT,
            drop_reason_netfilter: ABSENT,
            hz: 0,
            kmem_cache_name: ABSENT,
            kmem_free_arg_is_name: ABSENT,
            net_ns_ref: ABSENT,
            skb_dev: ABSENT,
            skb_sk: ABSENT,
            skb_head: ABSENT,
            skb_network_header: ABSENT,
            skb_transport_header: ABSENT,
            dev_nd_net: ABSENT,
            sk_net: ABSENT,
            ct_raw_bytes: ABSENT,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u32 fields, no padding (size asserted above).
unsafe impl aya::Pod for KernelLayout {}

/// Address ranges `[start, end)` of kernel functions, from /proc/kallsyms, for facts the
/// kernel's BTF cannot give: on kernels whose tracepoints lack an argument (5.10: no drop
/// reason in `kfree_skb`, no cache in `kmem_cache_free`), the caller's address decides.
/// `[0, 0]` where the loader did not need or could not read a range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeRanges {
    /// `nf_hook_slow`: a `kfree_skb` called from here is a netfilter hook's drop.
    pub nf_hook_slow: [u64; 2],
    /// `nf_conntrack_free`: a `kmem_cache_free` called from here frees a `struct nf_conn`.
    pub ct_free: [u64; 2],
}

impl CodeRanges {
    pub const fn none() -> Self {
        Self {
            nf_hook_slow: [0; 2],
            ct_free: [0; 2],
        }
    }
}

/// Whether `addr` lies in `range` (`[start, end)`); never for an empty range.
#[inline(always)]
pub fn in_range(addr: u64, range: [u64; 2]) -> bool {
    addr >= range[0] && addr < range[1]
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64 fields, no padding.
unsafe impl aya::Pod for CodeRanges {}

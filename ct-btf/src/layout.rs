//! Fills [`KernelLayout`] from BTF.

use ct_common::{
    RAW_CT_BYTES,
    layout::{ABSENT, KernelLayout},
};

use crate::{BtfError, KernelBtf, btf::TypeRef};

/// Argument indices `(h, skb)` of `nf_ct_resolve_clash` since ~5.7: `(skb, h, reply_hash)`.
pub const RESOLVE_CLASH_ARGS_5_7: (u32, u32) = (1, 0);
/// Argument indices `(h, skb)` before ~5.7: `(net, skb, ctinfo, h)`.
pub const RESOLVE_CLASH_ARGS_PRE_5_7: (u32, u32) = (3, 1);

const RESOLVE_CLASH: &str = "nf_ct_resolve_clash";

/// How much of `struct nf_conn` a raw record must copy to hold every field the agent
/// parses from it and the BPF side reads from the copy (status, namespace); [`ABSENT`]
/// (parse in BPF instead) when that exceeds [`RAW_CT_BYTES`].
///
/// Sums in u64: the offsets come from BTF and can be anywhere in `u32`.
fn raw_bytes(l: &KernelLayout, notes: &mut Vec<String>) -> u32 {
    let end = |off: u32, len: u64| (off != ABSENT).then(|| u64::from(off) + len);
    let tuples_end = u64::from(l.ct_tuplehash) + 2 * u64::from(l.tuplehash_size);
    let need = [
        end(l.ct_status, 8),
        end(l.ct_net, 8),
        end(l.ct_timeout, 4),
        Some(tuples_end),
        end(l.ct_mark, 4),
        end(l.ct_zone_id, 2),
        end(l.ct_tcp_state, 1),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    if need > RAW_CT_BYTES as u64 {
        notes.push(format!(
            "struct nf_conn fields end at byte {need}, beyond a raw record ({RAW_CT_BYTES}): tier 2 parses entries in BPF"
        ));
        return ABSENT;
    }
    need as u32
}

impl KernelBtf {
    /// Computes the layout; `hz` is left 0. Notes about fallbacks are dropped: use
    /// [`layout_with_notes`](Self::layout_with_notes) to see them.
    pub fn layout(&self) -> Result<KernelLayout, BtfError> {
        self.layout_with_notes().map(|(l, _)| l)
    }

    /// Computes the layout (`hz` left 0) and says which optional fields are [`ABSENT`]
    /// and which values are defaults rather than read from BTF.
    pub fn layout_with_notes(&self) -> Result<(KernelLayout, Vec<String>), BtfError> {
        let mut notes = Vec::new();
        let off = |ty: &str, path: &str| self.member_offset(ty, path);
        let tuple = |path: &str| off("nf_conntrack_tuple", path);
        let (resolve_clash_h_arg, resolve_clash_skb_arg) = self.resolve_clash_args(&mut notes)?;
        let layout = KernelLayout {
            skb_nfct: off("sk_buff", "_nfct")?,
            ct_status: off("nf_conn", "status")?,
            ct_timeout: off("nf_conn", "timeout")?,
            ct_tuplehash: off("nf_conn", "tuplehash")?,
            tuplehash_size: self.type_size("nf_conntrack_tuple_hash")?,
            tuplehash_tuple: off("nf_conntrack_tuple_hash", "tuple")?,
            tuple_src_u3: tuple("src.u3")?,
            tuple_src_port: tuple("src.u.all")?,
            tuple_src_l3num: tuple("src.l3num")?,
            tuple_dst_u3: tuple("dst.u3")?,
            tuple_dst_port: tuple("dst.u.all")?,
            tuple_dst_protonum: tuple("dst.protonum")?,
            tuple_dst_dir: tuple("dst.dir")?,
            ct_net: self.ct_net()?,
            net_ns_inum: off("net", "ns.inum")?,
            ct_mark: self.optional("nf_conn", "mark", "CONFIG_NF_CONNTRACK_MARK", &mut notes)?,
            ct_zone_id: self.optional(
                "nf_conn",
                "zone.id",
                "CONFIG_NF_CONNTRACK_ZONES",
                &mut notes,
            )?,
            ct_tcp_state: off("nf_conn", "proto.tcp.state")?,
            resolve_clash_h_arg,
            resolve_clash_skb_arg,
            drop_reason_netfilter: self.drop_reason_netfilter(&mut notes),
            hz: 0,
            kmem_cache_name: self.optional_or_absent("kmem_cache", "name", &mut notes),
            kmem_free_arg_is_name: self.kmem_free_arg_kind(&mut notes),
            net_ns_ref: self.net_ns_ref(&mut notes),
            skb_dev: off("sk_buff", "dev")?,
            skb_sk: off("sk_buff", "sk")?,
            skb_head: off("sk_buff", "head")?,
            skb_network_header: off("sk_buff", "network_header")?,
            skb_transport_header: off("sk_buff", "transport_header")?,
            dev_nd_net: self.optional_or_absent("net_device", "nd_net", &mut notes),
            sk_net: self.optional_or_absent("sock", "__sk_common.skc_net", &mut notes),
            ct_raw_bytes: ABSENT,
        };
        let layout = KernelLayout {
            ct_raw_bytes: raw_bytes(&layout, &mut notes),
            ..layout
        };
        Ok((layout, notes))
    }

    /// `nf_conn.ct_net`; BPF reads the `struct net *` at that offset, so
    /// `possible_net_t.net` must be its first member.
    fn ct_net(&self) -> Result<u32, BtfError> {
        let outer = self.member_offset("nf_conn", "ct_net")?;
        let inner = self.member_offset("nf_conn", "ct_net.net")?;
        if inner != outer {
            return Err(BtfError::Unsupported {
                ty: "nf_conn".into(),
                path: "ct_net.net".into(),
                reason: format!(
                    "at offset {} within possible_net_t, expected 0",
                    inner - outer
                ),
            });
        }
        Ok(outer)
    }

    /// Offset of a member that a kernel config may leave out; missing → [`ABSENT`] + note.
    fn optional(
        &self,
        ty: &str,
        path: &str,
        config: &str,
        notes: &mut Vec<String>,
    ) -> Result<u32, BtfError> {
        match self.member_offset(ty, path) {
            Ok(v) => Ok(v),
            Err(BtfError::MemberNotFound { .. }) => {
                notes.push(format!(
                    "{ty}.{path} absent (kernel built without {config})"
                ));
                Ok(ABSENT)
            }
            Err(e) => Err(e),
        }
    }

    /// Offset of a member tier 2 uses; any failure → [`ABSENT`] + note (tier 1 is unaffected).
    fn optional_or_absent(&self, ty: &str, path: &str, notes: &mut Vec<String>) -> u32 {
        self.member_offset(ty, path).unwrap_or_else(|e| {
            notes.push(format!("{ty}.{path}: {e} (tier 2 loses what it gives)"));
            ABSENT
        })
    }

    /// `kmem_cache_free`'s third tracepoint argument: the cache (0) or its name (1).
    fn kmem_free_arg_kind(&self, notes: &mut Vec<String>) -> u32 {
        let args = self.tracepoint_arg_types("kmem_cache_free");
        match args.as_deref().and_then(|a| a.get(2)).map(String::as_str) {
            Some("kmem_cache") => 0,
            Some("char") => 1,
            _ => {
                notes.push(format!(
                    "kmem_cache_free tracepoint does not name the cache ({args:?})"
                ));
                ABSENT
            }
        }
    }

    /// The namespace refcount in `struct net`, renamed `ns.__ns_ref` in 6.18.
    fn net_ns_ref(&self, notes: &mut Vec<String>) -> u32 {
        ["ns.__ns_ref", "ns.count", "count"]
            .iter()
            .find_map(|p| self.member_offset("net", p).ok())
            .unwrap_or_else(|| {
                notes.push(
                    "struct net has no ns refcount: netns_exit not recognised on tier 2".into(),
                );
                ABSENT
            })
    }

    fn drop_reason_netfilter(&self, notes: &mut Vec<String>) -> u32 {
        let v = self.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP");
        match v.and_then(|v| u32::try_from(v).ok()) {
            Some(v) => v,
            None => {
                notes.push(
                    "SKB_DROP_REASON_NETFILTER_DROP absent (older kernel without that drop reason)"
                        .into(),
                );
                ABSENT
            }
        }
    }

    /// `(h, skb)` argument indices of `nf_ct_resolve_clash`, from its BTF prototype.
    pub(crate) fn resolve_clash_args(
        &self,
        notes: &mut Vec<String>,
    ) -> Result<(u32, u32), BtfError> {
        let Some(params) = self.func_proto_params(RESOLVE_CLASH)? else {
            return Ok(self.resolve_clash_fallback(notes, "the function has no BTF"));
        };
        // Pointee type first; the parameter name as a second opinion.
        let index_of = |pointee: &str, pname: &str| {
            let by_type = params
                .iter()
                .position(|(_, ty)| self.pointee_is(*ty, pointee));
            by_type
                .or_else(|| params.iter().position(|(n, _)| n == pname))
                .map(|i| i as u32)
        };
        let h = index_of("nf_conntrack_tuple_hash", "h");
        if let (Some(h), Some(skb)) = (h, index_of("sk_buff", "skb")) {
            return Ok((h, skb));
        }
        // Pointee types unrecognisable: go by arity, which is what changed in 5.7.
        let by_arity = match params.len() {
            3 => Some(RESOLVE_CLASH_ARGS_5_7),
            4 => Some(RESOLVE_CLASH_ARGS_PRE_5_7),
            _ => None,
        };
        let n = params.len();
        Ok(match by_arity {
            Some(args) => {
                notes.push(format!(
                    "{RESOLVE_CLASH}: parameter types not recognised; chose (h, skb) = {args:?} from its {n} parameters"
                ));
                args
            }
            None => self.resolve_clash_fallback(
                notes,
                &format!("unexpected prototype with {n} parameters"),
            ),
        })
    }

    fn pointee_is(&self, ty: TypeRef, name: &str) -> bool {
        self.pointee_name(ty).as_deref() == Some(name)
    }

    /// No usable prototype: guess from a feature that arrived after the 5.7 change
    /// (`clash_resolve` stat, 5.10). 5.7–5.9 kernels without BTF get the old guess.
    fn resolve_clash_fallback(&self, notes: &mut Vec<String>, why: &str) -> (u32, u32) {
        let (args, sig) = if self.struct_has_member("ip_conntrack_stat", "clash_resolve") {
            (
                RESOLVE_CLASH_ARGS_5_7,
                "RESOLVE_CLASH_ARGS_5_7 (skb, h, reply_hash): kernel has clash_resolve (≥5.10)",
            )
        } else {
            (
                RESOLVE_CLASH_ARGS_PRE_5_7,
                "RESOLVE_CLASH_ARGS_PRE_5_7 (net, skb, ctinfo, h): kernel lacks clash_resolve (<5.10)",
            )
        };
        notes.push(format!("{RESOLVE_CLASH}: {why}; assuming {sig}"));
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reproduced through the btf fuzz target (fuzz/corpus/btf/crash-raw-bytes-overflow): offsets come
    /// from BTF, so they can be anything: fields ending past `u32` or a huge
    /// `sizeof(nf_conntrack_tuple_hash)` mean "does not fit", not an overflow.
    #[test]
    fn raw_bytes_of_huge_offsets_is_absent() {
        let mut l = KernelLayout::absent();
        (l.ct_status, l.ct_tuplehash, l.tuplehash_size) = (128, 16, 56);
        let mut notes = Vec::new();
        assert_eq!(raw_bytes(&l, &mut notes), 136);
        l.ct_net = u32::MAX - 4;
        assert_eq!(raw_bytes(&l, &mut notes), ABSENT);
        l.ct_net = 8;
        l.tuplehash_size = u32::MAX / 2 + 1;
        assert_eq!(raw_bytes(&l, &mut notes), ABSENT);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }
}

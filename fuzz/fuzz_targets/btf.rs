//! ct-btf's reader: a base ("vmlinux") blob and an optional split module blob, then every
//! lookup ctscope makes at start. Input: base length (u32 LE), base, module.
#![no_main]

use ct_btf::KernelBtf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let (base, module) = rest.split_at((u32::from_le_bytes(*len) as usize).min(rest.len()));
    let btf = if module.is_empty() {
        KernelBtf::from_bytes(base, &[])
    } else {
        KernelBtf::from_bytes(base, &[("nf_conntrack", module)])
    };
    let Ok(btf) = btf else { return };
    let _ = btf.layout_with_notes();
    let _ = btf.refcount_kind();
    let _ = btf.type_module("nf_conn");
    let _ = btf.has_func("nf_ct_resolve_clash");
    let _ = btf.func_params("nf_ct_resolve_clash");
    let _ = btf.tracepoint_arg_types("kmem_cache_free");
    let _ = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP");
    let _ = btf.type_size("nf_conntrack_tuple_hash");
    for (ty, path) in [
        ("nf_conn", "proto.tcp.state"),
        ("nf_conn", "ct_net.net"),
        ("nf_conntrack_tuple", "dst.u.all"),
        ("net", "ns.inum"),
        ("sock", "__sk_common.skc_net"),
    ] {
        let _ = btf.struct_has_member(ty, path);
        let _ = btf.member_offset(ty, path);
    }
});

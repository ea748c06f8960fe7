//! Tests against this machine's /sys/kernel/btf/vmlinux (skipped without it) and against
//! hand-built BTF blobs for split BTF and the error paths.

use std::path::Path;

use crate::*;

const SYS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Reports a test (or part of one) that cannot run here. The stock harness would count
/// it as passed, so where every prerequisite is supposed to be present (`cargo xtask
/// test` sets CTSCOPE_REQUIRE_ALL=1) a skip fails instead.
fn skipped(reason: &str) {
    if std::env::var_os("CTSCOPE_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("SKIPPED is not allowed here (CTSCOPE_REQUIRE_ALL=1): {reason}");
    }
    println!("SKIPPED: {reason}");
}

/// Whether the machine has kernel BTF; reports the skip when not.
fn has_sys_btf() -> bool {
    let present = Path::new(SYS_VMLINUX).exists();
    if !present {
        skipped(&format!(
            "{SYS_VMLINUX} absent (kernel without CONFIG_DEBUG_INFO_BTF)"
        ));
    }
    present
}

/// The machine's kernel BTF, or `None` after reporting why the test is skipped.
fn sys_btf() -> Option<KernelBtf> {
    has_sys_btf().then(|| KernelBtf::load().expect("load kernel BTF"))
}

/// True on the project's reference kernel, whose values KERNEL.md documents.
fn is_6_18() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| r.starts_with("6.18"))
}

#[test]
fn layout_has_every_field() {
    let Some(btf) = sys_btf() else { return };
    let (l, notes) = btf.layout_with_notes().expect("layout");
    println!("{l:#?}\nnotes: {notes:?}");
    let fields = [
        l.skb_nfct,
        l.ct_status,
        l.ct_timeout,
        l.ct_tuplehash,
        l.tuplehash_size,
        l.tuplehash_tuple,
        l.tuple_src_u3,
        l.tuple_src_port,
        l.tuple_src_l3num,
        l.tuple_dst_u3,
        l.tuple_dst_port,
        l.tuple_dst_protonum,
        l.tuple_dst_dir,
        l.ct_net,
        l.net_ns_inum,
        l.ct_mark,
        l.ct_zone_id,
        l.ct_tcp_state,
        l.resolve_clash_h_arg,
        l.resolve_clash_skb_arg,
        l.drop_reason_netfilter,
    ];
    assert!(fields.iter().all(|&f| f != ABSENT), "absent field in {l:?}");
    assert!(notes.is_empty(), "unexpected fallbacks: {notes:?}");
    assert_eq!(l.hz, 0, "layout() leaves hz to kernel_hz()");
    assert_eq!(btf.layout().unwrap(), l);
}

#[test]
fn tuple_layout_is_the_long_standing_one() {
    let Some(btf) = sys_btf() else { return };
    let l = btf.layout().unwrap();
    // nf_conntrack_tuple has not changed shape since 4.x: nf_inet_addr (16) + port + l3num.
    assert_eq!(
        (l.tuple_src_u3, l.tuple_src_port, l.tuple_src_l3num),
        (0, 16, 18)
    );
    assert_eq!(
        (
            l.tuple_dst_u3,
            l.tuple_dst_port,
            l.tuple_dst_protonum,
            l.tuple_dst_dir
        ),
        (20, 36, 38, 39)
    );
    // hlist_nulls_node (16) + tuple (40).
    assert_eq!((l.tuplehash_tuple, l.tuplehash_size), (16, 56));
    assert_eq!(btf.type_size("nf_conntrack_tuple").unwrap(), 40);
}

/// Run by the unit stage of `cargo xtask test` on the 6.18 reference kernel only.
#[test]
#[ignore = "needs the 6.18 reference kernel (KERNEL.md's values)"]
fn reference_kernel_values() {
    let Some(btf) = sys_btf() else { return };
    assert!(
        is_6_18(),
        "KERNEL.md's values are for 6.18, not this kernel"
    );
    assert_eq!(btf.type_size("nf_conn").unwrap(), 248);
    let l = btf.layout().unwrap();
    assert_eq!((l.resolve_clash_h_arg, l.resolve_clash_skb_arg), (1, 0));
    assert_eq!(l.drop_reason_netfilter, 12);
    // nf_conn starts {ct_general(4), lock(4), timeout, zone, tuplehash[2], status}.
    assert_eq!(
        (l.ct_timeout, l.ct_zone_id, l.ct_tuplehash, l.ct_status),
        (8, 12, 16, 128)
    );
    assert_eq!(
        btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP"),
        Some(12)
    );
}

#[test]
fn kernel_facts() {
    let Some(btf) = sys_btf() else { return };
    assert!(btf.has_func("nf_ct_resolve_clash"));
    assert!(btf.has_func("__nf_conntrack_confirm"));
    assert!(!btf.has_func("no_such_function_xyz"));
    assert!(!btf.has_func("nf_conn"), "a struct is not a FUNC");
    assert!(btf.struct_has_member("ip_conntrack_stat", "clash_resolve"));
    assert!(btf.struct_has_member("ip_conntrack_stat", "chaintoolong"));
    assert!(!btf.struct_has_member("ip_conntrack_stat", "searched"));
    assert!(!btf.struct_has_member("no_such_struct", "x"));
    assert_eq!(btf.refcount_kind(), Some(RefcountKind::RefcountT));
    assert_eq!(btf.type_module("nf_conn"), Some(VMLINUX));
    assert_eq!(btf.type_module("nf_ct_resolve_clash"), Some(VMLINUX));
    assert_eq!(btf.type_module("no_such_type_xyz"), None);
    let params = btf.func_params("nf_ct_resolve_clash").unwrap();
    let want = [
        ("skb", "struct sk_buff *"),
        ("h", "struct nf_conntrack_tuple_hash *"),
        ("reply_hash", "u32"),
    ];
    let got: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(btf.func_params("no_such_function_xyz"), None);
    assert_eq!(
        btf.func_params("__nf_conntrack_alloc").unwrap()[2].1,
        "const struct nf_conntrack_tuple *"
    );
}

#[test]
fn member_paths() {
    let Some(btf) = sys_btf() else { return };
    // Typedef of an anonymous struct.
    assert_eq!(btf.member_offset("possible_net_t", "net").unwrap(), 0);
    // Array indexing: tuplehash[1].tuple = tuplehash + sizeof(hash) + tuple.
    let l = btf.layout().unwrap();
    assert_eq!(
        btf.member_offset("nf_conn", "tuplehash[1].tuple.dst.dir")
            .unwrap(),
        l.ct_tuplehash + l.tuplehash_size + l.tuplehash_tuple + l.tuple_dst_dir
    );
    // A bare array member goes on into element 0.
    assert_eq!(
        btf.member_offset("nf_conn", "tuplehash.tuple").unwrap(),
        l.ct_tuplehash + l.tuplehash_tuple
    );
    assert!(matches!(
        btf.member_offset("nf_conn", "tuplehash[2]"),
        Err(BtfError::Unsupported { .. })
    ));
    // A path through a pointer is refused, not silently mis-added.
    assert!(matches!(
        btf.member_offset("nf_conn", "ct_net.net.ns"),
        Err(BtfError::Unsupported { .. })
    ));
}

#[test]
fn bitfields_are_rejected() {
    let Some(btf) = sys_btf() else { return };
    let err = btf.member_offset("sk_buff", "pkt_type").unwrap_err();
    assert!(matches!(err, BtfError::Bitfield { .. }), "{err}");
    assert!(err.to_string().contains("sk_buff.pkt_type"), "{err}");
    // Present all the same.
    assert!(btf.struct_has_member("sk_buff", "pkt_type"));
}

#[test]
fn missing_type_and_member_errors_name_them() {
    let Some(btf) = sys_btf() else { return };
    let err = btf
        .member_offset("nf_conn", "proto.nope.state")
        .unwrap_err();
    assert!(matches!(err, BtfError::MemberNotFound { .. }));
    assert_eq!(
        err.to_string(),
        "`nf_conn` has no member `proto.nope.state` (`nope` not found)"
    );
    let err = btf.type_size("no_such_type_xyz").unwrap_err();
    assert_eq!(
        err.to_string(),
        "type `no_such_type_xyz` not found in kernel BTF"
    );
}

#[test]
fn layout_for_running_kernel_sets_hz() {
    if !has_sys_btf() {
        return;
    }
    let (l, notes) = layout_for_running_kernel().unwrap();
    println!("{notes:?}");
    assert!(notes[0].starts_with("BTF objects: vmlinux"));
    if l.hz == 0 {
        skipped("hz part: no HZ source readable here");
    } else {
        assert!(HZ_CHOICES.contains(&l.hz));
    }
}

#[test]
fn missing_files_give_clear_errors() {
    let err = KernelBtf::from_files("/nonexistent/btf/vmlinux", &[]).unwrap_err();
    assert!(matches!(err, BtfError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("reading /nonexistent/btf/vmlinux: "),
        "{err}"
    );

    if !has_sys_btf() {
        return;
    }
    let err = KernelBtf::from_files(SYS_VMLINUX, &["/nonexistent/btf/nf_conntrack"]).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/btf/nf_conntrack"),
        "{err}"
    );

    let no_btf = BtfError::NoKernelBtf {
        path: SYS_VMLINUX.into(),
    };
    assert_eq!(
        no_btf.to_string(),
        "kernel has no BTF: /sys/kernel/btf/vmlinux missing — needs CONFIG_DEBUG_INFO_BTF"
    );
}

#[test]
fn hz_sources() {
    assert_eq!(
        parse_config_hz("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
        Some(250)
    );
    assert_eq!(parse_config_hz("CONFIG_HZ_1000=y\n"), None);
    let list = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 1366863457188 nsecs\n\ncpu: 0\n  .last_jiffies   : 4295233950\njiffies: 4295233951\n";
    assert_eq!(parse_timer_list(list), Some((4295233951, 1366863457188)));
    // 51 jiffies in 200 ms ≈ 255/s → 250.
    assert_eq!(hz_from_samples((1000, 0), (1051, 200_000_000)), Some(250));
    assert_eq!(hz_from_samples((1000, 0), (1200, 200_000_000)), Some(1000));
    assert_eq!(hz_from_samples((1000, 0), (1000, 200_000_000)), None);
    assert_eq!(hz_from_samples((1000, 0), (1600, 200_000_000)), None);

    match kernel_hz_with_source() {
        Some((hz, src)) => {
            println!("HZ={hz} from {src}");
            assert!(HZ_CHOICES.contains(&hz));
            // Calibration must agree with the config where both are available.
            if let Some(cal) = hz::from_timer_list() {
                assert_eq!(cal, hz, "timer_list calibration vs {src}");
            }
        }
        None => skipped("live part: no HZ source readable here"),
    }
}

// ---- hand-built BTF ----

/// Emits little-endian BTF: a base blob, or a split blob on top of `base`.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    str_base: u32,
    next_id: u32,
}

impl Builder {
    fn base() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            str_base: 0,
            next_id: 1,
        }
    }

    fn split(base: &Builder) -> Self {
        Self {
            types: Vec::new(),
            strings: Vec::new(),
            str_base: base.str_base + base.strings.len() as u32,
            next_id: base.next_id,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.str_base + self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// Appends a type record; returns its id.
    fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        let name = self.str(name);
        for w in [name, (kind << 24) | vlen, size_or_type]
            .iter()
            .chain(extra)
        {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.ty(name, 1, 0, size, &[size * 8])
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.ty("", 2, 0, to, &[])
    }

    fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let mut extra = Vec::new();
        for &(n, t, bit_off) in members {
            extra.extend([self.str(n), t, bit_off]);
        }
        self.ty(name, 4, members.len() as u32, size, &extra)
    }

    fn func(&mut self, name: &str, params: &[(&str, u32)]) -> u32 {
        let mut extra = Vec::new();
        for &(n, t) in params {
            extra.extend([self.str(n), t]);
        }
        let proto = self.ty("", 13, params.len() as u32, 0, &extra);
        self.ty(name, 12, 0, proto, &[])
    }

    fn build(&self) -> Vec<u8> {
        let mut out = vec![0x9f, 0xeb, 1, 0];
        let type_len = self.types.len() as u32;
        for w in [24, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Base: int, struct base_s { int a; int b; }. Split "mymod": struct mod_s { base_s s;
/// int c; } and an old-style `nf_ct_resolve_clash(net, skb, ctinfo, h)`.
fn split_pair() -> (Vec<u8>, Vec<u8>) {
    split_pair_with_func_id().0
}

/// [`split_pair`], and the id its builder gave the module's FUNC.
fn split_pair_with_func_id() -> ((Vec<u8>, Vec<u8>), u32) {
    let mut base = Builder::base();
    let int = base.int("int", 4);
    let base_s = base.strukt("base_s", 8, &[("a", int, 0), ("b", int, 32)]);
    let net = base.strukt("net", 0, &[]);
    let skb = base.strukt("sk_buff", 0, &[]);
    let mut m = Builder::split(&base);
    m.strukt("mod_s", 12, &[("s", base_s, 0), ("c", int, 64)]);
    let h = m.strukt("nf_conntrack_tuple_hash", 0, &[]);
    let (pnet, pskb, ph) = (m.ptr(net), m.ptr(skb), m.ptr(h));
    let func = m.func(
        "nf_ct_resolve_clash",
        &[("net", pnet), ("skb", pskb), ("ctinfo", int), ("h", ph)],
    );
    ((base.build(), m.build()), func)
}

#[test]
fn func_id_is_the_modules_absolute_id() {
    let ((base, module), func) = split_pair_with_func_id();
    let btf = KernelBtf::from_bytes(&base, &[("mymod", &module)]).unwrap();
    assert_eq!(btf.func_id("mymod", "nf_ct_resolve_clash"), Some(func));
    // Not in vmlinux, not a FUNC, not a loaded object.
    assert_eq!(btf.func_id(VMLINUX, "nf_ct_resolve_clash"), None);
    assert_eq!(btf.func_id("mymod", "mod_s"), None);
    assert_eq!(btf.func_id("othermod", "nf_ct_resolve_clash"), None);
}

#[test]
fn split_btf_resolves_across_objects() {
    let (base, module) = split_pair();
    let btf = KernelBtf::from_bytes(&base, &[("mymod", &module)]).unwrap();
    assert_eq!(btf.object_names(), ["vmlinux", "mymod"]);
    assert_eq!(btf.member_offset("mod_s", "s.b").unwrap(), 4);
    assert_eq!(btf.member_offset("mod_s", "c").unwrap(), 8);
    assert_eq!(btf.type_size("mod_s").unwrap(), 12);
    assert_eq!(btf.type_module("mod_s"), Some("mymod"));
    assert_eq!(btf.type_module("base_s"), Some(VMLINUX));
    assert_eq!(btf.type_module("nf_ct_resolve_clash"), Some("mymod"));
    assert_eq!(
        btf.func_params("nf_ct_resolve_clash").unwrap(),
        [
            ("net".to_string(), "struct net *".to_string()),
            ("skb".into(), "struct sk_buff *".into()),
            ("ctinfo".into(), "int".into()),
            ("h".into(), "struct nf_conntrack_tuple_hash *".into()),
        ]
    );
    let mut notes = Vec::new();
    assert_eq!(
        btf.resolve_clash_args(&mut notes).unwrap(),
        RESOLVE_CLASH_ARGS_PRE_5_7
    );
    assert!(notes.is_empty());
    // The base alone has no FUNC: falls back and says why.
    let base_only = KernelBtf::from_bytes(&base, &[]).unwrap();
    assert_eq!(
        base_only.resolve_clash_args(&mut notes).unwrap(),
        RESOLVE_CLASH_ARGS_PRE_5_7
    );
    assert!(notes[0].contains("has no BTF"), "{notes:?}");
    // Incomplete BTF: layout() names what is missing instead of panicking.
    let err = btf.layout().unwrap_err();
    assert_eq!(
        err.to_string(),
        "`sk_buff` has no member `_nfct` (`_nfct` not found)"
    );
}

#[test]
fn bitfields_in_built_btf_are_rejected() {
    let mut b = Builder::base();
    let int = b.int("unsigned int", 4);
    let (x, y) = (b.str("x"), b.str("y"));
    // kind_flag set: member offset = bitfield_size << 24 | bit_offset.
    let kf = 1 << 31;
    b.ty(
        "flags",
        4,
        kf | 2,
        4,
        &[x, int, 3 << 24, y, int, (5 << 24) | 3],
    );
    // Old encoding: a 3-bit INT.
    let int3 = b.ty("", 1, 0, 1, &[3]);
    b.strukt("old", 1, &[("z", int3, 0)]);
    let btf = KernelBtf::from_bytes(&b.build(), &[]).unwrap();
    for (ty, m) in [("flags", "x"), ("flags", "y"), ("old", "z")] {
        assert!(
            matches!(btf.member_offset(ty, m), Err(BtfError::Bitfield { .. })),
            "{ty}.{m}"
        );
        assert!(btf.struct_has_member(ty, m));
    }
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for junk in [
        &b""[..],
        b"garbage",
        &[0u8; 64],
        &[0x9f, 0xeb, 2, 0, 24, 0, 0, 0],
    ] {
        let err = KernelBtf::from_bytes(junk, &[]).unwrap_err();
        assert!(matches!(err, BtfError::Malformed { .. }), "{err}");
    }
    let err = KernelBtf::from_bytes(b"garbage-garbage-garbage-garbage", &[]).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");

    // Every truncation and every single-byte corruption of a valid pair.
    let (base, module) = split_pair();
    for len in 0..base.len() {
        let _ = KernelBtf::from_bytes(&base[..len], &[]);
    }
    for len in 0..module.len() {
        let _ = KernelBtf::from_bytes(&base, &[("m", &module[..len])]);
    }
    for i in 0..module.len() {
        for v in [0x00, 0x7f, 0xff] {
            let mut m = module.clone();
            m[i] = v;
            if let Ok(btf) = KernelBtf::from_bytes(&base, &[("m", &m)]) {
                let _ = btf.layout_with_notes();
                let _ = btf.member_offset("mod_s", "s.b");
                let _ = btf.func_params("nf_ct_resolve_clash");
                let _ = btf.type_size("mod_s");
            }
        }
    }
}

#[test]
fn dangling_ids_and_cycles_are_errors() {
    let mut b = Builder::base();
    b.strukt("dangling", 4, &[("x", 999, 0)]);
    // typedef loop_t loop_t;
    let id = b.next_id;
    b.ty("loop_t", 8, 0, id, &[]);
    let btf = KernelBtf::from_bytes(&b.build(), &[]).unwrap();
    let err = btf.member_offset("dangling", "x").unwrap_err();
    assert!(
        err.to_string().contains("type id 999 out of range"),
        "{err}"
    );
    assert!(matches!(
        btf.type_size("loop_t"),
        Err(BtfError::Malformed { .. })
    ));
}

#[test]
fn truncated_kernel_btf_is_malformed() {
    if !has_sys_btf() {
        return;
    }
    let bytes = std::fs::read(SYS_VMLINUX).unwrap();
    for len in [10, 24, 4096, bytes.len() / 2, bytes.len() - 1] {
        let err = KernelBtf::from_bytes(&bytes[..len], &[]).unwrap_err();
        assert!(matches!(err, BtfError::Malformed { .. }), "{len}: {err}");
    }
}

/// Other kernels' BTF, when provided: `CT_BTF_TEST_DIR` holds one directory per kernel,
/// each with `vmlinux` (the .BTF section of the image) and optionally `nf_conntrack`
/// (the module's .BTF section, split BTF).
#[test]
#[ignore = "needs CT_BTF_TEST_DIR with other kernels' BTF"]
fn other_kernels_from_env() {
    let root = std::env::var_os("CT_BTF_TEST_DIR").expect("CT_BTF_TEST_DIR not set");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).expect("read CT_BTF_TEST_DIR") {
        let dir = entry.unwrap().path();
        let vmlinux = dir.join("vmlinux");
        if !vmlinux.exists() {
            continue;
        }
        let module = dir.join("nf_conntrack");
        let modules: Vec<_> = [module].into_iter().filter(|m| m.exists()).collect();
        let btf = KernelBtf::from_files(vmlinux, &modules).unwrap();
        let (l, notes) = btf.layout_with_notes().unwrap();
        println!("{}: {l:?} {notes:?}", dir.display());
        assert_eq!(btf.type_size("nf_conntrack_tuple_hash").unwrap(), 56);
        assert!(l.ct_tcp_state != ABSENT && l.net_ns_inum != ABSENT);
        if !modules.is_empty() {
            assert!(notes.is_empty(), "{notes:?}");
            assert_eq!(btf.type_module("nf_ct_resolve_clash"), Some("nf_conntrack"));
        }
        seen += 1;
    }
    assert!(seen > 0, "no <kernel>/vmlinux under CT_BTF_TEST_DIR");
}

#[test]
fn resolve_clash_by_name_then_arity() {
    let build = |names: [&str; 3]| {
        let mut b = Builder::base();
        let int = b.int("int", 4);
        let p = b.ptr(int);
        b.func(
            "nf_ct_resolve_clash",
            &[(names[0], p), (names[1], p), (names[2], int)],
        );
        KernelBtf::from_bytes(&b.build(), &[]).unwrap()
    };
    // Unhelpful types, telling names: (x, skb, h) is not a real signature, which shows
    // the names were used.
    let mut notes = Vec::new();
    let btf = build(["x", "skb", "h"]);
    assert_eq!(btf.resolve_clash_args(&mut notes).unwrap(), (2, 1));
    assert!(notes.is_empty());
    // Neither: three parameters means the ≥5.7 signature, with a note.
    let btf = build(["a", "b", "c"]);
    assert_eq!(
        btf.resolve_clash_args(&mut notes).unwrap(),
        RESOLVE_CLASH_ARGS_5_7
    );
    assert!(notes[0].contains("not recognised"), "{notes:?}");
}

#[test]
fn tier2_tracepoint_args_and_offsets() {
    let Some(btf) = sys_btf() else { return };
    let free = btf
        .tracepoint_arg_types("kmem_cache_free")
        .expect("kmem_cache_free");
    let queue = btf
        .tracepoint_arg_types("net_dev_queue")
        .expect("net_dev_queue");
    assert_eq!(queue, ["sk_buff"]);
    assert_eq!(btf.tracepoint_arg_types("no_such_tracepoint"), None);
    let (l, notes) = btf.layout_with_notes().expect("layout");
    println!("kmem_cache_free args {free:?}; notes {notes:?}");
    assert_ne!(l.kmem_free_arg_is_name, ABSENT, "{notes:?}");
    for v in [l.kmem_cache_name, l.net_ns_ref, l.dev_nd_net, l.sk_net] {
        assert_ne!(v, ABSENT, "{notes:?}");
    }
    // Raw records copy the entry's head: every parsed field must lie inside the struct.
    let ct_size = btf.type_size("nf_conn").expect("sizeof nf_conn");
    assert_ne!(l.ct_raw_bytes, ABSENT, "{notes:?}");
    assert!(l.ct_raw_bytes <= ct_size, "{} > {ct_size}", l.ct_raw_bytes);
    assert!(l.ct_raw_bytes > l.ct_tcp_state, "{l:?}");
    if is_6_18() {
        assert_eq!(free, ["", "", "kmem_cache"]);
        assert_eq!(l.kmem_free_arg_is_name, 0);
        assert_eq!(l.net_ns_ref, 180);
        assert_eq!(l.kmem_cache_name, 104);
    }
}

/// The `btf` fuzz target's seeds (fuzz/corpus/btf): a base length (u32 LE), a "vmlinux"
/// blob and an "nf_conntrack" split blob that hold every type the layout reads.
fn fuzz_seed(name: &str) -> KernelBtf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/btf")
        .join(name);
    let data = std::fs::read(&path).unwrap();
    let (len, rest) = data.split_at(4);
    let (base, module) = rest.split_at(u32::from_le_bytes(len.try_into().unwrap()) as usize);
    KernelBtf::from_bytes(base, &[("nf_conntrack", module)]).unwrap()
}

#[test]
fn fuzz_seeds_reach_a_whole_layout() {
    let btf = fuzz_seed("split-6x");
    let (l, notes) = btf.layout_with_notes().unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        (l.ct_status, l.ct_tuplehash, l.tuplehash_size),
        (128, 16, 56)
    );
    assert_eq!((l.tuple_dst_protonum, l.ct_tcp_state), (38, 228));
    assert_eq!(l.resolve_clash_h_arg, 1);
    assert_eq!(btf.type_module("nf_conn"), Some("nf_conntrack"));
    let (old, notes) = fuzz_seed("split-pre-5.7").layout_with_notes().unwrap();
    assert_eq!(
        (old.resolve_clash_h_arg, old.ct_mark),
        (3, ABSENT),
        "{notes:?}"
    );
    assert_eq!(old.kmem_free_arg_is_name, 1);
}

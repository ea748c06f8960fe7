//! Raw entry records: tier 2's hot events (`new`, `destroy`) carry a verbatim copy of the
//! `struct nf_conn` head instead of fields parsed in BPF. One bulk `bpf_probe_read_kernel`
//! costs a fraction of a dozen small reads on the packet path; the agent parses the copy
//! here, with the same [`KernelLayout`] offsets the BPF side would have used.

use crate::{ABSENT, Event, FLAG_RAW_CT, KernelLayout, Tuple};

/// Bytes of `struct nf_conn` a raw record can hold (the loader sets how many to copy,
/// `KernelLayout::ct_raw_bytes`, from the fields read; 248 on 6.18).
pub const RAW_CT_BYTES: usize = 320;

/// The fields of an [`Event`] that do not come from the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawHead {
    pub ts_ns: u64,
    /// Address of the entry.
    pub ct: u64,
    /// `jiffies` at the event, to turn the entry's deadline into time left.
    pub jiffies: u64,
    pub netns: u32,
    pub pid: u32,
    pub kind: u8,
    pub cause: u8,
    /// `FLAG_*` bits; `FLAG_RAW_CT` is clear if the copy failed.
    pub flags: u8,
    pub _pad: [u8; 5],
}

/// An event whose entry fields are still in `raw`: tuples, status, mark, zone, TCP state
/// and timeout are parsed by [`RawCtEvent::parse`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawCtEvent {
    pub head: RawHead,
    /// The first `ct_raw_bytes` bytes of the entry.
    pub raw: [u8; RAW_CT_BYTES],
}

const _: () = assert!(core::mem::size_of::<RawHead>() == 40);
const _: () = assert!(core::mem::size_of::<RawCtEvent>() == 40 + RAW_CT_BYTES);
// The reader tells records apart by size.
const _: () = assert!(core::mem::size_of::<RawCtEvent>() != core::mem::size_of::<Event>());

const IPS_CONFIRMED: u32 = 1 << 3;
const IPPROTO_TCP: u8 = 6;

impl RawCtEvent {
    /// The event with every entry field parsed from the copy (none if it failed).
    pub fn parse(&self, l: &KernelLayout) -> Event {
        let h = &self.head;
        let mut e = Event::zeroed();
        (e.ts_ns, e.ct, e.netns, e.pid) = (h.ts_ns, h.ct, h.netns, h.pid);
        (e.kind, e.cause, e.flags) = (h.kind, h.cause, h.flags & !FLAG_RAW_CT);
        if h.flags & FLAG_RAW_CT == 0 {
            return e;
        }
        let raw = &self.raw[..(l.ct_raw_bytes as usize).min(RAW_CT_BYTES)];
        let status = get::<4>(raw, l.ct_status).map_or(0, u32::from_le_bytes);
        e.status = status;
        let (l3, l4) = parse_tuple(raw, tuple_at(l, 0), l, &mut e.orig);
        parse_tuple(raw, tuple_at(l, 1), l, &mut e.reply);
        e.l3proto = l3 as u8;
        e.l4proto = l4;
        e.mark = get::<4>(raw, l.ct_mark).map_or(0, u32::from_le_bytes);
        e.zone = get::<2>(raw, l.ct_zone_id).map_or(0, u16::from_le_bytes);
        if l4 == IPPROTO_TCP {
            e.tcp_state = get::<1>(raw, l.ct_tcp_state).map_or(0, |b| b[0]);
        }
        e.timeout_jiffies = match get::<4>(raw, l.ct_timeout).map(u32::from_le_bytes) {
            None => i32::MIN,
            // Unconfirmed entries hold a relative timeout until confirm adds "now".
            Some(t) if status & IPS_CONFIRMED == 0 => t as i32,
            Some(t) => t.wrapping_sub(h.jiffies as u32) as i32,
        };
        e
    }
}

/// `N` bytes at `off`, if the copy holds them (and the field exists).
fn get<const N: usize>(raw: &[u8], off: u32) -> Option<[u8; N]> {
    if off == ABSENT {
        return None;
    }
    let start = off as usize;
    raw.get(start..start.checked_add(N)?)?.try_into().ok()
}

/// Offset of direction `dir`'s tuple in `struct nf_conn`; [`ABSENT`] if an offset it is
/// made of is, or if they add up past `u32` (offsets come from BTF, so any value can).
fn tuple_at(l: &KernelLayout, dir: u32) -> u32 {
    let parts = [l.ct_tuplehash, l.tuplehash_size, l.tuplehash_tuple];
    if parts.contains(&ABSENT) {
        return ABSENT;
    }
    dir.checked_mul(l.tuplehash_size)
        .and_then(|o| o.checked_add(l.ct_tuplehash))
        .and_then(|o| o.checked_add(l.tuplehash_tuple))
        .unwrap_or(ABSENT)
}

/// Copies the `struct nf_conntrack_tuple` at `at`; returns (l3num, protonum).
fn parse_tuple(raw: &[u8], at: u32, l: &KernelLayout, out: &mut Tuple) -> (u16, u8) {
    let field = |f: u32| at.checked_add(f).unwrap_or(ABSENT);
    out.src = get::<16>(raw, field(l.tuple_src_u3)).unwrap_or([0; 16]);
    out.dst = get::<16>(raw, field(l.tuple_dst_u3)).unwrap_or([0; 16]);
    out.sport = get::<2>(raw, field(l.tuple_src_port)).map_or(0, u16::from_le_bytes);
    out.dport = get::<2>(raw, field(l.tuple_dst_port)).map_or(0, u16::from_le_bytes);
    let l3 = get::<2>(raw, field(l.tuple_src_l3num)).map_or(0, u16::from_le_bytes);
    let l4 = get::<1>(raw, field(l.tuple_dst_protonum)).map_or(0, |b| b[0]);
    (l3, l4)
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays with explicit padding (sizes asserted).
unsafe impl aya::Pod for RawCtEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout in the shape of a real one; the values only need to be self-consistent.
    fn layout() -> KernelLayout {
        let mut l = KernelLayout::absent();
        l.ct_status = 128;
        l.ct_timeout = 8;
        l.ct_tuplehash = 16;
        l.tuplehash_size = 56;
        l.tuplehash_tuple = 16;
        l.tuple_src_u3 = 0;
        l.tuple_src_port = 16;
        l.tuple_src_l3num = 18;
        l.tuple_dst_u3 = 20;
        l.tuple_dst_port = 36;
        l.tuple_dst_protonum = 38;
        l.tuple_dst_dir = 39;
        l.ct_mark = 168;
        l.ct_zone_id = 12;
        l.ct_tcp_state = 200;
        l.ct_raw_bytes = 248;
        l
    }

    #[test]
    fn parses_tuples_status_and_time_left() {
        let l = layout();
        let head = RawHead {
            jiffies: 1000,
            flags: FLAG_RAW_CT,
            ..RawHead::default()
        };
        let mut r = RawCtEvent {
            head,
            raw: [0; RAW_CT_BYTES],
        };
        r.raw[128..132].copy_from_slice(&(IPS_CONFIRMED | 1 << 1).to_le_bytes());
        r.raw[8..12].copy_from_slice(&1250u32.to_le_bytes());
        let orig = 16 + 16;
        r.raw[orig..orig + 4].copy_from_slice(&[10, 0, 0, 1]);
        r.raw[orig + 16..orig + 18].copy_from_slice(&5353u16.to_be_bytes());
        r.raw[orig + 18..orig + 20].copy_from_slice(&2u16.to_le_bytes());
        r.raw[orig + 38] = IPPROTO_TCP;
        r.raw[200] = 3;
        r.raw[168..172].copy_from_slice(&7u32.to_le_bytes());
        let e = r.parse(&l);
        assert_eq!(e.status, IPS_CONFIRMED | 2);
        assert_eq!(e.timeout_jiffies, 250);
        assert_eq!(&e.orig.src[..4], &[10, 0, 0, 1]);
        assert_eq!(e.orig.sport.to_le_bytes(), 5353u16.to_be_bytes());
        assert_eq!((e.l3proto, e.l4proto, e.tcp_state, e.mark), (2, 6, 3, 7));
    }

    #[test]
    fn fields_beyond_the_copy_read_as_absent() {
        let mut l = layout();
        l.ct_raw_bytes = 150; // status (128) inside; mark (168) and TCP state (200) outside
        let mut r = RawCtEvent {
            head: RawHead::default(),
            raw: [0xff; RAW_CT_BYTES],
        };
        // A failed copy: nothing parsed.
        assert_eq!(r.parse(&l).status, 0);
        r.head.flags = FLAG_RAW_CT;
        let e = r.parse(&l);
        assert_eq!(e.mark, 0);
        assert_eq!(e.status, u32::MAX);
    }

    /// Found by the `raw_record` fuzz target (fuzz/corpus/raw_record/crash-tuple-offset-overflow):
    /// the tuple offset `ct_tuplehash + dir * tuplehash_size + tuplehash_tuple` overflowed.
    #[test]
    fn absent_or_huge_tuple_offsets_read_as_absent() {
        let mut r = RawCtEvent {
            head: RawHead {
                flags: FLAG_RAW_CT,
                ..RawHead::default()
            },
            raw: [0xff; RAW_CT_BYTES],
        };
        r.raw[..4].copy_from_slice(&[10, 0, 0, 1]);
        for (tuplehash, size) in [
            (ABSENT, 56),
            (16, ABSENT),
            (u32::MAX - 8, 56),
            (16, u32::MAX / 2),
        ] {
            let mut l = layout();
            (l.ct_tuplehash, l.tuplehash_size) = (tuplehash, size);
            let e = r.parse(&l);
            assert_eq!(e.reply.src, [0; 16], "{tuplehash} {size}");
            assert_eq!(e.status, u32::MAX, "the rest still parses");
        }
    }
}

//! A ring-buffer record as the agent reads it: a parsed `Event`, or a raw `nf_conn` copy
//! parsed with loader-set offsets, then decoded for output. Input: the 33 `KernelLayout`
//! words (u32 LE), HZ (u32 LE), then the record.
#![no_main]

use ct_common::KernelLayout;
use ctscope::{bpf::reader, clock, event};
use libfuzzer_sys::fuzz_target;

const LAYOUT_BYTES: usize = size_of::<KernelLayout>();

fuzz_target!(|data: &[u8]| {
    if data.len() < LAYOUT_BYTES + 4 {
        return;
    }
    let (layout, rest) = data.split_at(LAYOUT_BYTES);
    // SAFETY: KernelLayout is repr(C) with only u32 fields (aya::Pod), so any 132 bytes
    // are a valid value; read_unaligned needs no alignment.
    let layout: KernelLayout = unsafe { std::ptr::read_unaligned(layout.as_ptr().cast()) };
    let (hz, item) = rest.split_at(4);
    let hz = u32::from_le_bytes(hz.try_into().unwrap());
    let Some(raw) = reader::record(item, &layout) else {
        return;
    };
    let clock = clock::Clock {
        boot_to_unix_ns: 1_700_000_000_000_000_000,
        hz,
    };
    if let Some(ev) = event::decode(&raw, &clock) {
        let _ = serde_json::to_string(&ev);
    }
});

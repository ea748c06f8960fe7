//! ctscope's BPF programs: probes on nf_conntrack's insert, confirm, destroy and
//! early_drop paths that write fixed-size `ct_common::Event` records into a ring buffer.
//!
//! One module per hook family. Entry/return pairs share state through `frames`; context
//! flags (inside gc, early_drop, netns cleanup) through `context`. Field offsets come from
//! the loader-set global `LAYOUT` (no CO-RE in Rust BPF).
#![no_std]
#![no_main]

mod alloc;
mod confirm;
mod context;
mod destroy;
mod drops;
mod emit;
mod entry;
mod feature;
mod frames;
mod insert;
mod kernel;
mod tier2;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

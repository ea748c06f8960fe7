//! ctscope's agent library: BTF layout, BPF loading, event decoding and outputs.
//! The `ctscope` binary (src/main.rs) is glue over these modules.

pub mod btf;

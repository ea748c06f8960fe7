//! ctscope's agent library: BPF loading, event decoding and outputs.
//! The `ctscope` binary (src/main.rs) is glue over these modules.

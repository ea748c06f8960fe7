//! ctscope's agent library: BPF loading, event decoding, outputs, and the ctnetlink
//! table commands.
//! The `ctscope` binary (src/main.rs) is glue over these modules.

pub mod agent;
pub mod attribution;
pub mod caps;
pub mod cli;
pub mod cmd;
pub mod compat;
pub mod diagnose;
pub mod error_text;
pub mod event;
pub mod filter;
pub mod hooks;
pub mod lifetimes;
pub mod live;
pub mod loader;
pub mod netns;
pub mod probe;
pub mod reader;
pub mod render;
pub mod settle;
pub mod source;
pub mod stdout;
pub mod sysctl;
pub mod table_text;
pub mod tier3;

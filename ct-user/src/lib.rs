//! ctscope's library, by the stage each module serves (ARCHITECTURE.md follows one event
//! and one request through them):
//!
//! - [`bpf`]: hooks, loading, the ring-buffer reader, the probe report;
//! - [`pipeline`]: the event source every consumer reads, tier 2's settling, filters;
//! - [`event`], [`clock`], [`attribution`], [`lifetimes`]: what the stages pass on;
//! - [`render`]: how events, entries, rankings and statistics are written;
//! - [`sys`]: namespaces, sysctls, capabilities, stdout;
//! - [`agent`]: `ctscope watch`'s table, socket and view; [`diagnose`]: its rules;
//! - [`cmd`] (one module per subcommand, over [`cli`]) and [`compat`] (`ctscope conntrack`).
//!
//! The `ctscope` binary (src/main.rs) is glue over these modules.

pub mod agent;
pub mod attribution;
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod compat;
pub mod diagnose;
pub mod event;
pub mod lifetimes;
pub mod pipeline;
pub mod render;
pub mod sys;

//! Helpers for ctscope's integration tests: network namespaces joined by veth, nftables
//! rulesets, traffic generators, the kernel's own conntrack counters, and a driver for the
//! `ctscope` binary, the agent's table against the kernel's, and the churn soak
//! (`src/bin/ctscope-soak.rs`). Everything here needs root and runs `ip`, `nft` and
//! `conntrack`.

pub mod agent;
pub mod cmd;
pub mod ctscope;
pub mod deploy;
pub mod events;
pub mod grafana;
pub mod kernel;
pub mod mirror;
pub mod netns;
pub mod nft;
pub mod prometheus;
pub mod rules;
pub mod soak;
pub mod traffic;
pub mod wait;

//! The agent (`ctscope watch`): a live copy of every namespace's conntrack table, the
//! attribution of insert_failed and drops, and lifetimes of ended flows, served to the
//! CLI over a Unix socket.
//!
//! - [`table`]: the copy of the table (dumps, then events); [`rows`]: its compact rows.
//! - [`crate::attribution`] (beside it, as `stats` renders it too): kernel counters beside
//!   the events that explain them.
//! - [`protocol`]: the socket's requests and framing (JSON lines).
//! - [`server`] / [`client`]: the two ends of the socket; [`socket_file`]: claiming and
//!   releasing its path; [`outbox`]: what the agent owes each client, and the limits on it.
//! - [`state`]: the agent's state and how it answers requests; [`dumps`]: dumping every
//!   namespace, and holding a namespace's events while its dump runs.
//! - [`view`]: what the live view of `ctscope watch` shows; [`tui`]: drawing it.
//! - [`counts`]: per-namespace counts of births and deaths; [`metrics`]: the Prometheus
//!   series, from the agent's snapshot and the kernel's counters; [`http`]: serving them
//!   (`--metrics`).
pub mod client;
pub mod counts;
pub mod dumps;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod rows;
pub mod server;
pub mod socket_file;
pub mod state;
pub mod table;
pub mod tui;
pub mod view;

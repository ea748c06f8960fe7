//! How ctscope writes what it read: events (text or JSON Lines), table entries (as
//! `conntrack -L` prints them, or JSON), the `top` ranking and statistics. Commands that read ctnetlink and the agent answering from its
//! own table use the same writers, so their output cannot differ.

pub mod conntrack_text;
pub mod events;
pub mod findings;
pub mod list;
pub mod stats;
pub mod timeouts;
pub mod top;

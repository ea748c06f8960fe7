//! One module per subcommand; each returns `anyhow::Result` and the binary maps errors
//! to exit codes.
pub mod events;
pub mod probe;

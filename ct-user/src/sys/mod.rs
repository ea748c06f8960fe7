//! The host ctscope runs on: network namespaces ([`netns`]), sysctls ([`sysctl`]),
//! capabilities ([`caps`]), standard output that may close ([`stdout`]), the text of
//! system errors ([`error_text`]), memory handed back to the system ([`memory`]), and
//! who lives in a namespace ([`workload`], with pod names from the container runtime:
//! [`cri`]).

pub mod caps;
pub mod cri;
pub mod error_text;
pub mod memory;
pub mod netns;
pub mod stdout;
pub mod sysctl;
pub mod workload;

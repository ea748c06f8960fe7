//! The kernel side: which hooks this kernel offers ([`hooks`]), loading and attaching the
//! BPF object at the best tier ([`loader`]), reading its ring buffer into events
//! ([`reader`]), and `ctscope probe`'s report of all that ([`probe`]).

pub mod code;
pub mod hooks;
pub mod loader;
pub mod probe;
pub mod raw_load;
pub mod reader;
pub mod trampoline;

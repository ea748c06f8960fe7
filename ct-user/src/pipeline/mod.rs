//! From raw events to the ones ctscope reports: the [`source`] every consumer reads
//! (ring buffer, or ctnetlink at tier 3 through [`tier3`]), tier 2's repeat filter
//! ([`live`]) and settling against the kernel's counters ([`settle`]), and the
//! [`filter`] users ask for.

pub mod filter;
pub mod live;
pub mod settle;
pub mod source;
pub mod tier3;

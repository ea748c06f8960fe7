//! Field offsets and kernel facts read from the running kernel's BTF.
//!
//! Rust BPF has no CO-RE relocations, so the agent computes the offsets of `struct nf_conn`
//! & co. here and injects them into the BPF global `LAYOUT` ([`KernelLayout`]) before load.
//! [`KernelBtf`] also answers feature questions (does a BTF FUNC exist, its parameters,
//! does a struct have a member, enum values, which object defines a type).
//!
//! # Why a hand-written parser
//!
//! BTF is read by the ~350-line decoder in `raw.rs` rather than a crate:
//! - `aya-obj` 0.3 (already a dependency of the agent) parses BTF, but its type table,
//!   `type_by_id` and string lookup are `pub(crate)`: the public API can map a name to an
//!   id and nothing more, so struct members cannot be walked. It also has no notion of
//!   split (module) BTF whose ids and string offsets continue after vmlinux's.
//! - `btf-rs` 2.0 does handle split BTF and exposes members and prototypes, but it is
//!   LGPL-2.1-or-later; statically linked into an MIT/Apache-2.0 binary that brings
//!   relinking obligations we do not want for ~350 lines of format decoding. It would also
//!   add memmap2, a proc-macro crate and byteorder.
//!
//! The decoder bounds-checks every read, so truncated or garbage input gives
//! [`BtfError::Malformed`] naming the file, never a panic.
//!
//! # Split BTF
//!
//! `/sys/kernel/btf/<module>` holds only the module's own types; ids and string offsets
//! continue after vmlinux's. Modules are each split against vmlinux, so their id ranges
//! overlap one another: a type reference is resolved in vmlinux if it is below the
//! module's first id, else in that module.

mod btf;
mod error;
mod hz;
mod layout;
mod raw;
#[cfg(test)]
mod tests;

pub use btf::{DEFAULT_MODULES, KernelBtf, RefcountKind, SYSFS_BTF_DIR, VMLINUX};
pub use ct_common::layout::{ABSENT, KernelLayout};
pub use error::BtfError;
pub use hz::{
    HZ_CHOICES, HzSource, hz_from_samples, kernel_hz, kernel_hz_with_source, parse_config_hz,
    parse_timer_list,
};
pub use layout::{RESOLVE_CLASH_ARGS_5_7, RESOLVE_CLASH_ARGS_PRE_5_7};

/// Loads the running kernel's BTF, computes the layout and sets `hz`. The notes say
/// which BTF objects were read, what is [`ABSENT`], what fell back to a default, and
/// where HZ came from.
pub fn layout_for_running_kernel() -> Result<(KernelLayout, Vec<String>), BtfError> {
    layout_of(&KernelBtf::load()?)
}

/// [`layout_for_running_kernel`] from BTF already loaded with [`KernelBtf::load`].
pub fn layout_of(btf: &KernelBtf) -> Result<(KernelLayout, Vec<String>), BtfError> {
    let (mut layout, mut notes) = btf.layout_with_notes()?;
    notes.insert(0, format!("BTF objects: {}", btf.object_names().join(", ")));
    match kernel_hz_with_source() {
        Some((hz, source)) => {
            layout.hz = hz;
            notes.push(format!("HZ={hz} ({source})"));
        }
        None => {
            notes.push("HZ unknown: no kernel config and /proc/timer_list unusable; hz=0".into())
        }
    }
    Ok((layout, notes))
}

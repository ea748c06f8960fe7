//! An entry about to be reported, seen one of two ways: as the copy in its reserved ring
//! record ([`RawRecord`], where `struct nf_conn` fits one), or field by field from the
//! kernel ([`Fields`]). Tier 2 decides what to report through [`Entry`], so both ways
//! share one path.

use ct_common::EventKind;

use crate::{
    emit::{RawRecord, emit},
    kernel::{fill_from_ct, read},
};

pub trait Entry: Sized {
    /// The `T` at `offset` in the entry; `None` for an absent or unreadable field.
    fn field<T: Copy>(&self, offset: u32) -> Option<T>;
    /// Sends the event of `kind` about this entry, in namespace `netns`.
    fn send(self, kind: EventKind, cause: u8, netns: u32, flags: u8);
    /// Reports nothing.
    fn discard(self);
}

impl Entry for RawRecord {
    #[inline(always)]
    fn field<T: Copy>(&self, offset: u32) -> Option<T> {
        self.get(offset)
    }

    #[inline(always)]
    fn send(self, kind: EventKind, cause: u8, netns: u32, flags: u8) {
        RawRecord::send(self, kind, cause, netns, flags);
    }

    #[inline(always)]
    fn discard(self) {
        RawRecord::discard(self);
    }
}

/// Entry `ct` read in place, one helper call per field; the event is filled the same way.
pub struct Fields(pub u64);

impl Entry for Fields {
    #[inline(always)]
    fn field<T: Copy>(&self, offset: u32) -> Option<T> {
        read(self.0, offset)
    }

    /// `netns` is read again by `fill_from_ct`.
    #[inline(always)]
    fn send(self, kind: EventKind, cause: u8, _netns: u32, flags: u8) {
        emit(kind, cause, |e| {
            fill_from_ct(e, self.0);
            e.flags |= flags;
        });
    }

    #[inline(always)]
    fn discard(self) {}
}

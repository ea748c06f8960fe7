use std::{io, path::PathBuf};

/// Everything that can go wrong reading BTF or resolving the layout.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel has no BTF: {} missing — needs CONFIG_DEBUG_INFO_BTF", path.display())]
    NoKernelBtf { path: PathBuf },

    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{source_name}: malformed BTF: {reason}")]
    Malformed { source_name: String, reason: String },

    #[error("type `{name}` not found in kernel BTF")]
    TypeNotFound { name: String },

    #[error("`{ty}` has no member `{path}` (`{missing}` not found)")]
    MemberNotFound {
        ty: String,
        path: String,
        missing: String,
    },

    #[error("`{ty}.{path}` is a bitfield; only byte-aligned members are supported")]
    Bitfield { ty: String, path: String },

    #[error("`{ty}.{path}`: {reason}")]
    Unsupported {
        ty: String,
        path: String,
        reason: String,
    },
}

impl BtfError {
    pub(crate) fn malformed(source_name: &str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            source_name: source_name.to_owned(),
            reason: reason.into(),
        }
    }
}

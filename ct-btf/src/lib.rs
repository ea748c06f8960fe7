//! Field offsets and kernel facts read from the running kernel's BTF.

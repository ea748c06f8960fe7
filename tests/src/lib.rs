//! Helpers for ctscope's integration tests.

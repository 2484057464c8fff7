//! Shared helpers for the end-to-end tests in `tests/tests/`.

pub mod skip;
pub mod livepatch;
pub mod testguest;

//! Patches: the file format ([`format`]), the manifest ([`manifest`]), the
//! `vsplice.h` records ([`records`]) and building a patch from C ([`build`]).

pub mod build;
pub mod format;
pub mod manifest;
pub mod records;

pub use format::{FormatError, PatchFile};
pub use manifest::Manifest;

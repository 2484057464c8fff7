//! Patches: the file format ([`format`]), the manifest ([`manifest`]), the
//! `vsplice.h` records ([`records`]) and building a patch from C ([`build`];
//! for Linux kernels through Kbuild, with run-pre masks, [`linux`]).

pub mod build;
pub mod format;
pub mod linux;
pub mod manifest;
pub mod records;

pub use format::{FormatError, PatchFile};
pub use manifest::Manifest;

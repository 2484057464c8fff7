//! Patches: everything about a patch that needs no live guest.
//!
//! - [`format`]: the `.vsp` file; [`manifest`]: what it carries;
//! - [`records`]: the `vsplice.h` records in a compiled object;
//! - [`build`]: building a patch from C (for Linux kernels through Kbuild,
//!   against the image with its run-pre masks: [`linux_image`]);
//! - [`link`]: linking a patch object against a kernel's symbols
//!   (sections, relocations, the kernel's special sections);
//! - [`jump`]: the jump written at each replaced function's entry;
//! - [`sign`]: ed25519 signatures over the file; [`trust`]: which patches are let through.

pub mod build;
pub mod diff;
pub mod format;
pub mod jump;
pub mod link;
pub mod linux_image;
pub mod manifest;
pub mod objects;
pub mod records;
pub mod sign;
pub mod trust;

pub use format::{FormatError, PatchFile};
pub use manifest::Manifest;
pub use trust::TrustPolicy;

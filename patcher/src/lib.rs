//! Guest-kernel knowledge and live patching for vsplice.
//!
//! Nothing here knows about KVM: the patcher works through [`backend::Backend`],
//! which the in-process VMM and the GDB-remote client ([`gdb`]) implement.
//! Architecture (x86 paging, [`x86`]) is kept apart from OS knowledge
//! ([`linux`]); [`mem`] is the kernel-virtual memory seam between them.
//!
//! Live patching: [`target`] (what the patcher needs of a guest kernel, and
//! the test guest's implementation), [`patch`] (file format, manifest,
//! build), [`loader`] (sections, relocations), [`jump`] (jump sites),
//! [`arena`] (mapping, registry), [`txn`] (apply, revert, safety check).

pub mod backend;
pub mod attach;
pub mod gdb;
pub mod mem;
pub mod x86;
pub mod linux;
pub mod target;
pub mod patch;
pub mod loader;
pub mod jump;
pub mod arena;
pub mod txn;
pub mod inspect;

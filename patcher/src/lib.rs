//! Guest-kernel knowledge and live patching for vsplice.
//!
//! Nothing here knows about KVM: the patcher works through [`backend::Backend`],
//! which the in-process VMM and the GDB-remote client ([`gdb`]) implement.
//! Architecture (x86 paging, [`x86`]) is kept apart from OS knowledge
//! ([`linux`]); [`mem`] is the kernel-virtual memory seam between them.

pub mod backend;
pub mod gdb;
pub mod mem;
pub mod x86;
pub mod linux;

//! Guest-kernel knowledge and live patching for vsplice.
//!
//! Nothing here knows about KVM: the patcher works through [`backend::Backend`],
//! which the in-process VMM and the GDB-remote client implement.

pub mod backend;

//! The KVM state of a guest: the VM, its memory, and its vCPUs — the vCPU
//! threads, how they run the guest, and how they are parked and released as
//! one (the pause that every live patch happens inside).

pub mod memory;
pub mod pause;
pub mod vcpu;
pub mod vm;

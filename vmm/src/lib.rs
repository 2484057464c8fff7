//! The vsplice VMM: a rust-vmm KVM hypervisor that boots Linux (or the
//! purpose-built test guest), can park every vCPU at once and hand their
//! registers to the patcher, and lets the patcher rewrite guest memory while
//! the guest is stopped.
//!
//! Layout: [`config`] (what the user asked for), [`builder`] (the fixed boot
//! order), [`vstate`] (KVM VM, memory, vCPU threads and the pause),
//! [`arch`] (x86-64 boot structures), [`devices`] (legacy port-I/O devices),
//! [`loader`] (kernel and initrd; [`elf_check`]: an ELF image's segments
//! inside guest RAM), [`vmm`] (the running VM), [`livepatch`]
//! (the desired patches), [`api`] (the HTTP API on a Unix socket),
//! [`store`] (targets registering themselves for fleet rollouts), [`fleet`]
//! (the rollouts), [`cli`].

pub mod api;
pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod devices;
pub mod elf_check;
pub mod fleet;
pub mod livepatch;
pub mod loader;
pub mod store;
pub mod vmm;
pub mod vstate;

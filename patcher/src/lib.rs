//! Guest-kernel knowledge and live patching for vsplice.
//!
//! Nothing here knows about KVM: the patcher works through
//! [`model::backend::Backend`], which the in-process VMM and the GDB-remote
//! client ([`gdb`]) implement. The layers point one way (each imports only
//! the layers above it in this list; `patcher/tests/layers.rs` checks it):
//!
//! 1. [`model`]: the vocabulary (backend seam, kernel memory, symbols,
//!    tasks, check ranges and conflicts, the arena's range, kernel kinds);
//!    imports nothing of the crate.
//! 2. [`arch`]: x86-64 paging and guest access through page tables;
//!    [`shm`]: a QEMU guest's RAM through its shared RAM file (and QMP).
//! 3. [`gdb`]: a backend over QEMU's gdbstub (memory through [`shm`] when
//!    given the RAM file); [`os`]: read-only OS knowledge (Linux
//!    structures; ELF kernels).
//! 4. [`safety`]: the stop-the-world safety check; [`patch`]: format,
//!    manifest, build, link, jumps.
//! 5. [`kernels`]: [`kernels::TargetKernel`], what the transaction needs of
//!    a guest kernel, for each kind (the test guest, stock Linux);
//!    [`arena`]: the arena's mapping and registry.
//! 6. [`txn`]: the transaction (apply, revert, recover, status).
//! 7. Front ends: [`attach`] (to a guest over a gdbstub), [`inspect`].
//!
//! `testing` (unit tests, and other crates with the `testing` feature) holds
//! the fixtures: a guest in host RAM, fault injection, a fake kernel and its
//! patches. It sits above the kernels it fakes, and any layer's test code
//! may use it.

pub mod model;
pub mod arch;
pub mod shm;
pub mod gdb;
pub mod os;
pub mod safety;
pub mod patch;
pub mod kernels;
pub mod arena;
pub mod txn;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod attach;
pub mod inspect;

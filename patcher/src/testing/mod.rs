//! Test fixtures shared by the patcher's unit tests and, with the `testing`
//! feature, by other crates' tests: a guest in host RAM behind the backend
//! seam, fault injection around any backend, a fake kernel target and patch
//! files for it. Nothing here needs KVM, QEMU or a compiler.
//!
//! - [`ram`]: [`ram::RamGuest`], guest-physical pages with their own page
//!   tables and scripted vCPUs;
//! - [`corrupt`]: [`corrupt::Corrupting`], a hostile guest on demand: chosen
//!   bytes in a real guest's memory while it is stopped, its own bytes back
//!   before it runs;
//! - [`faults`]: [`faults::Faulty`], writes that fail, or a backend that
//!   dies, after a budget of writes;
//! - [`kernel`]: [`kernel::FakeKernel`], a [`crate::kernels::TargetKernel`]
//!   with a settable task list;
//! - [`patch`]: [`patch::FakePatch`], `.vsp` patches for it.
//!
//! It sits above the layers it fakes (`patcher/tests/layers.rs`), and test
//! code of any layer may use it.

pub mod corrupt;
pub mod faults;
pub mod kernel;
pub mod patch;
pub mod ram;

pub use corrupt::{Corrupting, Corruption};
pub use faults::{Fault, Faulty};
pub use kernel::FakeKernel;
pub use patch::FakePatch;
pub use ram::RamGuest;

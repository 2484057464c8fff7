//! Guest RAM through QEMU's shared RAM file: the memory half of attaching
//! to a QEMU guest when its RAM is a `memory-backend-file` with `share=on`.
//!
//! - `qmp`: a minimal QMP client (the layout and, optionally, stop/cont).
//! - `layout`: guest-physical ranges → file offsets, from QEMU's memory map.
//! - `ramfile`: the file mapped shared, read/write.
//! - `plane`: the three together, with the write route (TCG: through the
//!   gdbstub; KVM: into the file).
//!
//! The gdbstub backend ([`crate::gdb::GdbBackend`]) takes a plane for its
//! memory accesses; stopping, resuming and registers stay with the stub.
//! Checking that the file really is the guest's RAM needs the stub and
//! lives with the front end ([`crate::attach`]).

pub mod error;
pub mod layout;
pub mod plane;
pub mod qmp;
pub mod ramfile;

pub use error::ShmError;
pub use layout::{RamLayout, RamRange};
pub use plane::{SharedPlane, ShmSpec, StopVia, WriteRoute};

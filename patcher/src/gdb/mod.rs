//! GDB remote serial protocol backend: attach to QEMU's (or any) gdbstub.
//!
//! - `packet`: framing, checksums, escaping, run-length decoding, hex.
//! - `link`: the socket with a deadline on every receive.
//! - `client`: handshake and requests (threads, target description, memory).
//! - `tdesc`: target description scanning and register numbering.
//! - `registers`: registers by name into [`crate::model::backend::VcpuState`].
//! - `backend`: the [`crate::model::backend::Backend`] implementation.

pub mod backend;
pub mod client;
pub mod error;
pub mod link;
pub mod packet;
pub mod registers;
pub mod stop;
pub mod tdesc;
pub mod virt;
#[cfg(test)]
pub(crate) mod mock;

pub use backend::GdbBackend;
pub use client::{GdbClient, GdbOptions};
pub use error::GdbError;
pub use stop::OwnStop;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod breakpoint_tests;

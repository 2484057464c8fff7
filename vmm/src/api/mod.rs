//! The VMM's HTTP API on a Unix socket (`vsplice run --api-sock PATH`, and
//! `vsplice attach --api-sock PATH` for a guest behind a gdbstub), split as
//! Cloud Hypervisor splits it: HTTP stays out of the VMM.
//!
//! - [`http`]: the HTTP/1.1 layer (tiny_http on a Unix listener, one file
//!   per resource). It turns requests into typed [`request::ApiRequest`]s,
//!   sends the ones that need the guest over a channel, and answers GETs of
//!   the VM, the metrics and the events from [`state::ApiShared`] without
//!   waiting for the VMM.
//! - [`handler`]: runs on the VMM thread between event-loop turns; owns the
//!   desired patch list, builds a `Patcher` over the VMM for each request
//!   and answers a typed [`request::ApiResponse`]. A transaction runs to its
//!   end whatever happens to the connection that asked for it.
//! - [`state`], [`events`], [`metrics`]: what both sides share.
//! - [`service`]: how `vsplice run` drives it, boot after boot.
//! - [`attached`]: how `vsplice attach` drives it over a gdbstub.
//! - [`pending`], [`pending_store`]: patches that wait for their module
//!   (`vsplice attach`), and where a daemon keeps them across restarts.
//! - [`client`]: the client `vsplice remote` and the tests use.

pub mod attached;
#[cfg(test)]
mod attached_tests;
pub mod client;
pub mod events;
pub mod handler;
pub mod pending;
pub mod pending_store;
#[cfg(test)]
mod handler_tests;
pub mod http;
pub mod metrics;
pub mod request;
pub mod service;
pub mod state;

/// Largest request body the API reads (a `.vsp` file or a JSON request):
/// the patch file bound, one constant for the API, the CLI and the reader.
pub const MAX_BODY: u64 = vsplice_patcher::patch::format::MAX_FILE_SIZE;

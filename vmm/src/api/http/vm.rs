//! `GET /vm`: the VM's state, vCPUs, memory, arena, kernel, agent doorbell
//! and uptime, from the shared state (never waits for a transaction).

use super::Reply;
use crate::api::request::{ApiCause, ApiError};
use crate::api::state::ApiShared;

/// `GET /vm`.
pub fn get(shared: &ApiShared) -> Reply {
    match shared.vm() {
        Some(info) => Reply::json(200, &info),
        None => Reply::error(&ApiError::new(ApiCause::GuestGone, "the VM is not built yet")),
    }
}

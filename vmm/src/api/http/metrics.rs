//! `GET /metrics`: the Prometheus text.

use super::Reply;
use crate::api::state::ApiShared;

/// `GET /metrics`.
pub fn get(shared: &ApiShared) -> Reply {
    let text = shared.metrics.lock().map(|m| m.render()).unwrap_or_default();
    Reply { status: 200, content_type: "text/plain; version=0.0.4", body: text.into_bytes(), allow: None }
}

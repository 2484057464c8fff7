//! `GET /events?since=N&timeout=S`: long-poll of the event log. Returns
//! every kept event with `seq > N` (default 0) at once, or waits up to `S`
//! seconds (default 10, at most 60) for the next one; `next` is what to pass
//! as `since` next time.

use std::time::Duration;

use serde::Serialize;

use super::Reply;
use crate::api::events::Event;
use crate::api::request::{ApiCause, ApiError};
use crate::api::state::ApiShared;

/// Longest wait of one poll, in seconds.
pub const MAX_WAIT_S: u64 = 60;
/// Wait of a poll that names none, in seconds.
pub const DEFAULT_WAIT_S: u64 = 10;

#[derive(Debug, Serialize)]
struct Events {
    events: Vec<Event>,
    next: u64,
}

fn parse_query(query: &str) -> Result<(u64, u64), ApiError> {
    let (mut since, mut wait) = (0, DEFAULT_WAIT_S);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v.parse().map_err(|_| ApiError::new(ApiCause::BadQuery, format!("`{k}` wants a number, got `{v}`")))?;
        match k {
            "since" => since = n,
            "timeout" => wait = n.min(MAX_WAIT_S),
            _ => return Err(ApiError::new(ApiCause::BadQuery, format!("unknown parameter `{k}` (since, timeout)"))),
        }
    }
    Ok((since, wait))
}

/// `GET /events`.
pub fn get(shared: &ApiShared, query: &str) -> Reply {
    let (since, wait) = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return Reply::error(&e),
    };
    let events = shared.events.since(since, Duration::from_secs(wait));
    let next = events.last().map_or(since, |e| e.seq);
    Reply::json(200, &Events { events, next })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn query() {
        assert_eq!(parse_query("").unwrap(), (0, DEFAULT_WAIT_S));
        assert_eq!(parse_query("since=7&timeout=1").unwrap(), (7, 1));
        assert_eq!(parse_query("timeout=999").unwrap(), (0, MAX_WAIT_S));
        assert_eq!(parse_query("since=x").unwrap_err().cause, ApiCause::BadQuery);
        assert_eq!(parse_query("until=1").unwrap_err().cause, ApiCause::BadQuery);
    }
}

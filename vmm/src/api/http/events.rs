//! `GET /events?since=N&timeout=S`: long-poll of the event log. Returns
//! every kept event with `seq > N` (default 0) at once, or waits up to `S`
//! seconds (default 10, at most 60) for the next one; `next` is what to pass
//! as `since` next time. With `follow=true` (or `Accept:
//! application/x-ndjson`) the events are streamed instead ([`super::follow`]).

use std::time::Duration;

use serde::Serialize;

use super::{Answer, Reply};
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

/// What a `GET /events` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Query {
    since: u64,
    wait: u64,
    follow: bool,
}

/// Checks a `GET /events` query as the handler would (the fuzz target's
/// entry: the parsed form stays private).
pub fn check_query(query: &str, accept_ndjson: bool) -> Result<(), ApiError> {
    parse_query(query, accept_ndjson).map(|_| ())
}

fn parse_query(query: &str, accept_ndjson: bool) -> Result<Query, ApiError> {
    let mut q = Query { since: 0, wait: DEFAULT_WAIT_S, follow: accept_ndjson };
    let mut timeout_given = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || v.parse::<u64>().map_err(|_| ApiError::new(ApiCause::BadQuery, format!("`{k}` wants a number, got `{v}`")));
        match k {
            "since" => q.since = number()?,
            "timeout" => {
                q.wait = number()?.min(MAX_WAIT_S);
                timeout_given = true;
            }
            "follow" => {
                q.follow = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::new(ApiCause::BadQuery, format!("`follow` wants true or false, got `{v}`"))),
                }
            }
            _ => return Err(ApiError::new(ApiCause::BadQuery, format!("unknown parameter `{k}` (since, timeout, follow)"))),
        }
    }
    if q.follow && timeout_given {
        return Err(ApiError::new(ApiCause::BadQuery, "`timeout` is for a long-poll; a stream (`follow`) has none"));
    }
    Ok(q)
}

/// `GET /events`: a long-poll's reply, or the stream to follow from `since`.
pub fn get(shared: &ApiShared, query: &str, accept_ndjson: bool) -> Answer {
    let q = match parse_query(query, accept_ndjson) {
        Ok(q) => q,
        Err(e) => return Answer::Reply(Reply::error(&e)),
    };
    if q.follow {
        return Answer::Follow(q.since);
    }
    let events = shared.events.since(q.since, Duration::from_secs(q.wait));
    let next = events.last().map_or(q.since, |e| e.seq);
    Answer::Reply(Reply::json(200, &Events { events, next }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(since: u64, wait: u64, follow: bool) -> Query {
        Query { since, wait, follow }
    }

    #[test]
    fn query() {
        assert_eq!(parse_query("", false).unwrap(), q(0, DEFAULT_WAIT_S, false));
        assert_eq!(parse_query("since=7&timeout=1", false).unwrap(), q(7, 1, false));
        assert_eq!(parse_query("timeout=999", false).unwrap(), q(0, MAX_WAIT_S, false));
        assert_eq!(parse_query("since=x", false).unwrap_err().cause, ApiCause::BadQuery);
        assert_eq!(parse_query("until=1", false).unwrap_err().cause, ApiCause::BadQuery);
    }

    #[test]
    fn follow_by_query_or_accept() {
        assert_eq!(parse_query("since=3&follow=true", false).unwrap(), q(3, DEFAULT_WAIT_S, true));
        assert_eq!(parse_query("", true).unwrap(), q(0, DEFAULT_WAIT_S, true));
        assert_eq!(parse_query("follow=false", true).unwrap(), q(0, DEFAULT_WAIT_S, false));
        assert_eq!(parse_query("follow=yes", false).unwrap_err().cause, ApiCause::BadQuery);
        assert_eq!(parse_query("follow=1&timeout=5", false).unwrap_err().cause, ApiCause::BadQuery);
    }
}

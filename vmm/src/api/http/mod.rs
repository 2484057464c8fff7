//! The HTTP/1.1 layer of the API: tiny_http serving the Unix socket
//! ([`socket`]), one thread per request (at most [`MAX_IN_FLIGHT`]), routes
//! to one file per resource ([`vm`], [`patches`], [`metrics`], [`events`]).
//! An event stream ([`follow`]) gives its request slot back and takes one
//! of its own (at most [`follow::MAX_STREAMS`]).
//! Requests that need the guest go to the request handler on the VMM thread
//! as typed values; nothing here touches the VMM.

pub mod events;
pub mod follow;
pub mod metrics;
pub mod patches;
pub mod socket;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server};

use super::request::{txn_http_status, ApiCause, ApiError, ApiRequest, ApiResponse, Envelope};
use super::state::ApiShared;
pub use socket::SocketError;

/// Requests served at once; more get `503 too_many_requests`.
pub const MAX_IN_FLIGHT: usize = 32;

/// An answer: status, body and its type (and `Allow` for a 405).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// `Allow` (405 only).
    pub allow: Option<&'static str>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self { status, content_type: "application/json", body, allow: None },
            Err(e) => Self::error(&ApiError::new(ApiCause::Unexpected, e.to_string())),
        }
    }

    /// An error reply: `{"cause", "message"}` with the cause's status.
    pub fn error(e: &ApiError) -> Self {
        Self { status: e.cause.http_status(), content_type: "application/json", body: e.to_json().into_bytes(), allow: None }
    }

    fn from_response(r: ApiResponse) -> Self {
        match r {
            ApiResponse::Status(s) => Self::json(200, &s),
            ApiResponse::Patch(p) => Self::json(200, &p),
            ApiResponse::Pending(p) => Self::json(if p.state == "pending" { 202 } else { 200 }, &p),
            ApiResponse::Txn(t) => Self { status: txn_http_status(&t), content_type: "application/json", body: t.to_json().into_bytes(), allow: None },
            ApiResponse::Error(e) => Self::error(&e),
        }
    }
}

/// What a route answers: a reply, or the event stream from a sequence number.
#[derive(Debug)]
pub enum Answer {
    /// An ordinary reply.
    Reply(Reply),
    /// `GET /events?follow=true`: stream the events after this `seq`.
    Follow(u64),
}

/// What every request thread shares.
#[derive(Debug)]
pub struct Ctx {
    /// The shared state.
    pub shared: Arc<ApiShared>,
    requests: Sender<Envelope>,
    streams: AtomicUsize,
}

impl Ctx {
    /// Sends a request to the handler and waits for its answer.
    pub fn ask(&self, request: ApiRequest) -> Reply {
        let (reply, answer) = mpsc::channel();
        if self.requests.send(Envelope { request, reply }).is_err() {
            return Reply::error(&ApiError::new(ApiCause::GuestGone, "the VMM is gone"));
        }
        match answer.recv() {
            Ok(r) => Reply::from_response(r),
            Err(_) => Reply::error(&ApiError::new(ApiCause::GuestGone, "the VMM ended before answering")),
        }
    }

    /// Runs a transaction: `409 busy` when another is in flight. The
    /// handler frees the slot when the transaction ends, whether or not
    /// this client is still there to read the answer.
    pub fn transaction(&self, request: ApiRequest) -> Reply {
        if !self.shared.try_begin() {
            return Reply::error(&ApiError::new(ApiCause::Busy, "another transaction is in flight on this VM; try again when it ends"));
        }
        let (reply, answer) = mpsc::channel();
        if self.requests.send(Envelope { request, reply }).is_err() {
            self.shared.end();
            return Reply::error(&ApiError::new(ApiCause::GuestGone, "the VMM is gone"));
        }
        match answer.recv() {
            Ok(r) => Reply::from_response(r),
            Err(_) => Reply::error(&ApiError::new(ApiCause::GuestGone, "the VMM ended before answering")),
        }
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn accepts_ndjson(rq: &Request) -> bool {
    rq.headers().iter().any(|h| h.field.equiv("Accept") && h.value.as_str().to_ascii_lowercase().contains(follow::NDJSON))
}

fn content_type(rq: &Request) -> String {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = Reply::error(&ApiError::new(ApiCause::MethodNotAllowed, format!("this resource allows {allow}")));
    r.allow = Some(allow);
    r
}

/// Routes one request to its resource.
pub fn route(ctx: &Ctx, rq: &mut Request) -> Answer {
    if let (["events"], Method::Get) = (segments(rq.url()).as_slice(), rq.method()) {
        let query = rq.url().split_once('?').map_or("", |(_, q)| q).to_owned();
        return events::get(&ctx.shared, &query, accepts_ndjson(rq));
    }
    Answer::Reply(route_reply(ctx, rq))
}

fn segments(url: &str) -> Vec<&str> {
    let path = url.split_once('?').map_or(url, |(p, _)| p);
    path.trim_end_matches('/').split('/').skip(1).collect()
}

fn route_reply(ctx: &Ctx, rq: &mut Request) -> Reply {
    let url = rq.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let method = rq.method().clone();
    let segments = segments(path);
    match (segments.as_slice(), &method) {
        (["vm"], Method::Get) => vm::get(&ctx.shared),
        (["vm"], _) => method_not_allowed("GET"),
        (["metrics"], Method::Get) => metrics::get(&ctx.shared),
        (["metrics"], _) => method_not_allowed("GET"),
        (["events"], _) => method_not_allowed("GET"),
        (["patches"], Method::Get) => patches::list(ctx),
        (["patches"], Method::Put) => {
            let ct = content_type(rq);
            let declared = rq.body_length();
            patches::apply(ctx, &ct, query, declared, rq.as_reader())
        }
        (["patches"], _) => method_not_allowed("GET, PUT"),
        (["patches", "recover"], Method::Post) => patches::recover(ctx),
        (["patches", "recover"], _) => method_not_allowed("POST"),
        (["patches", id], Method::Get) => patches::get(ctx, id),
        (["patches", id], Method::Delete) => patches::revert(ctx, id),
        (["patches", _], _) => method_not_allowed("GET, DELETE"),
        _ => Reply::error(&ApiError::new(ApiCause::NotFound, format!("no resource {path}"))),
    }
}

fn respond(rq: Request, reply: Reply) {
    let mut response = Response::from_data(reply.body).with_status_code(reply.status).with_chunked_threshold(usize::MAX);
    if let Some(h) = header("Content-Type", reply.content_type) {
        response = response.with_header(h);
    }
    if let Some(h) = reply.allow.and_then(|a| header("Allow", a)) {
        response = response.with_header(h);
    }
    if let Err(e) = rq.respond(response) {
        tracing::debug!(error = %e, "API client went away before its answer");
    }
}

/// Streams one request's events until the client or the server goes.
fn stream(ctx: &Ctx, rq: Request, since: u64) {
    let Some(_slot) = follow::StreamSlot::claim(&ctx.streams) else {
        let e = ApiError::new(ApiCause::TooManyRequests, format!("{} event streams are open already", follow::MAX_STREAMS));
        return respond(rq, Reply::error(&e));
    };
    tracing::debug!(since, "API event stream opened");
    let mut w = rq.into_writer();
    let ended = follow::pump(&mut follow::EventReader::new(&ctx.shared.events, since, follow::KEEPALIVE), &mut w);
    tracing::debug!(ended = ?ended.err(), "API event stream closed");
}

/// The request slot a request thread holds, freed on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Longest the server's end waits for its event streams to end cleanly.
const STREAMS_END_WAIT: Duration = Duration::from_secs(2);

/// The API server; dropping it stops it, ends the event streams and removes the socket.
#[derive(Debug)]
pub struct ApiServer {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    path: PathBuf,
    ctx: Arc<Ctx>,
    in_flight: Arc<AtomicUsize>,
}

impl ApiServer {
    /// Binds `path` and serves it on its own thread; requests for the guest
    /// go to `requests`.
    pub fn start(path: &Path, shared: Arc<ApiShared>, requests: Sender<Envelope>) -> Result<Self, SocketError> {
        let listener = socket::bind(path)?;
        let server = Server::from_listener(listener, None)
            .map_err(|e| SocketError::Io { path: path.to_owned(), source: std::io::Error::other(e.to_string()) })?;
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx { shared, requests, streams: AtomicUsize::new(0) });
        let (stopping, serving) = (stop.clone(), ctx.clone());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counting = in_flight.clone();
        let accept = std::thread::Builder::new()
            .name("vsplice-api".into())
            .spawn(move || serve(server, serving, stopping, counting))
            .map_err(|source| SocketError::Io { path: path.to_owned(), source })?;
        tracing::info!(path = %path.display(), "API listening");
        Ok(Self { stop, accept: Some(accept), path: path.to_owned(), ctx, in_flight })
    }

    /// Stops accepting, gives the requests being answered up to `grace` to
    /// write their answers (the handler should have answered or refused
    /// them first), then removes the socket (and ends the event streams).
    pub fn shutdown(mut self, grace: Duration) {
        self.stop_accepting();
        let deadline = std::time::Instant::now() + grace;
        while self.in_flight.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop_accepting(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: Server, ctx: Arc<Ctx>, stop: Arc<AtomicBool>, in_flight: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Acquire) {
        let mut rq = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(rq)) => rq,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "API accept");
                continue;
            }
        };
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            respond(rq, Reply::error(&ApiError::new(ApiCause::TooManyRequests, "too many requests at once")));
            continue;
        }
        let (ctx, slot) = (ctx.clone(), Slot(in_flight.clone()));
        let spawned = std::thread::Builder::new().name("vsplice-api-rq".into()).spawn(move || match route(&ctx, &mut rq) {
            Answer::Reply(reply) => {
                tracing::debug!(method = %rq.method(), url = rq.url(), status = reply.status, "API request");
                respond(rq, reply);
                drop(slot);
            }
            Answer::Follow(since) => {
                drop(slot);
                stream(&ctx, rq, since);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start an API request thread");
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_accepting();
        // The streams send what is left of the log and their last chunk.
        self.ctx.shared.events.close();
        let end = Instant::now() + STREAMS_END_WAIT;
        while self.ctx.streams.load(Ordering::Acquire) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        // tiny_http removes it too when the server drops; make sure.
        let _ = std::fs::remove_file(&self.path);
    }
}

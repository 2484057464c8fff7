//! The HTTP/1.1 layer of the API: tiny_http serving the Unix socket
//! ([`socket`]), one thread per request (at most [`MAX_IN_FLIGHT`]), routes
//! to one file per resource ([`vm`], [`patches`], [`metrics`], [`events`]).
//! Requests that need the guest go to the request handler on the VMM thread
//! as typed values; nothing here touches the VMM.

pub mod events;
pub mod metrics;
pub mod patches;
pub mod socket;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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
            ApiResponse::Txn(t) => Self { status: txn_http_status(&t), content_type: "application/json", body: t.to_json().into_bytes(), allow: None },
            ApiResponse::Error(e) => Self::error(&e),
        }
    }
}

/// What every request thread shares.
#[derive(Debug)]
pub struct Ctx {
    /// The shared state.
    pub shared: Arc<ApiShared>,
    requests: Sender<Envelope>,
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
pub fn route(ctx: &Ctx, rq: &mut Request) -> Reply {
    let url = rq.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let method = rq.method().clone();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (segments.as_slice(), &method) {
        (["vm"], Method::Get) => vm::get(&ctx.shared),
        (["vm"], _) => method_not_allowed("GET"),
        (["metrics"], Method::Get) => metrics::get(&ctx.shared),
        (["metrics"], _) => method_not_allowed("GET"),
        (["events"], Method::Get) => events::get(&ctx.shared, query),
        (["events"], _) => method_not_allowed("GET"),
        (["patches"], Method::Get) => patches::list(ctx),
        (["patches"], Method::Put) => {
            let ct = content_type(rq);
            let declared = rq.body_length();
            patches::apply(ctx, &ct, declared, rq.as_reader())
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

/// The API server; dropping it stops it and removes the socket.
#[derive(Debug)]
pub struct ApiServer {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    path: PathBuf,
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
        let ctx = Arc::new(Ctx { shared, requests });
        let stopping = stop.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counting = in_flight.clone();
        let accept = std::thread::Builder::new()
            .name("vsplice-api".into())
            .spawn(move || serve(server, ctx, stopping, counting))
            .map_err(|source| SocketError::Io { path: path.to_owned(), source })?;
        tracing::info!(path = %path.display(), "API listening");
        Ok(Self { stop, accept: Some(accept), path: path.to_owned(), in_flight })
    }

    /// Stops accepting, gives the requests being answered up to `grace` to
    /// write their answers (the handler should have answered or refused
    /// them first), then removes the socket.
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
        let (ctx, count) = (ctx.clone(), in_flight.clone());
        let spawned = std::thread::Builder::new().name("vsplice-api-rq".into()).spawn(move || {
            let reply = route(&ctx, &mut rq);
            tracing::debug!(method = %rq.method(), url = rq.url(), status = reply.status, "API request");
            respond(rq, reply);
            count.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "cannot start an API request thread");
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_accepting();
        // tiny_http removes it too when the server drops; make sure.
        let _ = std::fs::remove_file(&self.path);
    }
}

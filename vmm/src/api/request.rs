//! The typed requests the HTTP layer sends to the request handler, its
//! typed answers, and the API's own stable error causes.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use serde::Serialize;
use vsplice_patcher::model::CheckMode;
use vsplice_patcher::txn::recover::{PatchStatus, PendingStatus, Status};
use vsplice_patcher::txn::TxnReport;

/// Where the patch to apply comes from.
#[derive(Debug, Clone)]
pub enum PatchSource {
    /// The `.vsp` bytes, sent as the request body.
    Bytes(Vec<u8>),
    /// A `.vsp` file on the host.
    Path(PathBuf),
}

/// `PUT /patches`.
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    /// The patch.
    pub source: PatchSource,
    /// The safety check (default: the transaction's default).
    pub check: Option<CheckMode>,
    /// Pauses tried before `code_busy` (default: the transaction's default).
    pub attempts: Option<u32>,
    /// When a module it names is not loaded: hold it and apply it as that
    /// module loads (`vsplice attach` only), rather than refuse it.
    pub when_loaded: bool,
}

/// What the request handler is asked.
#[derive(Debug, Clone)]
pub enum ApiRequest {
    /// `GET /patches`.
    ListPatches,
    /// `GET /patches/{id}` (id or name).
    GetPatch(String),
    /// `PUT /patches`.
    Apply(ApplyRequest),
    /// `DELETE /patches/{id}` (id or name).
    Revert(String),
    /// `POST /patches/recover`.
    Recover,
}

impl ApiRequest {
    /// True for the requests that run a transaction (one at a time per VM).
    pub fn is_transaction(&self) -> bool {
        matches!(self, Self::Apply(_) | Self::Revert(_) | Self::Recover)
    }
}

/// The handler's answer.
#[derive(Debug, Clone)]
pub enum ApiResponse {
    /// The guest registry, checked against the text.
    Status(Box<Status>),
    /// One patch of it.
    Patch(Box<PatchStatus>),
    /// A transaction's report (ok or refused).
    Txn(Box<TxnReport>),
    /// A patch held until its module loads (`pending`, 202), or one
    /// cancelled while it was (`cancelled`, 200).
    Pending(Box<PendingStatus>),
    /// The request could not be served.
    Error(ApiError),
}

/// A request with the channel its answer goes to.
#[derive(Debug)]
pub struct Envelope {
    /// The request.
    pub request: ApiRequest,
    /// Where the answer goes (the client may be gone by then: that is fine).
    pub reply: Sender<ApiResponse>,
}

/// Stable causes of API errors (not of transactions: those are the
/// transaction's own causes, in its report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiCause {
    /// Another transaction is in flight on this VM.
    Busy,
    /// The JSON body does not parse or has the wrong fields.
    MalformedJson,
    /// A query parameter is not understood.
    BadQuery,
    /// The body is neither JSON nor `application/octet-stream`.
    UnsupportedMediaType,
    /// The body is larger than the API reads.
    BodyTooLarge,
    /// No such patch in the guest registry.
    UnknownPatch,
    /// No such resource.
    NotFound,
    /// The resource exists but not with this method.
    MethodNotAllowed,
    /// The patch file named in the request cannot be read.
    PatchFileUnreadable,
    /// This guest's kernel cannot be patched by this VMM.
    UnsupportedTarget,
    /// The guest's kernel is not up (or not identified) yet: try again later.
    NotUp,
    /// Too many requests at once.
    TooManyRequests,
    /// The VM has ended (or the handler is gone).
    GuestGone,
    /// `when_loaded` on a VMM or kernel that cannot hold a patch until its
    /// module loads (`vsplice run`; a kernel without the module hooks; a
    /// gdbstub without hardware breakpoints).
    PendingUnsupported,
    /// Reading the registry failed.
    Unexpected,
}

impl ApiCause {
    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::MalformedJson => "malformed_json",
            Self::BadQuery => "bad_query",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge => "body_too_large",
            Self::UnknownPatch => "unknown_patch",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PatchFileUnreadable => "patch_file_unreadable",
            Self::UnsupportedTarget => "unsupported_target",
            Self::NotUp => "not_up",
            Self::TooManyRequests => "too_many_requests",
            Self::GuestGone => "guest_gone",
            Self::PendingUnsupported => "pending_unsupported",
            Self::Unexpected => "unexpected",
        }
    }

    /// The HTTP status it is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Busy => 409,
            Self::MalformedJson | Self::BadQuery | Self::PatchFileUnreadable => 400,
            Self::UnsupportedMediaType => 415,
            Self::BodyTooLarge => 413,
            Self::UnknownPatch | Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedTarget | Self::PendingUnsupported => 422,
            Self::TooManyRequests | Self::GuestGone | Self::NotUp => 503,
            Self::Unexpected => 500,
        }
    }
}

/// An API error: `{"cause": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// Stable cause.
    pub cause: ApiCause,
    /// Human explanation.
    pub message: String,
}

impl ApiError {
    /// An error with a message.
    pub fn new(cause: ApiCause, message: impl Into<String>) -> Self {
        Self { cause, message: message.into() }
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "cause": self.cause.name(), "message": self.message }).to_string()
    }
}

/// The HTTP status a transaction report is answered with: 200 when it is
/// `ok`; 422 when the patch itself is unusable for this kernel (or its
/// signature does not verify); 403 when it is unsigned or signed by a key
/// that is not trusted (`--trusted-keys`); 409 when the
/// guest's state refused it (busy code, order, already done, not up, …);
/// 500 for `unexpected`.
pub fn txn_http_status(report: &TxnReport) -> u16 {
    use vsplice_patcher::txn::Cause;
    match report.cause {
        Cause::Ok => 200,
        Cause::NoMatch | Cause::FailedToFind | Cause::BadPatch | Cause::UnsupportedSection | Cause::UnsupportedTarget | Cause::BadSignature => 422,
        // The patch is well-formed but its author is not one this VMM trusts.
        Cause::Unsigned | Cause::UntrustedKey => 403,
        Cause::Unexpected => 500,
        _ => 409,
    }
}

//! The request handler: runs on the VMM thread between event-loop turns and
//! answers each [`ApiRequest`] with a typed [`ApiResponse`]. Transactions
//! run here to their end (the guest is never left paused or half-patched,
//! whatever became of the client); each result goes to the event log and
//! the metrics, and apply/revert edit the VM's desired patch list.
//!
//! [`serve`] is the core, generic over the patcher's backend so it is
//! unit-tested on the patcher's fakes; [`RequestHandler`] drives it over the
//! VMM and keeps the shared state current; its side of patches that wait
//! for their module (`vsplice attach`) is in `handler/held.rs`.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::model::{ArenaRange, CheckMode, Incremental};
use vsplice_patcher::model::chain;
use vsplice_patcher::patch::{FormatError, PatchFile};
use vsplice_patcher::patch::trust::{TrustPolicy, ALLOW_UNSIGNED_NOTE};
use vsplice_patcher::txn::causes::trust_refusal;
use vsplice_patcher::txn::recover::Status;
use vsplice_patcher::txn::{Patcher, TxnConfig, TxnReport};
use vsplice_patcher::kernels::TargetKernel;

use super::request::{ApiCause, ApiError, ApiRequest, ApiResponse, ApplyRequest, Envelope, PatchSource};
use super::pending::{ModuleHooks, PendingPatch};
use super::pending_store::PendingStore;
use super::state::ApiShared;
use crate::livepatch::{desire, undesire, DesiredPatches};

mod held;

/// What serving one request produced.
#[derive(Debug)]
pub struct Served {
    /// The answer.
    pub response: ApiResponse,
    /// The transaction's report, when one ran (for the events and metrics).
    pub report: Option<TxnReport>,
    /// The registry read after it, when it changed or was read.
    pub status: Option<Status>,
}

fn error(cause: ApiCause, message: impl Into<String>) -> Served {
    Served { response: ApiResponse::Error(ApiError::new(cause, message)), report: None, status: None }
}

fn failed(e: ApiError) -> Served {
    Served { response: ApiResponse::Error(e), report: None, status: None }
}

fn read_status<B: Backend>(patcher: &mut Patcher<'_, B>) -> Result<Status, ApiError> {
    patcher.status().map_err(|f| ApiError::new(ApiCause::Unexpected, format!("reading the guest registry: {}", f.message)))
}

fn txn<B: Backend>(patcher: &mut Patcher<'_, B>, report: TxnReport) -> Served {
    let status = patcher.status().ok();
    Served { response: ApiResponse::Txn(Box::new(report.clone())), report: Some(report), status }
}

fn read_patch_file(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    // Regular files only, bounded before and while reading (a FIFO or /dev/zero never hangs the VMM).
    vsplice_patcher::patch::format::read_bounded(path).map_err(|e| {
        let cause = if matches!(e, FormatError::TooLarge { .. }) { ApiCause::BodyTooLarge } else { ApiCause::PatchFileUnreadable };
        ApiError::new(cause, format!("{}: {}", path.display(), chain(&e)))
    })
}

fn apply<B: Backend>(patcher: &mut Patcher<'_, B>, desired: &mut DesiredPatches, req: ApplyRequest, trust: &TrustPolicy) -> Served {
    let (bytes, origin) = match req.source {
        PatchSource::Bytes(b) => (b, PathBuf::from("<api>")),
        PatchSource::Path(p) => match read_patch_file(&p) {
            Ok(b) => (b, p),
            Err(e) => return failed(e),
        },
    };
    // Who may patch, before anything reads or writes the guest.
    let admitted = match trust.admit(&bytes) {
        Ok(a) => a,
        Err(e) => {
            let report = trust_refusal(&e);
            return Served { response: ApiResponse::Txn(Box::new(report.clone())), report: Some(report), status: None };
        }
    };
    if admitted.warns() {
        eprintln!("vsplice: warning: {ALLOW_UNSIGNED_NOTE}");
    }
    if let Some(check) = req.check {
        patcher.config_mut().check = check;
    }
    if let Some(n) = req.attempts {
        patcher.config_mut().max_attempts = n.max(1);
    }
    let report = match PatchFile::parse(&bytes) {
        Ok(p) => {
            let r = patcher.apply(&p);
            if r.is_ok() {
                desire(desired, origin, p);
            }
            r
        }
        // The same `bad_patch` report (with the format's reason) as the CLI's.
        Err(_) => patcher.apply_bytes(&bytes),
    };
    let mut report = report;
    report.notes.extend(admitted.notes);
    txn(patcher, report)
}

fn known(status: &Status, id_or_name: &str) -> bool {
    status.patches.iter().any(|p| p.id == id_or_name || p.name == id_or_name)
}

/// Serves one request with `patcher` over the guest; `desired` is the VM's
/// desired patch list. No trusted keys: every patch is let through.
pub fn serve<B: Backend>(patcher: &mut Patcher<'_, B>, desired: &mut DesiredPatches, request: ApiRequest) -> Served {
    serve_with(patcher, desired, request, &TrustPolicy::none())
}

/// [`serve`] with a trust policy: an apply's patch is checked before the
/// guest is touched (`unsigned`, `bad_signature`, `untrusted_key`).
pub fn serve_with<B: Backend>(patcher: &mut Patcher<'_, B>, desired: &mut DesiredPatches, request: ApiRequest, trust: &TrustPolicy) -> Served {
    match request {
        ApiRequest::ListPatches => match read_status(patcher) {
            Ok(s) => Served { response: ApiResponse::Status(Box::new(s.clone())), report: None, status: Some(s) },
            Err(e) => failed(e),
        },
        ApiRequest::GetPatch(id) => match read_status(patcher) {
            Ok(s) => match s.patches.iter().find(|p| p.id == id || p.name == id) {
                Some(p) => Served { response: ApiResponse::Patch(Box::new(p.clone())), report: None, status: Some(s) },
                None => error(ApiCause::UnknownPatch, format!("no patch `{id}` in the guest registry")),
            },
            Err(e) => failed(e),
        },
        ApiRequest::Apply(req) => apply(patcher, desired, req, trust),
        ApiRequest::Revert(id) => {
            match read_status(patcher) {
                Ok(s) if known(&s, &id) => {}
                Ok(_) => return error(ApiCause::UnknownPatch, format!("no patch `{id}` in the guest registry")),
                Err(e) => return failed(e),
            }
            let report = patcher.revert(&id);
            if report.is_ok() {
                undesire(desired, &id);
                if let Some(real) = &report.patch_id {
                    undesire(desired, real);
                }
            }
            txn(patcher, report)
        }
        ApiRequest::Recover => {
            let report = patcher.recover();
            txn(patcher, report)
        }
    }
}

/// Drives [`serve`] over the VMM for the requests the HTTP layer sends.
#[derive(Debug)]
pub struct RequestHandler {
    shared: Arc<ApiShared>,
    requests: Receiver<Envelope>,
    check: Option<CheckMode>,
    incremental: Incremental,
    trust: TrustPolicy,
    /// Patches held until their module loads.
    pending: Vec<PendingPatch>,
    /// The module hooks, or why patches cannot wait for their module here.
    hooks: Result<ModuleHooks, String>,
    /// Where the pending list is mirrored on the host (`--pending-dir`),
    /// once what it held was restored.
    store: Option<PendingStore>,
    /// The pending dir until what it holds is restored.
    restore: Option<PendingStore>,
    #[cfg(test)]
    test_tx: Option<std::sync::mpsc::Sender<Envelope>>,
}

impl RequestHandler {
    /// A handler for the requests arriving on `requests`.
    pub fn new(shared: Arc<ApiShared>, requests: Receiver<Envelope>) -> Self {
        let hooks = Err("this VMM cannot hold a patch until its module loads (`vsplice attach` can)".to_owned());
        Self { shared, requests, check: None, incremental: Incremental::Off, trust: TrustPolicy::none(), pending: Vec::new(), hooks, store: None, restore: None, #[cfg(test)] test_tx: None }
    }

    /// A handler whose requests the test hands it ([`Self::test_send`]).
    #[cfg(test)]
    pub fn for_tests() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut h = Self::new(Arc::new(ApiShared::default()), rx);
        h.test_tx = Some(tx);
        h
    }

    /// Queues a request (tests).
    #[cfg(test)]
    pub fn test_send(&self, env: Envelope) {
        if let Some(tx) = &self.test_tx {
            let _ = tx.send(env);
        }
    }

    fn config(&self, arena: ArenaRange) -> TxnConfig {
        let mut config = TxnConfig::new(arena);
        if let Some(check) = self.check {
            config.check = check;
        }
        config.incremental = self.incremental;
        config
    }

    fn serve_one<B: Backend>(&mut self, guest: &mut B, arena: ArenaRange, target: &dyn TargetKernel, desired: &mut DesiredPatches, request: ApiRequest) -> Served {
        let mut patcher = Patcher::new(&mut *guest, target, self.config(arena));
        match request {
            ApiRequest::Apply(req) if req.when_loaded => self.apply_when_loaded(&mut patcher, desired, req),
            ApiRequest::Revert(id) if self.pending.iter().any(|p| p.is(&id)) => {
                let i = self.pending.iter().position(|p| p.is(&id)).unwrap_or(0);
                let p = self.pending.remove(i);
                self.persist_pending();
                let st = p.status("cancelled");
                self.shared.events.module("cancelled", format!("patch {} ({}) no longer waits for module(s) {}", st.name, st.id, st.modules.join(", ")));
                Served { response: ApiResponse::Pending(Box::new(st)), report: None, status: patcher.status().ok() }
            }
            other => serve_with(&mut patcher, desired, other, &self.trust),
        }
    }

    /// Which patches an apply lets through (`--trusted-keys`, `--allow-unsigned`).
    pub fn set_trust(&mut self, trust: TrustPolicy) {
        self.trust = trust;
    }

    /// The safety check of every transaction unless its request names one
    /// (`vsplice attach --check`; default: the transaction's default).
    pub fn with_check(mut self, check: CheckMode) -> Self {
        self.check = Some(check);
        self
    }

    /// The incremental check of every transaction (`vsplice attach
    /// --incremental`; default off).
    pub fn with_incremental(mut self, incremental: Incremental) -> Self {
        self.incremental = incremental;
        self
    }

    /// Records a transaction's result (the API's or `--live-patch`'s).
    pub fn record(shared: &ApiShared, report: &TxnReport) {
        shared.events.txn(report);
        if let Ok(mut m) = shared.metrics.lock() {
            m.txn(report);
        }
    }

    /// Waits up to `wait` for a request, then serves it and every other
    /// one waiting, over `guest` with its arena. `target` is the identified
    /// kernel, or why there is none (`not_up`, `unsupported_target`): then
    /// every request that needs the guest is answered with that error.
    /// `desired` is the VM's desired patch list (apply adds, revert removes).
    pub fn serve_waiting<B: Backend>(
        &mut self,
        guest: &mut B,
        arena: ArenaRange,
        target: Result<&dyn TargetKernel, &ApiError>,
        desired: &mut DesiredPatches,
        wait: Duration,
    ) {
        let mut next = self.requests.recv_timeout(wait).ok();
        while let Some(env) = next {
            let is_txn = env.request.is_transaction();
            let mut served = match target {
                Ok(target) => self.serve_one(guest, arena, target, desired, env.request),
                Err(why) => failed(why.clone()),
            };
            if let Some(r) = &served.report {
                Self::record(&self.shared, r);
            }
            let pending: Vec<_> = self.pending.iter().map(|p| p.status("pending")).collect();
            if let ApiResponse::Status(s) = &mut served.response {
                s.pending.clone_from(&pending);
            }
            if let Some(mut s) = served.status {
                s.pending = pending;
                self.shared.set_status(Some(s));
            }
            if is_txn {
                self.shared.end();
            }
            // The client may have gone: the transaction is done all the same.
            let _ = env.reply.send(served.response);
            next = self.requests.try_recv().ok();
        }
    }

    /// Reads the registry into the shared state (after patches applied
    /// without a request: `--live-patch` at boot, or on attaching).
    pub fn refresh_status<B: Backend>(&self, guest: &mut B, arena: ArenaRange, target: &dyn TargetKernel) {
        let mut patcher = Patcher::new(&mut *guest, target, TxnConfig::new(arena));
        if let Ok(mut s) = patcher.status() {
            s.pending = self.pending.iter().map(|p| p.status("pending")).collect();
            self.shared.set_status(Some(s));
        }
    }

    /// Answers every waiting request with `guest_gone` (the VM has ended).
    pub fn refuse_all(&mut self) {
        while let Ok(env) = self.requests.try_recv() {
            if env.request.is_transaction() {
                self.shared.end();
            }
            let _ = env.reply.send(ApiResponse::Error(ApiError::new(ApiCause::GuestGone, "the guest has ended")));
        }
    }
}

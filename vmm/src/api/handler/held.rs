//! The request handler's side of patches that wait for their module
//! (`vsplice attach`): `when_loaded` requests, the breakpoints the module
//! hooks need, what happens when a hook is hit, and the pending dir
//! (`--pending-dir`) that keeps the waiting patches across daemon restarts.

use std::collections::BTreeSet;
use std::path::PathBuf;

use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::{Backend, VcpuState};
use vsplice_patcher::model::ArenaRange;
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::txn::Patcher;

use super::super::pending::{apply_at_load, may_wait, ready, Held, ModuleHooks, PendingPatch};
use super::super::pending_store::{PendingStore, PendingStoreError, StoredPending};
use super::super::request::{ApiCause, ApiRequest, ApiResponse, ApplyRequest, PatchSource};
use super::{apply, error, failed, read_patch_file, RequestHandler, Served};
use crate::livepatch::{desire, undesire, DesiredPatches};

impl RequestHandler {
    /// The module hooks `when_loaded` relies on (`vsplice attach`), or why
    /// there are none (then `when_loaded` is `pending_unsupported`).
    pub fn set_hooks(&mut self, hooks: Result<ModuleHooks, String>) {
        self.hooks = hooks;
    }

    /// The breakpoints the pending patches and the applied module patches
    /// need: the load hook while anything is pending, the unload hook while
    /// a record belongs to a module.
    pub fn wanted_breakpoints(&self) -> BTreeSet<u64> {
        let Ok(h) = &self.hooks else { return BTreeSet::new() };
        let mut want = BTreeSet::new();
        if !self.pending.is_empty() {
            want.insert(h.coming);
        }
        if self.shared.status().is_some_and(|s| s.patches.iter().any(|p| p.funcs.iter().any(|f| f.module.is_some()))) {
            want.insert(h.going);
        }
        want
    }

    /// The hooks could not be set (no hardware breakpoints): every pending
    /// patch fails with `why`, and none is accepted from now on.
    pub fn hooks_failed(&mut self, why: String) {
        for p in std::mem::take(&mut self.pending) {
            self.shared.events.module("failed_at_load", format!("patch {} ({}): {why}", p.patch.manifest.name, p.patch.manifest.id));
        }
        self.hooks = Err(why);
        self.publish_pending();
    }

    fn publish_pending(&self) {
        if let Some(mut s) = self.shared.status() {
            s.pending = self.pending.iter().map(|p| p.status("pending")).collect();
            self.shared.set_status(Some(s));
        }
    }

    /// `PUT /patches` with `when_loaded`: applied now when it can be; held
    /// (`202 pending`) when only its module's absence refused it.
    pub(super) fn apply_when_loaded<B: Backend>(&mut self, patcher: &mut Patcher<'_, B>, desired: &mut DesiredPatches, req: ApplyRequest) -> Served {
        if let Err(why) = &self.hooks {
            return error(ApiCause::PendingUnsupported, why.clone());
        }
        let (source, check) = (req.source.clone(), req.check);
        let served = apply(patcher, desired, req, &self.trust);
        if !served.report.as_ref().is_some_and(may_wait) {
            return served;
        }
        let (bytes, origin) = match source {
            PatchSource::Bytes(b) => (b, PathBuf::from("<api>")),
            PatchSource::Path(p) => match read_patch_file(&p) {
                Ok(b) => (b, p),
                Err(e) => return failed(e),
            },
        };
        let Ok(patch) = PatchFile::parse(&bytes) else { return served };
        let p = PendingPatch { patch, origin, check, bytes };
        self.pending.retain(|x| x.patch.manifest.id != p.patch.manifest.id);
        let st = p.status("pending");
        self.shared.events.module("pending", format!("patch {} ({}) waits for module(s) {}", st.name, st.id, st.modules.join(", ")));
        // Saved here, not left to `persist_pending`: a patch sent again
        // (same id, another check) replaces the kept one.
        if let Some(Err(e)) = self.store.as_ref().map(|store| keep(store, &p)) {
            tracing::warn!(cause = e.cause(), "keeping a pending patch on the host: {e}");
            self.shared.events.module("not_kept", format!("patch {} ({}) waits, but only in this daemon's memory: {e}", st.name, st.id));
        }
        self.pending.push(p);
        Served { response: ApiResponse::Pending(Box::new(st)), report: None, status: served.status }
    }

    /// The guest is stopped on a module hook (`hit`: the vCPU on it; its
    /// `rdi` is the `struct module`): at the load hook the pending patches
    /// of that module are applied, at the unload hook the records of that
    /// module are dropped. The guest stays stopped (the caller steps the
    /// vCPU over the hook and resumes it).
    pub fn module_hook<B: Backend>(&mut self, guest: &mut B, arena: ArenaRange, target: &dyn TargetKernel, hit: &VcpuState, desired: &mut DesiredPatches) {
        let Ok(hooks) = self.hooks.clone() else { return };
        let module = hit.gprs[5];
        if hit.rip == hooks.coming {
            let (now, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending).into_iter().partition(|p| ready(target, &mut *guest, p, module));
            self.pending = wait;
            for p in now {
                let mut patcher = Patcher::new(Held(&mut *guest), target, self.config(arena));
                let r = apply_at_load(&mut patcher, &p, module);
                Self::record(&self.shared, &r);
                let st = p.status("pending");
                if r.is_ok() {
                    desire(desired, p.origin.clone(), p.patch.clone());
                    self.shared.events.module("applied_at_load", format!("patch {} ({}) applied to module(s) {} at load (state COMING, struct module {module:#x}), before the module's init", st.name, st.id, st.modules.join(", ")));
                } else {
                    self.shared.events.module("failed_at_load", format!("patch {} ({}) not applied at the load of module(s) {} (state COMING): {} ({}); the module loads unpatched", st.name, st.id, st.modules.join(", "), r.cause.name(), r.reason.as_deref().unwrap_or("-")));
                }
            }
            self.persist_pending();
        } else if hit.rip == hooks.going {
            let mut patcher = Patcher::new(Held(&mut *guest), target, self.config(arena));
            match patcher.drop_going_module(module) {
                Ok(dropped) => {
                    for (id, name) in dropped {
                        undesire(desired, &id);
                        self.shared.events.module("module_unloaded", format!("patch {name} ({id}) dropped: its module (struct module {module:#x}) is being unloaded; its arena space is free"));
                    }
                }
                Err(f) => tracing::warn!(cause = f.cause.name(), "dropping the records of a module being unloaded: {}", f.message),
            }
        }
        self.refresh_status(&mut Held(&mut *guest), arena, target);
    }

    /// Mirrors the pending list into `store` from now on (`--pending-dir`).
    pub fn set_pending_store(&mut self, store: PendingStore) {
        self.store = None;
        self.restore = Some(store);
    }

    /// Sends every patch the pending dir holds back through `PUT /patches`
    /// with `when_loaded` (trust checked again; applied now when its module
    /// loaded meanwhile, held otherwise), each with a `module` event
    /// `restored`; from then on the dir mirrors the pending list. Once: a
    /// second call does nothing. A daemon that cannot hold patches leaves
    /// the dir as it is.
    pub fn restore_pending<B: Backend>(&mut self, guest: &mut B, arena: ArenaRange, target: &dyn TargetKernel, desired: &mut DesiredPatches) {
        let Some(store) = self.restore.take() else { return };
        self.store = Some(store.clone());
        let (stored, problems) = store.load();
        for why in problems {
            tracing::warn!("pending dir {}: skipped {why}", store.dir().display());
            self.shared.events.module("not_restored", format!("{} (left in {})", why, store.dir().display()));
        }
        if let Err(why) = &self.hooks {
            if !stored.is_empty() {
                self.shared.events.module("not_restored", format!("{} patch(es) left in {}: {why}", stored.len(), store.dir().display()));
            }
            return;
        }
        for p in stored {
            let req = ApplyRequest { source: PatchSource::Bytes(p.bytes), check: p.check, attempts: None, when_loaded: true };
            let served = self.serve_one(guest, arena, target, desired, ApiRequest::Apply(req));
            if let Some(r) = &served.report {
                Self::record(&self.shared, r);
            }
            let how = match &served.response {
                ApiResponse::Pending(_) => "held again".to_owned(),
                ApiResponse::Error(e) => format!("refused: {} ({})", e.message, e.cause.name()),
                _ => served.report.as_ref().map_or_else(|| "answered".to_owned(), |r| format!("applied at once: {}", r.cause.name())),
            };
            self.shared.events.module("restored", format!("patch {} from {}: {how}", p.id, store.dir().display()));
        }
        self.persist_pending();
        self.refresh_status(guest, arena, target);
    }

    /// Makes the pending dir hold exactly the pending list (a daemon that
    /// cannot hold patches never changes it); called where the list
    /// changes: a cancel, a load hook, a restore.
    pub(super) fn persist_pending(&self) {
        let Some(store) = &self.store else { return };
        if self.hooks.is_err() {
            return;
        }
        let want: BTreeSet<&str> = self.pending.iter().map(|p| p.patch.manifest.id.as_str()).collect();
        let have = store.ids();
        for id in have.iter().filter(|id| !want.contains(id.as_str())) {
            if let Err(e) = store.remove(id) {
                tracing::warn!(cause = e.cause(), "pending dir: {e}");
            }
        }
        for p in self.pending.iter().filter(|p| !have.contains(&p.patch.manifest.id)) {
            if let Err(e) = keep(store, p) {
                tracing::warn!(cause = e.cause(), "pending dir: {e}");
            }
        }
    }

    /// What becomes of the pending patches as the daemon ends (its last
    /// words on stderr): kept in the pending dir, or dropped with it.
    pub fn pending_at_exit(&self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let store = self.store.as_ref().or(self.restore.as_ref());
        let kept: BTreeSet<String> = store.map(|s| s.ids().into_iter().collect()).unwrap_or_default();
        let names = |ps: &[&PendingPatch]| ps.iter().map(|p| format!("{} ({})", p.patch.manifest.name, p.patch.manifest.id)).collect::<Vec<_>>().join(", ");
        let (in_dir, lost): (Vec<&PendingPatch>, Vec<&PendingPatch>) = self.pending.iter().partition(|p| kept.contains(&p.patch.manifest.id));
        let mut says = Vec::new();
        if let (Some(s), false) = (store, in_dir.is_empty()) {
            let dir = s.dir().display();
            says.push(format!("{} pending patch(es) kept in {dir} for the next daemon with --pending-dir {dir}: {}", in_dir.len(), names(&in_dir)));
        }
        if !lost.is_empty() {
            says.push(format!("{} pending patch(es) dropped, held only in this daemon's memory (--pending-dir keeps them): {}", lost.len(), names(&lost)));
        }
        Some(says.join("; "))
    }
}

/// Writes `p` into the pending dir.
fn keep(store: &PendingStore, p: &PendingPatch) -> Result<(), PendingStoreError> {
    store.save(&StoredPending { id: p.patch.manifest.id.clone(), bytes: p.bytes.clone(), check: p.check })
}

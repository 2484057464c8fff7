//! Patches held until their module loads (`PUT /patches` with
//! `when_loaded`), and what `vsplice attach` does at the two module hooks:
//! at `klp_module_coming` (the module's text final, state COMING, before
//! its notifiers, parameter callbacks and init run) the pending patches of
//! that module are applied with the guest still stopped on the hook; at
//! `klp_module_going` (its exit has run, or its load failed; the text is
//! about to be freed) the records of that load are dropped and their arena
//! space freed. The hooks are hardware breakpoints the daemon sets only
//! while something needs them (see `attached.rs`).

use std::path::PathBuf;

use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::{Backend, BackendError, VcpuState};
use vsplice_patcher::model::{MODULE_STATE_COMING, MODULE_STATE_LIVE};
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::txn::recover::PendingStatus;
use vsplice_patcher::txn::{Cause, Patcher, TxnReport};

/// The kernel function stopped on when a module is about to run.
pub const COMING_HOOK: &str = "klp_module_coming";
/// The kernel function stopped on when a module goes.
pub const GOING_HOOK: &str = "klp_module_going";

/// The two hooks' addresses (KASLR applied), from the kernel's kallsyms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleHooks {
    /// `klp_module_coming`.
    pub coming: u64,
    /// `klp_module_going`.
    pub going: u64,
}

impl ModuleHooks {
    /// Looks both up in `target`'s symbols; why not, when one is missing
    /// (a kernel built without `CONFIG_LIVEPATCH`).
    pub fn resolve(target: &dyn TargetKernel) -> Result<Self, String> {
        let find = |name: &str| target.symbols().all(name).first().map(|s| s.addr).ok_or_else(|| format!("the kernel has no `{name}` (built without CONFIG_LIVEPATCH?): patches cannot wait for their module"));
        Ok(Self { coming: find(COMING_HOOK)?, going: find(GOING_HOOK)? })
    }
}

/// A patch waiting for its module.
#[derive(Debug, Clone)]
pub struct PendingPatch {
    /// The patch.
    pub patch: PatchFile,
    /// Where it came from (the desired list's origin).
    pub origin: PathBuf,
    /// The safety check its request named.
    pub check: Option<vsplice_patcher::model::CheckMode>,
    /// The `.vsp` bytes as received (what the pending dir keeps).
    pub bytes: Vec<u8>,
}

impl PendingPatch {
    /// What `GET /patches` shows of it.
    pub fn status(&self, state: &'static str) -> PendingStatus {
        let m = &self.patch.manifest;
        PendingStatus { id: m.id.clone(), name: m.name.clone(), modules: m.modules().into_iter().map(str::to_owned).collect(), state }
    }

    /// True when `id_or_name` names it.
    pub fn is(&self, id_or_name: &str) -> bool {
        self.patch.manifest.id == id_or_name || self.patch.manifest.name == id_or_name
    }
}

/// True when a refused apply may wait for its module instead: it was
/// refused only because a module it names is not on the module list.
pub fn may_wait(report: &TxnReport) -> bool {
    report.cause == Cause::ModuleNotLoaded && report.reason.as_deref() == Some("module_not_loaded")
}

/// Whether the pending patch `p` is for the module whose `struct module`
/// is at `coming`: one of its modules is that one (state COMING), and every
/// other is live.
pub fn ready<B: Backend>(target: &dyn TargetKernel, guest: &mut B, p: &PendingPatch, coming: u64) -> bool {
    let mut mem = vsplice_patcher::arch::x86::guest::Guest::new(Held(&mut *guest), target.page_table_root(), target.paging_mode().cr4_bits());
    let mut found_coming = false;
    for name in p.patch.manifest.modules() {
        match target.module(&mut mem, name) {
            Ok(Some(m)) if m.state == MODULE_STATE_COMING && m.addr == coming => found_coming = true,
            Ok(Some(m)) if m.state == MODULE_STATE_LIVE => {}
            _ => return false,
        }
    }
    found_coming
}

/// Applies `p` to the module coming at `coming` (the guest stopped on the
/// hook: it stays stopped), one attempt: nothing of the module has run.
pub fn apply_at_load<B: Backend>(patcher: &mut Patcher<'_, B>, p: &PendingPatch, coming: u64) -> TxnReport {
    let cfg = patcher.config_mut();
    cfg.coming_module = Some(coming);
    cfg.max_attempts = 1;
    if let Some(c) = p.check {
        cfg.check = c;
    }
    let mut r = patcher.apply(&p.patch);
    r.notes.push(format!("applied at the load of its module (struct module {coming:#x}, state COMING: before its parameter callbacks and init ran)"));
    r
}

/// The guest as a transaction sees it while stopped on a hook: resuming is
/// left to the daemon (after it steps the vCPU over the hook).
#[derive(Debug)]
pub struct Held<'a, B: Backend>(pub &'a mut B);

impl<B: Backend> Backend for Held<'_, B> {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        self.0.stop()
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.0.read_phys(gpa, buf)
    }
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.write_phys(gpa, data)
    }
    fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        self.0.read_phys_words(gpa, out)
    }
    fn direct_reads(&self) -> bool {
        self.0.direct_reads()
    }
    fn prefetch_phys(&self, gpa: u64, len: usize) {
        self.0.prefetch_phys(gpa, len)
    }
}

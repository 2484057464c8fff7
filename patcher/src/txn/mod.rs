//! The live-patch transaction: prepare with the guest running (match, load,
//! place, write the new code into the arena, record the intent), then inside
//! one pause: check, write the jumps, resume. Conflicts mean resume, back
//! off and retry, a bounded number of times, then `code_busy`.
//!
//! [`Patcher`] ties a [`TargetKernel`] to a backend; its operations are
//! [`Patcher::apply`] ([`prepare`], [`apply`]), [`Patcher::revert`] ([`revert`]),
//! [`Patcher::recover`] and [`Patcher::status`] ([`recover`]). The guest's
//! registry is the only state: a new `Patcher` on the same guest sees what
//! every earlier one did, the patches' ORC included ([`orc`]: each
//! transaction's unwinder is the target's plus the registry's patch rows).
//! [`arena_check`] refuses `arena_in_use` before the first write of any
//! transaction when the arena is not outside the guest's RAM.
//! [`causes`] maps each lower layer's error to the [`Cause`] it reports.

pub mod apply;
pub mod arena_check;
pub mod causes;
mod dispute;
mod incremental;
mod modules;
pub mod orc;
pub mod pause;
pub mod prepare;
pub mod recover;
pub mod result;
pub mod revert;

#[cfg(test)]
mod testutil;
#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod arena_check_tests;
#[cfg(test)]
mod busy_tests;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod orc_tests;
#[cfg(test)]
mod paging_tests;
#[cfg(test)]
mod stack_tests;

use std::time::Duration;

use crate::arena::registry::Registry;
use crate::arena::{codec, map, ArenaInfo};
use crate::model::backend::Backend;
use crate::arch::x86::guest::Guest;
use crate::model::{ArenaRange, CheckMode, CheckSummary, Incremental};
use crate::kernels::TargetKernel;
pub use result::{Cause, Conflict, Failure, Stage, Timings, TxnReport};

/// Knobs of a transaction.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// Guest-physical range of the arena (reserved from the guest's RAM).
    pub arena: ArenaRange,
    /// Pauses tried before giving up with `code_busy`.
    pub max_attempts: u32,
    /// First back-off after a conflict (doubles up to `max_backoff`).
    pub backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// The safety check: ORC unwinding where the target has an unwinder
    /// (conservative scan per unreliable stack), or the conservative scan.
    pub check: CheckMode,
    /// Reuse the verdicts of a pre-check made with the guest running for
    /// the tasks the scheduler proves did not run since (`on`), run both
    /// and refuse on a difference (`compare`), or check every task under
    /// the pause (`off`, the default).
    pub incremental: Incremental,
    /// The apply at a module's load (`vsplice attach`'s pending patches):
    /// the `struct module` address of the module being loaded, whose state
    /// COMING then counts as loaded for this transaction alone (any other
    /// module the patch names must be live). `None`: only live modules.
    pub coming_module: Option<u64>,
}

impl TxnConfig {
    /// Defaults for an arena: 20 attempts, 5 ms back-off doubling to 200 ms.
    pub fn new(arena: ArenaRange) -> Self {
        Self { arena, max_attempts: 20, backoff: Duration::from_millis(5), max_backoff: Duration::from_millis(200), check: CheckMode::default(), incremental: Incremental::default(), coming_module: None }
    }
}

/// Applies and reverts patches on one guest.
#[derive(Debug)]
pub struct Patcher<'t, B: Backend> {
    target: &'t dyn TargetKernel,
    guest: Guest<B>,
    cfg: TxnConfig,
    generation: u64,
    /// What the loader did in the current transaction (for its report).
    notes: Vec<String>,
    /// What the last safety check did (for the report).
    last_check: Option<CheckSummary>,
    /// Where the last task read found its source, handed to the next one.
    task_hint: Option<u64>,
    /// The task list the last pre-check read, recycled by the pause's read
    /// ([`TargetKernel::tasks_again`]): its storage only, never its content.
    recycle: Option<crate::model::GuestTasks>,
    /// Tests: what the guest does between a pause's pre-check and its stop.
    #[cfg(test)]
    window: Option<Window>,
}

/// Tests: called with the attempt number after the pre-check and before
/// the stop, the guest running; returns what the guest writes then
/// (guest-physical address, bytes: a task running into a function, say).
#[cfg(test)]
pub(crate) struct Window(pub Box<WindowFn>);

/// The writes the guest makes in a test window: (guest-physical address, bytes).
#[cfg(test)]
type WindowFn = dyn FnMut(u32) -> Vec<(u64, Vec<u8>)>;

#[cfg(test)]
impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Window")
    }
}

impl<'t, B: Backend> Patcher<'t, B> {
    /// A patcher for `target` through `backend`.
    pub fn new(backend: B, target: &'t dyn TargetKernel, cfg: TxnConfig) -> Self {
        let guest = Guest::new(backend, target.page_table_root(), target.paging_mode().cr4_bits());
        Self {
            target,
            guest,
            cfg,
            generation: 0,
            notes: Vec::new(),
            last_check: None,
            task_hint: None,
            recycle: None,
            #[cfg(test)]
            window: None,
        }
    }

    /// Guest access (tests, diagnostics).
    pub fn guest(&mut self) -> &mut Guest<B> {
        &mut self.guest
    }

    /// The configuration.
    pub fn config_mut(&mut self) -> &mut TxnConfig {
        &mut self.cfg
    }

    /// Tests: `f` runs between each pause's pre-check and its stop.
    #[cfg(test)]
    pub(crate) fn set_window(&mut self, f: impl FnMut(u32) -> Vec<(u64, Vec<u8>)> + 'static) {
        self.window = Some(Window(Box::new(f)));
    }

    #[cfg(test)]
    fn run_window(&mut self, attempt: u32) {
        let writes = self.window.as_mut().map(|w| (w.0)(attempt)).unwrap_or_default();
        for (gpa, bytes) in writes {
            if let Err(e) = self.guest.backend().write_phys(gpa, &bytes) {
                tracing::error!(error = %e, "test window write failed");
            }
        }
    }

    /// Gives the backend back.
    pub fn into_backend(self) -> B {
        self.guest.into_backend()
    }

    /// True when the guest kernel is up enough to be patched.
    pub fn kernel_up(&mut self) -> bool {
        self.target.is_up(&mut self.guest).unwrap_or(false)
    }

    fn arena_phys(&self) -> u64 {
        self.cfg.arena.phys()
    }

    /// The registry in the guest, if there is a valid one for this boot and kernel.
    pub(crate) fn load_registry(&mut self, stage: Stage) -> Result<Option<Registry>, Failure> {
        let unexpected = |e: &dyn std::error::Error| Failure::from_err(stage, Cause::Unexpected, "registry", e);
        let phys = self.arena_phys();
        let loaded = codec::load(self.guest.backend(), phys).map_err(|e| match e {
            codec::CodecError::Corrupt => Failure::from_err(stage, Cause::Unexpected, "registry_corrupt", &e),
            other => unexpected(&other),
        })?;
        let Some(loaded) = loaded else {
            return Ok(None);
        };
        self.generation = self.generation.max(loaded.generation);
        let reg = loaded.registry;
        let same_arena = reg.arena.phys == phys && reg.arena.size == self.cfg.arena.size();
        let same_kernel = reg.build_id.as_deref() == self.target.build_id();
        let root = self.target.page_table_root();
        let mapped = same_arena && map::is_mapped(self.guest.backend(), root, self.target.paging_mode(), &reg.arena).map_err(|e| unexpected(&e))?;
        // Applied patches but no arena mapping: the guest rebooted since.
        if !same_arena || !same_kernel || (!mapped && reg.applied().next().is_some()) {
            tracing::info!(same_arena, same_kernel, mapped, "registry is from another boot or kernel: starting afresh");
            return Ok(None);
        }
        Ok(Some(reg))
    }

    /// The registry, or a fresh one for this boot (arena placed in free slots).
    pub(crate) fn registry(&mut self, stage: Stage) -> Result<Registry, Failure> {
        if let Some(r) = self.load_registry(stage)? {
            return Ok(r);
        }
        let root = self.target.page_table_root();
        let window = self.target.arena_window();
        let virt = map::find_free(self.guest.backend(), root, self.target.paging_mode(), window, self.cfg.arena.slots())
            .map_err(|e| Failure::from_err(stage, Cause::ArenaFull, "no_free_slots", &e))?;
        let info = ArenaInfo::new(self.cfg.arena, virt);
        Ok(Registry::new(info, self.target.build_id().map(str::to_owned)))
    }

    /// Saves the registry as the next generation.
    pub(crate) fn save_registry(&mut self, reg: &Registry, stage: Stage) -> Result<(), Failure> {
        let next = self.generation + 1;
        let phys = self.arena_phys();
        codec::save(self.guest.backend(), phys, reg, next)
            .map_err(|e| Failure::from_err(stage, Cause::Unexpected, "registry", &e))?;
        self.generation = next;
        Ok(())
    }

    fn report(&mut self, op: &'static str, id: Option<String>, name: Option<String>, timings: Timings, r: Result<Vec<String>, Failure>) -> TxnReport {
        let notes = std::mem::take(&mut self.notes);
        let check = self.last_check.take();
        match r {
            Ok(superseded) => TxnReport {
                op,
                patch_id: id,
                patch_name: name,
                stage: Stage::Done,
                cause: Cause::Ok,
                reason: None,
                message: String::new(),
                conflicts: Vec::new(),
                superseded,
                notes,
                check,
                timings,
            },
            Err(f) => TxnReport {
                op,
                patch_id: id,
                patch_name: name,
                stage: f.stage,
                cause: f.cause,
                reason: f.reason,
                message: f.message,
                conflicts: f.conflicts,
                superseded: Vec::new(),
                notes: Vec::new(),
                check,
                timings,
            },
        }
    }
}

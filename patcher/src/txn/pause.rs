//! The part of a transaction that runs with the guest stopped (what does
//! not depend on it is read before: the ORC view, where the task source
//! is): stop every
//! vCPU, map the arena the first time, read the task list, run the safety
//! check, check that each jump site still holds its expected bytes, write
//! the new bytes, resume. A conflict or a task list caught mid-update means
//! resume, back off and try again, up to the configured number of pauses;
//! so does a task list whose sources disagree the way a fork or exit in
//! flight does, until the same tasks stay disputed ([`super::dispute`]).
//! With the incremental check on, each pause is preceded by its pre-check
//! with the guest running ([`super::incremental`]).

use std::time::Instant;

use super::dispute::Disputes;
use super::result::{Cause, Conflict, Failure, Stage, Timings};
use super::Patcher;
use crate::arena::map;
use crate::arena::registry::{CheckRange, Registry, SiteWrite};
use crate::model::backend::{Backend, BackendError};
use crate::model::mem::KernelMemory;
use crate::model::{Incremental, TargetError};

/// How a pause loop failed.
#[derive(Debug)]
pub(crate) struct PauseFailure {
    pub failure: Failure,
    /// Some kernel text may have been written and could not be restored.
    pub text_dirty: bool,
}

/// Time given to the other threads (the vCPUs') between a pre-check and the stop.
const SETTLE_AFTER_PRE_CHECK: std::time::Duration = std::time::Duration::from_micros(200);

fn us(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

impl<B: Backend> Patcher<'_, B> {
    /// The end every transaction shares: run the pauses, then commit the
    /// registry's intent, or roll it back when no text was written (a
    /// half-written text keeps its intent for the next transaction's recovery).
    pub(crate) fn pause_and_settle(
        &mut self,
        reg: &mut Registry,
        ranges: &[CheckRange],
        writes: &[SiteWrite],
        timings: &mut Timings,
    ) -> Result<(), Failure> {
        match self.run_pauses(reg, ranges, writes, timings) {
            Ok(()) => {
                reg.commit_intent();
                self.save_registry(reg, Stage::Commit)
            }
            Err(pf) => {
                if !pf.text_dirty {
                    reg.rollback_intent();
                    if let Err(e) = self.save_registry(reg, Stage::Commit) {
                        tracing::error!(message = %e.message, "could not record the rollback; the next transaction recovers");
                    }
                }
                Err(pf.failure)
            }
        }
    }

    fn backend_failure(stage: Stage, e: &BackendError) -> Failure {
        Failure::from_err(stage, Cause::from(e), Some(e.cause()), e)
    }

    fn resume_after(&mut self, t0: Instant, timings: &mut Timings, mut f: Failure) -> Failure {
        if let Err(e) = self.guest.resume() {
            f.message.push_str(&format!("; resuming the guest failed too: {e}"));
        }
        timings.downtime_us = us(t0);
        timings.total_downtime_us += timings.downtime_us;
        f
    }

    /// Runs pauses until the writes are done or the attempts are spent.
    pub(crate) fn run_pauses(
        &mut self,
        reg: &Registry,
        ranges: &[CheckRange],
        writes: &[SiteWrite],
        timings: &mut Timings,
    ) -> Result<(), PauseFailure> {
        let fail = |failure: Failure| PauseFailure { failure, text_dirty: false };
        let mut backoff = self.cfg.backoff;
        let mut last: Option<Failure> = None;
        let mut disputes = Disputes::default();
        let target = self.target;
        let symbols = target.symbols();
        // The kernel's ORC and the patches' from the registry (crate::txn::orc).
        let unwinder = self.unwinder_view(reg);
        // Where the task source is, found while the guest runs: the pause
        // then reads it there (and still checks it) instead of searching.
        if self.task_hint.is_none() {
            self.task_hint = target.locate_task_source(&mut self.guest);
        }
        for attempt in 1..=self.cfg.max_attempts.max(1) {
            timings.attempts = attempt;
            if attempt > 1 {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(self.cfg.max_backoff);
            }
            // With the guest running: the incremental check's pre-check.
            let pre = self.pre_check(unwinder.as_ref(), ranges);
            #[cfg(test)]
            self.run_window(attempt);
            if pre.is_some() {
                // The pre-check is a CPU burst of this thread (tens of ms
                // with 10,000 tasks); stopping right after it, the vCPU
                // threads answered the stop milliseconds late on a loaded
                // host (pause p50 4.5 ms vs 0.2 ms with this pause first,
                // benches/downtime_sleepers). Not part of the downtime.
                std::thread::sleep(SETTLE_AFTER_PRE_CHECK);
            }
            let t0 = Instant::now();
            let vcpus = self.guest.stop().map_err(|e| fail(Self::backend_failure(Stage::Pause, &e)))?;
            timings.pause_us = us(t0);
            // Check.
            let t1 = Instant::now();
            // The pre-check's list (if any) lends its storage: no allocation
            // per task under the pause, the same list as a fresh read.
            let read = match self.recycle.take() {
                Some(prev) => {
                    // With `on`, a kind may send a busy guest back to run
                    // rather than read everything under this pause, while
                    // attempts remain; `compare` keeps both paths compared.
                    let retry = self.cfg.incremental == Incremental::On && attempt < self.cfg.max_attempts.max(1);
                    target.tasks_again(&mut self.guest, &vcpus, self.task_hint, prev, retry)
                }
                None => target.tasks(&mut self.guest, &vcpus, self.task_hint),
            };
            let tasks = match read {
                Ok(t) => t,
                Err(TargetError::Inconsistent(why)) => {
                    timings.check_us = us(t1);
                    let f = Failure::new(Stage::Check, Cause::CodeBusy, "tasks_inconsistent", format!("task list kept changing: {why}"));
                    last = Some(self.resume_after(t0, timings, f));
                    continue;
                }
                Err(TargetError::Disputed { cause, tasks, message }) => {
                    timings.check_us = us(t1);
                    if let Some((task, n)) = disputes.record(&tasks) {
                        let why = format!("{message}; task {task:#x} disputed at {n} pauses in a row: not a fork or exit in flight");
                        let f = Failure::new(Stage::Check, Cause::Unexpected, cause, why);
                        return Err(fail(self.resume_after(t0, timings, f)));
                    }
                    tracing::debug!(attempt, %message, "task sources disagree (in flight?): backing off");
                    let f = Failure::new(Stage::Check, Cause::CodeBusy, "tasks_inconsistent", format!("task list kept changing: {message}"));
                    last = Some(self.resume_after(t0, timings, f));
                    continue;
                }
                Err(e) => {
                    let f = Failure::from_err(Stage::Check, Cause::from(&e), Some(e.cause()), &e);
                    return Err(fail(self.resume_after(t0, timings, f)));
                }
            };
            disputes.clear();
            self.task_hint = tasks.source_at;
            let conflicts: Vec<Conflict> = match self.pause_check(unwinder.as_ref(), &vcpus, &tasks, ranges, pre.as_ref()) {
                Ok((c, mut summary)) => {
                    summary.task_source = tasks.source.to_owned();
                    if !summary.fallbacks.is_empty() {
                        tracing::info!(mode = %summary.mode, fallbacks = ?summary.fallbacks, "stacks scanned conservatively");
                    }
                    self.last_check = Some(summary);
                    c
                }
                Err(f) => return Err(fail(self.resume_after(t0, timings, f))),
            };
            // The text must still hold what the transaction expects.
            let mut stale = None;
            for w in writes {
                match self.guest.read_vec(w.addr, w.before.len()) {
                    Ok(now) if now == w.before => {}
                    Ok(now) => stale = Some(format!("{} holds {now:02x?}, expected {:02x?}", symbols.describe(w.addr), w.before)),
                    Err(e) => stale = Some(format!("{}: {e}", symbols.describe(w.addr))),
                }
            }
            timings.check_us = us(t1);
            if let Some(why) = stale {
                let f = Failure::new(Stage::Check, Cause::Unexpected, "text_changed", format!("kernel text changed under the transaction: {why}"));
                return Err(fail(self.resume_after(t0, timings, f)));
            }
            if !conflicts.is_empty() {
                let names: Vec<String> = conflicts
                    .iter()
                    .map(|c| format!("{} in {}", c.task.as_deref().unwrap_or("?"), c.function))
                    .collect();
                tracing::debug!(attempt, conflicts = %names.join(", "), "code busy: backing off");
                let mut f = Failure::new(Stage::Check, Cause::CodeBusy, None, format!("code busy after {attempt} attempts: {}", names.join(", ")));
                f.conflicts = conflicts;
                last = Some(self.resume_after(t0, timings, f));
                continue;
            }
            // Write: the arena mapping (first time), then every site.
            let t2 = Instant::now();
            let root = self.target.page_table_root();
            let nxe = vcpus.first().is_some_and(|v| v.efer & map::EFER_NXE != 0);
            if let Err(e) = map::map(self.guest.backend(), root, self.target.paging_mode(), &reg.arena, nxe) {
                let f = Failure::from_err(Stage::Write, Cause::Unexpected, "arena_map", &e);
                return Err(fail(self.resume_after(t0, timings, f)));
            }
            self.guest.flush();
            let mut done = 0;
            let mut err = None;
            for w in writes {
                if let Err(e) = self.guest.write_virt(w.addr, &w.after) {
                    err = Some(e);
                    break;
                }
                done += 1;
            }
            if let Some(e) = err {
                // Put back what was written, so the guest never runs
                // half-patched: the failed site too, whose first page may
                // have been written (a site across two pages is two writes).
                let upto = (done + 1).min(writes.len());
                let restored = writes[..upto].iter().all(|w| self.guest.write_virt(w.addr, &w.before).is_ok());
                let f = Failure::from_err(Stage::Write, Cause::Unexpected, "write_failed", &e);
                let f = self.resume_after(t0, timings, f);
                return Err(PauseFailure { failure: f, text_dirty: !restored });
            }
            timings.write_us = us(t2);
            let t3 = Instant::now();
            if let Err(e) = self.guest.resume() {
                // Written but not resumed: the registry must still record the
                // writes, so report them done and let the caller commit.
                tracing::error!(error = %e, "resuming the guest after the write failed");
            }
            timings.resume_us = us(t3);
            timings.downtime_us = us(t0);
            timings.total_downtime_us += timings.downtime_us;
            return Ok(());
        }
        Err(fail(last.unwrap_or_else(|| Failure::new(Stage::Check, Cause::CodeBusy, None, "no attempt made"))))
    }
}

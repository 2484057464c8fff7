//! The safety check as a pause runs it, full or incremental
//! ([`crate::model::Incremental`], `TxnConfig::incremental`).
//!
//! Before each pause, with the guest running, [`Patcher::pre_check`] reads
//! the task list (each task with the scheduler's evidence) and unwinds every
//! switched-out task ([`crate::safety::incremental::pre_check`]). Under the
//! pause, [`Patcher::pause_check`] checks the vCPUs, the CPU stacks and
//! every task the evidence does not prove unchanged
//! ([`crate::safety::incremental::split`]); in `compare` mode it runs the
//! full check on the same stopped guest too and refuses
//! `incremental_mismatch` when their conflicts differ, or when the list the
//! kind built from the pre-check's and what it said changed
//! ([`GuestTasks::changed`], the test guest's change ring) differs from a
//! whole read. A pre-check that
//! cannot be made (the list caught mid-update, a torn read, no evidence)
//! only means that pause checks everything.

use super::result::{Cause, Conflict, Failure, Stage};
use super::Patcher;
use crate::model::backend::{Backend, VcpuState};
use crate::model::{CheckRange, CheckSummary, GuestTasks, Incremental, IncrementalSummary, TargetError};
use crate::os::linux::unwind::OrcUnwinder;
use crate::safety::incremental::{self, PreCheck};
use crate::safety::{self, CheckInput};

/// Reads of the task list a pre-check tries while the list is caught mid-update.
const PRE_CHECK_READS: u32 = 8;

/// The pre-check of one pause, or why there is none.
pub(crate) type Pre = Result<PreCheck, String>;

impl<B: Backend> Patcher<'_, B> {
    /// With the guest running: the task list and the verdicts of the tasks
    /// found clean; `None` when the mode is off.
    pub(crate) fn pre_check(&mut self, unwinder: Option<&OrcUnwinder>, ranges: &[CheckRange]) -> Option<Pre> {
        if self.cfg.incremental == Incremental::Off {
            return None;
        }
        let target = self.target;
        // No vCPU state with the guest running: a task is on a CPU only by
        // its own flag then, and the pause tells again.
        // A list caught mid-update (its seq moved: likely with thousands of
        // tasks and the guest running) is read again, a few times.
        let mut read = target.tasks(&mut self.guest, &[], self.task_hint);
        for _ in 1..PRE_CHECK_READS {
            if !matches!(read, Err(TargetError::Inconsistent(_))) {
                break;
            }
            std::thread::yield_now();
            read = target.tasks(&mut self.guest, &[], self.task_hint);
        }
        let tasks = match read {
            Ok(t) => t,
            Err(e) => return Some(Err(format!("no pre-check: the task list read with the guest running failed ({}): {e}", e.cause()))),
        };
        let scans = target.owner_only_stacks();
        let pre = incremental::pre_check(self.cfg.check, unwinder, scans, &mut self.guest, target.symbols(), &tasks.list, ranges);
        tracing::debug!(clean = pre.len(), tasks = tasks.list.tasks.len(), us = pre.took_us, "pre-check with the guest running");
        self.recycle = Some(tasks);
        Some(Ok(pre))
    }

    /// Under the pause: the check the configuration asks for, its conflicts
    /// and summary (with the incremental counts).
    pub(crate) fn pause_check(
        &mut self,
        unwinder: Option<&OrcUnwinder>,
        vcpus: &[VcpuState],
        tasks: &GuestTasks,
        ranges: &[CheckRange],
        pre: Option<&Pre>,
    ) -> Result<(Vec<Conflict>, CheckSummary), Failure> {
        let symbols = self.target.symbols();
        let mode = self.cfg.check;
        let fail = |e: crate::model::TargetError| Failure::from_err(Stage::Check, Cause::Unexpected, Some(e.cause()), &e);
        let full_input = CheckInput { vcpus, vcpu_cpus: &tasks.vcpu_cpus, tasks: &tasks.list };
        let Some(pre) = pre else {
            return safety::check(mode, unwinder, &mut self.guest, symbols, full_input, ranges).map_err(fail);
        };
        let all = tasks.list.tasks.len();
        let mut inc = IncrementalSummary { mode: self.cfg.incremental, rechecked: all, ..IncrementalSummary::default() };
        let (conflicts, mut summary) = match pre {
            Err(note) => {
                inc.note = Some(note.clone());
                safety::check(mode, unwinder, &mut self.guest, symbols, full_input, ranges).map_err(fail)?
            }
            Ok(pre) => {
                // Only what changed since the pre-check was read again: split
                // touching only that (the same answer as the whole split).
                let fast = tasks.changed.as_deref().and_then(|ch| incremental::split_changed(pre, &tasks.list, ch, vcpus));
                inc.records_read = fast.as_ref().and(tasks.changed.as_ref()).map(Vec::len);
                inc.reread = tasks.reread;
                let (rest, reused) = match fast {
                    Some(r) => r,
                    None => incremental::split(pre, &tasks.list, vcpus),
                };
                inc.pre_checked = pre.len();
                inc.pre_check_us = pre.took_us;
                inc.reused = reused;
                inc.rechecked = all - reused;
                let input = CheckInput { vcpus, vcpu_cpus: &tasks.vcpu_cpus, tasks: &rest };
                let (c, s) = safety::check(mode, unwinder, &mut self.guest, symbols, input, ranges).map_err(fail)?;
                if self.cfg.incremental == Incremental::Compare {
                    // A list built from the pre-check's and what the kind said
                    // changed must be what a whole read gives now, in all the
                    // check reads (`TaskInfo::same_for_check`).
                    let whole;
                    let full_input = if tasks.changed.is_some() {
                        whole = self.target.tasks(&mut self.guest, vcpus, self.task_hint).map_err(fail)?;
                        if !whole.list.same_for_check(&tasks.list) {
                            let why = format!("the task list re-read where the kind said it changed ({} records) differs from a whole read", inc.records_read.unwrap_or(0));
                            tracing::error!(%why, "incremental check mismatch");
                            return Err(Failure::new(Stage::Check, Cause::Unexpected, "incremental_mismatch", why));
                        }
                        CheckInput { vcpus, vcpu_cpus: &whole.vcpu_cpus, tasks: &whole.list }
                    } else {
                        full_input
                    };
                    let (full, full_sum) = safety::check(mode, unwinder, &mut self.guest, symbols, full_input, ranges).map_err(fail)?;
                    if let Some(diff) = incremental::difference(&full, &c) {
                        let why = format!("the incremental check ({reused} of {all} tasks reused) and the full check disagree: {diff}");
                        tracing::error!(%why, "incremental check mismatch");
                        let mut f = Failure::new(Stage::Check, Cause::Unexpected, "incremental_mismatch", why);
                        f.conflicts = full;
                        return Err(f);
                    }
                    (full, full_sum)
                } else {
                    (c, s)
                }
            }
        };
        summary.incremental = Some(inc);
        Ok((conflicts, summary))
    }
}

//! Reverting a patch: the same transaction in reverse. Only the top of each
//! function's stack can go (out of order is refused, naming the patch above),
//! and nothing may run in the new code nor in the old functions while the
//! original bytes go back.

use std::time::Instant;

use super::result::{Cause, Failure, Stage, Timings, TxnReport};
use super::Patcher;
use crate::arena::registry::{CheckRange, Intent, IntentOp, PatchState, SiteWrite};
use crate::model::backend::Backend;

impl<B: Backend> Patcher<'_, B> {
    fn try_revert(&mut self, id: &str, timings: &mut Timings, t0: Instant) -> Result<Option<String>, Failure> {
        let prep = |cause, reason: &'static str, msg: String| Failure::new(Stage::Prepare, cause, reason, msg);
        self.check_arena(Stage::Prepare)?;
        self.recover_quietly(Stage::Prepare)?;
        let Some(mut reg) = self.load_registry(Stage::Prepare)? else {
            return Err(prep(Cause::NotApplied, "not_applied", format!("no patch is applied (no registry in the arena); {id} is not applied")));
        };
        if reg.intent.is_some() {
            return Err(Failure::new(Stage::Recover, Cause::CodeBusy, "recovery_pending", "an interrupted transaction could not be completed yet"));
        }
        // A module patched then unloaded (or loaded again): nothing to write back.
        if let Some((_, why)) = self.drop_vanished(&mut reg, Stage::Prepare)?.into_iter().find(|(d, _)| d == id) {
            let what = if why == "module_unloaded" { "was unloaded" } else { "was unloaded and loaded again" };
            return Err(prep(Cause::ModuleChanged, why, format!("patch {id}: its module {what} since it was applied; nothing was written, the patch's record was dropped")));
        }
        let Some(p) = reg.patch(id).cloned() else {
            if let Some(h) = reg.history.iter().find(|h| h.id == id || h.name == id) {
                let by = h.by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default();
                return Err(prep(Cause::AlreadyReversed, "already_reversed", format!("patch {} ({}) was already {}{by}", h.name, h.id, h.how)));
            }
            return Err(prep(Cause::NotApplied, "not_applied", format!("patch {id} is not applied")));
        };
        if p.state != PatchState::Applied {
            return Err(prep(Cause::Unexpected, "not_applied", format!("patch {id} is still being loaded")));
        }
        let mut writes = Vec::new();
        let mut ranges = vec![CheckRange { start: p.code.start, end: p.code.start + p.code.len, label: format!("patch {}", p.name) }];
        for f in &p.funcs {
            if let Some((top, _)) = reg.top_at(f.site.addr) {
                if top.id != p.id {
                    return Err(prep(
                        Cause::OutOfOrder,
                        "out_of_order",
                        format!("patch {} is stacked on {} ({}): revert {} first", top.name, p.name, f.name, top.name),
                    ));
                }
            }
            writes.push(SiteWrite { addr: f.site.addr, before: f.site.new.clone(), after: f.site.orig.clone() });
            ranges.push(CheckRange { start: f.old_addr, end: f.old_addr + f.old_size, label: f.name.clone() });
        }
        let txn = reg.take_seq();
        reg.intent = Some(Intent { txn, op: IntentOp::Revert, patch: p.id.clone(), superseded: vec![], writes: writes.clone(), ranges: ranges.clone() });
        self.save_registry(&reg, Stage::Prepare)?;
        timings.prepare_us = t0.elapsed().as_micros() as u64;
        self.pause_and_settle(&mut reg, &ranges, &writes, timings)?;
        Ok(Some(p.name))
    }

    /// Reverts the patch with this id (or name).
    pub fn revert(&mut self, id_or_name: &str) -> TxnReport {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        // Names are accepted too: map a name to the applied patch's id.
        let id = match self.load_registry(Stage::Prepare) {
            Ok(Some(reg)) => reg.patches.iter().find(|p| p.name == id_or_name).map_or_else(|| id_or_name.to_owned(), |p| p.id.clone()),
            _ => id_or_name.to_owned(),
        };
        let r = self.try_revert(&id, &mut timings, t0);
        timings.total_us = t0.elapsed().as_micros() as u64;
        let name = r.as_ref().ok().cloned().flatten();
        let report = self.report("revert", Some(id.clone()), name, timings, r.map(|_| Vec::new()));
        tracing::info!(patch = %id_or_name, cause = report.cause.name(), attempts = timings.attempts, downtime_us = timings.downtime_us, "revert");
        report
    }
}

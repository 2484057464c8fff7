//! Applying a patch. Prepare (guest running, [`super::prepare`]): identify
//! (target kind, build-id), match (run-pre digest of each target function,
//! with the bytes of patches already applied taken out), load (layout, arena
//! placement, relocations), choose the jump sites; then write the new code
//! into the arena and record the intent. Then the pauses ([`super::pause`]),
//! then commit.
//!
//! A cumulative patch replaces every applied patch in the same pause: its
//! functions get its jumps, every other function touched by an earlier patch
//! gets its original bytes back.

use std::time::Instant;

use super::prepare::Prepared;
use super::result::{chain, Cause, Failure, Stage, Timings, TxnReport};
use super::orc::fit_rows;
use super::Patcher;
use crate::arena::registry::{Intent, Registry};
use crate::model::backend::Backend;
use crate::patch::PatchFile;

impl<B: Backend> Patcher<'_, B> {
    fn write_arena(&mut self, reg: &Registry, (addr, bytes): &(u64, Vec<u8>)) -> Result<(), Failure> {
        if bytes.is_empty() {
            return Ok(());
        }
        let pa = reg.arena.phys_of(*addr).ok_or_else(|| Failure::new(Stage::Prepare, Cause::Unexpected, "arena", format!("{addr:#x} is outside the arena")))?;
        self.guest.write_phys(pa, bytes).map_err(|e| Failure::from_err(Stage::Prepare, Cause::Unexpected, Some(e.cause()), &e))
    }

    /// Writes the linked code and data into the arena (nothing points there yet).
    fn write_code(&mut self, reg: &Registry, prep: &Prepared) -> Result<(), Failure> {
        self.write_arena(reg, &prep.code)?;
        self.write_arena(reg, &prep.data)
    }

    /// Adds the patch (loading) and the intent to the registry and saves it:
    /// the intent is in the guest before any text is touched. Returns the intent.
    fn save_intent(&mut self, reg: &mut Registry, mut prep: Prepared) -> Result<Intent, Failure> {
        prep.record.seq = reg.take_seq();
        prep.intent.txn = reg.take_seq();
        let intent = prep.intent.clone();
        reg.patches.push(prep.record);
        reg.intent = Some(prep.intent);
        for note in fit_rows(reg) {
            tracing::warn!("{note}");
            self.notes.push(note);
        }
        self.save_registry(reg, Stage::Prepare)?;
        Ok(intent)
    }

    fn try_apply(&mut self, patch: &PatchFile, timings: &mut Timings, t0: Instant) -> Result<Vec<String>, Failure> {
        if !self.target.is_up(&mut self.guest).unwrap_or(false) {
            return Err(Failure::new(Stage::Prepare, Cause::NotUp, "not_up", "the guest kernel is not up"));
        }
        self.check_arena(Stage::Prepare)?;
        self.recover_quietly(Stage::Prepare)?;
        let mut reg = self.registry(Stage::Prepare)?;
        if reg.intent.is_some() {
            return Err(Failure::new(Stage::Recover, Cause::CodeBusy, "recovery_pending", "an interrupted transaction could not be completed yet"));
        }
        self.drop_vanished(&mut reg, Stage::Prepare)?;
        let prep = self.prepare_apply(patch, &reg)?;
        self.write_code(&reg, &prep)?;
        let intent = self.save_intent(&mut reg, prep)?;
        timings.prepare_us = t0.elapsed().as_micros() as u64;
        self.pause_and_settle(&mut reg, &intent.ranges, &intent.writes, timings)?;
        Ok(intent.superseded)
    }

    /// Applies a patch: prepare with the guest running, then pause, check,
    /// write, resume (retrying on conflicts).
    pub fn apply(&mut self, patch: &PatchFile) -> TxnReport {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        let r = self.try_apply(patch, &mut timings, t0);
        if timings.prepare_us == 0 {
            timings.prepare_us = t0.elapsed().as_micros() as u64;
        }
        timings.total_us = t0.elapsed().as_micros() as u64;
        let (id, name) = (Some(patch.manifest.id.clone()), Some(patch.manifest.name.clone()));
        let report = self.report("apply", id, name, timings, r);
        tracing::info!(patch = %patch.manifest.name, cause = report.cause.name(), attempts = timings.attempts, downtime_us = timings.downtime_us, "apply");
        report
    }

    /// Parses a patch file's bytes and applies it; an unusable file is a
    /// `bad_patch` report with the format's reason (`truncated`, `not_elf`, …).
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> TxnReport {
        match PatchFile::parse(bytes) {
            Ok(p) => self.apply(&p),
            Err(e) => {
                let f = Failure::new(Stage::Prepare, Cause::from(&e), Some(e.reason()), chain(&e));
                self.report("apply", None, None, Timings::default(), Err(f))
            }
        }
    }
}

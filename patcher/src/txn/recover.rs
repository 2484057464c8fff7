//! Completing or rolling back a transaction a dead process left behind, and
//! the status read from the guest's registry.
//!
//! The intent lists every text write with its before and after bytes. The
//! text decides: all "after" → the writes were done, commit; all "before" →
//! nothing was done, roll back; a mix → put the written sites back (inside a
//! pause, with the safety check over the intent's ranges), then roll back.
//! Anything else in the text means someone else changed it: `unexpected`,
//! and nothing is written.

use std::time::Instant;

use serde::Serialize;

use super::result::{Cause, Failure, Stage, Timings, TxnReport};
use super::Patcher;
use crate::arena::registry::{HistoryEntry, IntentOp, PatchState, Registry, SiteWrite, Span};
use crate::arena::ArenaInfo;
use crate::model::backend::Backend;
use crate::model::mem::KernelMemory;

/// What the kernel text says about an intent's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextState {
    /// No write done.
    NotStarted,
    /// Every write done.
    Complete,
    /// Some done, some not.
    Partial,
    /// Bytes that are neither before nor after.
    Foreign,
}

/// One replaced function, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FuncStatus {
    /// Old function.
    pub name: String,
    /// New function.
    pub new_name: String,
    /// Jump site.
    pub site: u64,
    /// True when this patch's jump is what the text holds at the site.
    pub active: bool,
}

/// One patch, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchStatus {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// State.
    pub state: PatchState,
    /// Cumulative.
    pub cumulative: bool,
    /// Code in the arena.
    pub code: Span,
    /// Data in the arena.
    pub data: Span,
    /// Functions.
    pub funcs: Vec<FuncStatus>,
}

/// The interrupted transaction, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntentStatus {
    /// Transaction number.
    pub txn: u64,
    /// Operation.
    pub op: IntentOp,
    /// Patch.
    pub patch: String,
    /// What the text says.
    pub text: TextState,
}

/// Everything the guest's registry says, checked against the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The arena, when a registry exists.
    pub arena: Option<ArenaInfo>,
    /// Applied (and loading) patches, bottom first.
    pub patches: Vec<PatchStatus>,
    /// Recently reverted and replaced patches.
    pub history: Vec<HistoryEntry>,
    /// A transaction left behind by a process that died.
    pub intent: Option<IntentStatus>,
}

impl Status {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl<B: Backend> Patcher<'_, B> {
    fn text_state(&mut self, writes: &[SiteWrite]) -> Result<(TextState, Vec<bool>), Failure> {
        let mut done = Vec::new();
        let mut foreign = false;
        for w in writes {
            let now = self.guest.read_vec(w.addr, w.after.len()).map_err(|e| Failure::from_err(Stage::Recover, Cause::Unexpected, Some(e.cause()), &e))?;
            if now == w.after {
                done.push(true);
            } else {
                foreign |= now != w.before;
                done.push(false);
            }
        }
        let state = if foreign {
            TextState::Foreign
        } else if done.iter().all(|&d| d) {
            TextState::Complete
        } else if done.iter().any(|&d| d) {
            TextState::Partial
        } else {
            TextState::NotStarted
        };
        Ok((state, done))
    }

    /// Completes or rolls back an interrupted transaction; `Ok(false)` when there was none.
    fn recover_registry(&mut self, reg: &mut Registry, timings: &mut Timings) -> Result<bool, Failure> {
        let Some(intent) = reg.intent.clone() else { return Ok(false) };
        let (state, done) = self.text_state(&intent.writes)?;
        tracing::warn!(txn = intent.txn, op = ?intent.op, patch = %intent.patch, text = ?state, "recovering an interrupted transaction");
        match state {
            TextState::Complete => reg.commit_intent(),
            TextState::NotStarted => reg.rollback_intent(),
            TextState::Partial => {
                let undo: Vec<SiteWrite> = intent
                    .writes
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| **d)
                    .map(|(w, _)| SiteWrite { addr: w.addr, before: w.after.clone(), after: w.before.clone() })
                    .collect();
                self.run_pauses(reg, &intent.ranges, &undo, timings).map_err(|pf| {
                    let mut f = pf.failure;
                    f.stage = Stage::Recover;
                    f
                })?;
                reg.rollback_intent();
            }
            TextState::Foreign => {
                return Err(Failure::new(Stage::Recover, Cause::Unexpected, "text_changed", "an interrupted transaction's sites hold bytes it never wrote; not touching them"));
            }
        }
        self.save_registry(reg, Stage::Recover)?;
        Ok(true)
    }

    /// Recovery at the start of apply and revert.
    pub(crate) fn recover_quietly(&mut self, _stage: Stage) -> Result<(), Failure> {
        if let Some(mut reg) = self.load_registry(Stage::Recover)? {
            let mut t = Timings::default();
            self.recover_registry(&mut reg, &mut t)?;
        }
        Ok(())
    }

    /// Completes or rolls back whatever a dead vsplice process left half-done.
    pub fn recover(&mut self) -> TxnReport {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        let r = match self.check_arena(Stage::Recover).and_then(|()| self.load_registry(Stage::Recover)) {
            Ok(Some(mut reg)) => self.recover_registry(&mut reg, &mut timings).map(|_| Vec::new()),
            Ok(None) => Ok(Vec::new()),
            Err(f) => Err(f),
        };
        timings.total_us = t0.elapsed().as_micros() as u64;
        self.report("recover", None, None, timings, r)
    }

    /// The registry as the guest holds it, checked against the text.
    pub fn status(&mut self) -> Result<Status, Failure> {
        let Some(reg) = self.load_registry(Stage::Prepare)? else {
            return Ok(Status { arena: None, patches: Vec::new(), history: Vec::new(), intent: None });
        };
        let mut patches = Vec::new();
        for p in &reg.patches {
            let mut funcs = Vec::new();
            for f in &p.funcs {
                let now = self.guest.read_vec(f.site.addr, f.site.new.len()).ok();
                funcs.push(FuncStatus { name: f.name.clone(), new_name: f.new_name.clone(), site: f.site.addr, active: now.as_deref() == Some(&f.site.new[..]) });
            }
            patches.push(PatchStatus { id: p.id.clone(), name: p.name.clone(), state: p.state, cumulative: p.cumulative, code: p.code, data: p.data, funcs });
        }
        let intent = match &reg.intent {
            Some(i) => Some(IntentStatus { txn: i.txn, op: i.op, patch: i.patch.clone(), text: self.text_state(&i.writes)?.0 }),
            None => None,
        };
        Ok(Status { arena: Some(reg.arena), patches, history: reg.history.clone(), intent })
    }
}

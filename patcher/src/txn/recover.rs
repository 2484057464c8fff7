//! Completing or rolling back a transaction a dead process left behind, and
//! the status read from the guest's registry.
//!
//! The intent lists every text write with its before and after bytes. The
//! text decides: all "after" → the writes were done, commit; all "before" →
//! nothing was done, roll back; a mix → put the written sites back (inside a
//! pause, with the safety check over the intent's ranges), then roll back.
//! A site that crosses a 4 KiB page is written in two writes (one per
//! page), so a death between them leaves it torn: the first bytes of one
//! side and the rest of the other ([`torn_at`]). The intent's before and
//! after bytes are both halves, so a torn site is recognised, counted as
//! partly written (`status` shows `partial`, the guest is kept stopped) and
//! put back to its before bytes with the rest.
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
    /// The module the function is in (absent: vmlinux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
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
    /// The manifest's description, when the registry kept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The manifest's CVE ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    /// The manifest's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
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
    /// Patches a `vsplice attach` daemon holds to apply when their module
    /// loads (not in the guest's registry: the daemon fills this in;
    /// omitted when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingStatus>,
}

/// A patch held until its module loads (`when_loaded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingStatus {
    /// The patch's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The modules it names.
    pub modules: Vec<String>,
    /// Always `pending`.
    pub state: &'static str,
}

impl Status {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Where a site's bytes `now` are torn between `a` and `b`: `Some(k)` when
/// `now` is `a[..k] ++ b[k..]` for some `0 < k < len` (a write of one side
/// over the other that stopped after its first `k` bytes).
pub(crate) fn torn_at(now: &[u8], a: &[u8], b: &[u8]) -> Option<usize> {
    if now.len() != a.len() || now.len() != b.len() || now == a || now == b {
        return None;
    }
    let k = now.iter().zip(a).take_while(|(n, x)| n == x).count();
    (k > 0 && now[k..] == b[k..]).then_some(k)
}

/// What one site of an intent holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SiteNow {
    /// Its before bytes.
    Before,
    /// Its after bytes.
    After,
    /// Torn between the two (these bytes).
    Torn(Vec<u8>),
    /// Neither.
    Foreign,
}

impl<B: Backend> Patcher<'_, B> {
    fn site_now(&mut self, w: &SiteWrite) -> Result<SiteNow, Failure> {
        let now = self.guest.read_vec(w.addr, w.after.len()).map_err(|e| Failure::from_err(Stage::Recover, Cause::Unexpected, Some(e.cause()), &e))?;
        Ok(if now == w.after {
            SiteNow::After
        } else if now == w.before {
            SiteNow::Before
        } else if torn_at(&now, &w.after, &w.before).is_some() || torn_at(&now, &w.before, &w.after).is_some() {
            tracing::warn!(site = format_args!("{:#x}", w.addr), "a jump site is torn between its before and after bytes");
            SiteNow::Torn(now)
        } else {
            SiteNow::Foreign
        })
    }

    fn text_state(&mut self, writes: &[SiteWrite]) -> Result<(TextState, Vec<SiteNow>), Failure> {
        let mut sites = Vec::with_capacity(writes.len());
        for w in writes {
            sites.push(self.site_now(w)?);
        }
        let state = if sites.contains(&SiteNow::Foreign) {
            TextState::Foreign
        } else if sites.iter().all(|s| *s == SiteNow::After) {
            TextState::Complete
        } else if sites.iter().all(|s| *s == SiteNow::Before) {
            TextState::NotStarted
        } else {
            TextState::Partial
        };
        Ok((state, sites))
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
                // Written and torn sites go back to their before bytes.
                let undo: Vec<SiteWrite> = intent
                    .writes
                    .iter()
                    .zip(&done)
                    .filter_map(|(w, now)| match now {
                        SiteNow::After => Some(SiteWrite { addr: w.addr, before: w.after.clone(), after: w.before.clone() }),
                        SiteNow::Torn(bytes) => Some(SiteWrite { addr: w.addr, before: bytes.clone(), after: w.before.clone() }),
                        SiteNow::Before | SiteNow::Foreign => None,
                    })
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
            return Ok(Status { arena: None, patches: Vec::new(), history: Vec::new(), intent: None, pending: Vec::new() });
        };
        let mut patches = Vec::new();
        for p in &reg.patches {
            let mut funcs = Vec::new();
            for f in &p.funcs {
                let now = self.guest.read_vec(f.site.addr, f.site.new.len()).ok();
                funcs.push(FuncStatus {
                    name: f.name.clone(),
                    new_name: f.new_name.clone(),
                    site: f.site.addr,
                    active: now.as_deref() == Some(&f.site.new[..]),
                    module: f.module.as_ref().map(|m| m.name.clone()),
                });
            }
            let info = p.info.clone().unwrap_or_default();
            patches.push(PatchStatus {
                id: p.id.clone(),
                name: p.name.clone(),
                state: p.state,
                cumulative: p.cumulative,
                code: p.code,
                data: p.data,
                funcs,
                description: info.description,
                cves: info.cves,
                version: info.version,
            });
        }
        let intent = match &reg.intent {
            Some(i) => Some(IntentStatus { txn: i.txn, op: i.op, patch: i.patch.clone(), text: self.text_state(&i.writes)?.0 }),
            None => None,
        };
        Ok(Status { arena: Some(reg.arena), patches, history: reg.history.clone(), intent, pending: Vec::new() })
    }
}

//! The registry: what is applied, kept in guest memory at the start of the
//! arena so that any vsplice process can list, revert and recover.
//!
//! It holds the arena's mapping, each patch (id, name, state, the functions
//! it replaces with their jump sites' original and new bytes, the arena
//! ranges it occupies, the ORC rows of its code) in the order they were
//! applied (which is also the per-function stacking order), a short history
//! of reverted and replaced patches, and the INTENT of the transaction in
//! flight: written before any kernel text is touched, cleared when the
//! transaction is committed or rolled back.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::patch_orc::PatchOrc;
use super::ArenaInfo;
use crate::patch::manifest::PatchInfo;
pub use crate::model::CheckRange;

/// How many reverted / replaced patches the history keeps.
pub const HISTORY_LEN: usize = 32;

/// State of a patch in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchState {
    /// Code is in the arena, the transaction that applies it is in flight.
    Loading,
    /// Its jumps are in the kernel text.
    Applied,
}

/// A jump site: where, what was there before this patch, what this patch wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Kernel-virtual address of the first overwritten byte.
    pub addr: u64,
    /// Bytes before this patch (the original, or the jump of the patch below).
    pub orig: Vec<u8>,
    /// Bytes this patch wrote (`jmp rel32` + NOP fill).
    pub new: Vec<u8>,
}

/// One replaced function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuncRecord {
    /// Name of the old function.
    pub name: String,
    /// Its address.
    pub old_addr: u64,
    /// Its size.
    pub old_size: u64,
    /// Name of the new function.
    pub new_name: String,
    /// Address of the new function (in the arena).
    pub new_addr: u64,
    /// The jump site.
    pub site: SiteRecord,
    /// The module the old function is in (absent: vmlinux), as it was
    /// loaded when the patch was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<crate::model::ModuleIdentity>,
}

/// Start and length of an arena range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Start (kernel-virtual).
    pub start: u64,
    /// Length.
    pub len: u64,
}

impl Span {
    /// As a range.
    pub fn range(&self) -> Range<u64> {
        self.start..self.start + self.len
    }
}

/// One patch in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRecord {
    /// Patch id.
    pub id: String,
    /// Patch name.
    pub name: String,
    /// State.
    pub state: PatchState,
    /// Order of application (registry sequence number).
    pub seq: u64,
    /// Cumulative patch.
    pub cumulative: bool,
    /// Code part in the arena.
    pub code: Span,
    /// Data part in the arena.
    pub data: Span,
    /// Replaced functions.
    pub funcs: Vec<FuncRecord>,
    /// ORC rows of its code (absent: none, or more than the registry keeps,
    /// or a registry written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orc: Option<PatchOrc>,
    /// What operators look for, from the manifest (absent: the patch has
    /// none, the registry had no room, or it was written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<PatchInfo>,
}

/// A reverted or replaced patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Patch id.
    pub id: String,
    /// Patch name.
    pub name: String,
    /// `reversed` or `replaced`.
    pub how: String,
    /// The cumulative patch that replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// What a transaction is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentOp {
    /// Applying `patch`.
    Apply,
    /// Applying the cumulative `patch`, replacing `superseded`.
    Replace,
    /// Reverting `patch`.
    Revert,
}

/// One text write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteWrite {
    /// Kernel-virtual address.
    pub addr: u64,
    /// Bytes there before the transaction.
    pub before: Vec<u8>,
    /// Bytes there after it.
    pub after: Vec<u8>,
}


/// The transaction in flight, recorded before kernel text is touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Transaction number.
    pub txn: u64,
    /// What it does.
    pub op: IntentOp,
    /// The patch applied or reverted.
    pub patch: String,
    /// Patches a cumulative patch replaces.
    #[serde(default)]
    pub superseded: Vec<String>,
    /// Every text write, with before and after bytes.
    pub writes: Vec<SiteWrite>,
    /// Ranges the safety check covers (also for completing a half-done write).
    pub ranges: Vec<CheckRange>,
}

/// The whole registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// The arena and its mapping.
    pub arena: ArenaInfo,
    /// Build-id of the kernel the registry belongs to.
    pub build_id: Option<String>,
    /// Next sequence number (patch order, transaction numbers).
    pub next_seq: u64,
    /// Patches in order of application.
    pub patches: Vec<PatchRecord>,
    /// Recently reverted or replaced patches.
    pub history: Vec<HistoryEntry>,
    /// The transaction in flight.
    pub intent: Option<Intent>,
}

impl Registry {
    /// An empty registry for an arena.
    pub fn new(arena: ArenaInfo, build_id: Option<String>) -> Self {
        Self { arena, build_id, next_seq: 1, patches: Vec::new(), history: Vec::new(), intent: None }
    }

    /// Next sequence number.
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// The patch with this id.
    pub fn patch(&self, id: &str) -> Option<&PatchRecord> {
        self.patches.iter().find(|p| p.id == id)
    }

    /// Applied patches, bottom first.
    pub fn applied(&self) -> impl Iterator<Item = &PatchRecord> {
        self.patches.iter().filter(|p| p.state == PatchState::Applied)
    }

    /// Arena ranges in use (applied and loading patches).
    pub fn used(&self) -> Vec<Range<u64>> {
        self.patches.iter().flat_map(|p| [p.code.range(), p.data.range()]).filter(|r| !r.is_empty()).collect()
    }

    /// The topmost applied record for the jump site at `addr`, and its patch.
    pub fn top_at(&self, addr: u64) -> Option<(&PatchRecord, &FuncRecord)> {
        self.applied().filter_map(|p| p.funcs.iter().find(|f| f.site.addr == addr).map(|f| (p, f))).last()
    }

    /// The bottommost applied record for `addr` (its `orig` is the kernel's own bytes).
    pub fn bottom_at(&self, addr: u64) -> Option<&FuncRecord> {
        self.applied().find_map(|p| p.funcs.iter().find(|f| f.site.addr == addr))
    }

    /// Records a reverted or replaced patch in the history.
    pub fn remember(&mut self, id: &str, name: &str, how: &str, by: Option<String>) {
        self.history.retain(|h| h.id != id);
        self.history.push(HistoryEntry { id: id.to_owned(), name: name.to_owned(), how: how.to_owned(), by });
        if self.history.len() > HISTORY_LEN {
            self.history.remove(0);
        }
    }

    /// Makes the intent's effect permanent in the registry (its writes are all done).
    pub fn commit_intent(&mut self) {
        let Some(intent) = self.intent.take() else { return };
        match intent.op {
            IntentOp::Apply | IntentOp::Replace => {
                for id in &intent.superseded {
                    if let Some(i) = self.patches.iter().position(|p| &p.id == id) {
                        let p = self.patches.remove(i);
                        self.remember(&p.id, &p.name, "replaced", Some(intent.patch.clone()));
                    }
                }
                if let Some(p) = self.patches.iter_mut().find(|p| p.id == intent.patch) {
                    p.state = PatchState::Applied;
                }
            }
            IntentOp::Revert => {
                if let Some(i) = self.patches.iter().position(|p| p.id == intent.patch) {
                    let p = self.patches.remove(i);
                    self.remember(&p.id, &p.name, "reversed", None);
                }
            }
        }
    }

    /// Forgets the intent as if the transaction never started (none of its writes are done).
    pub fn rollback_intent(&mut self) {
        let Some(intent) = self.intent.take() else { return };
        if matches!(intent.op, IntentOp::Apply | IntentOp::Replace) {
            self.patches.retain(|p| !(p.id == intent.patch && p.state == PatchState::Loading));
        }
    }
}

//! What every transaction reports: the stage it reached, a stable cause and
//! reason, the conflicts that made it give up, and its timings. All of it is
//! serde-serializable for the CLI's JSON.

use serde::Serialize;

pub use crate::model::chain;
pub use crate::model::Conflict;

/// Stable outcome of a transaction (Ksplice's abort causes and a few more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Done.
    Ok,
    /// Build-id or run-pre mismatch: the patch is for another kernel.
    NoMatch,
    /// A symbol the patch needs is not in the kernel.
    FailedToFind,
    /// Some task kept running or sleeping in the code to be replaced.
    CodeBusy,
    /// The vCPUs did not stop in time.
    PauseTimeout,
    /// Reverting a patch that was already reverted (or replaced).
    AlreadyReversed,
    /// Applying a patch that is already applied.
    AlreadyApplied,
    /// Reverting a patch the registry does not know.
    NotApplied,
    /// Reverting a patch that another patch is stacked on.
    OutOfOrder,
    /// The patch file or object is unusable.
    BadPatch,
    /// The object has a section the loader refuses.
    UnsupportedSection,
    /// No room left in the arena.
    ArenaFull,
    /// The guest kernel is not up (or the arena is missing).
    NotUp,
    /// The arena is (partly) guest RAM, or not marked reserved, in the
    /// kernel's own memory map: nothing was written.
    ArenaInUse,
    /// The running kernel is one vsplice cannot patch at all (no BTF, a
    /// symbol vsplice needs missing, or a patch for another kind of kernel).
    UnsupportedTarget,
    /// Trusted keys are configured and the patch file is not signed.
    Unsigned,
    /// The patch file's signature does not verify (changed after signing).
    BadSignature,
    /// The patch file is signed by a key that is not trusted.
    UntrustedKey,
    /// The patch is for a module that is not loaded (or not live) in the guest.
    ModuleNotLoaded,
    /// The module a patch was applied to was unloaded (or loaded again)
    /// since: nothing was written, the patch's record was dropped.
    ModuleChanged,
    /// Anything else (I/O, backend, a registry that disagrees with the text).
    Unexpected,
}

impl Cause {
    /// The cause's stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NoMatch => "no_match",
            Self::FailedToFind => "failed_to_find",
            Self::CodeBusy => "code_busy",
            Self::PauseTimeout => "pause_timeout",
            Self::AlreadyReversed => "already_reversed",
            Self::AlreadyApplied => "already_applied",
            Self::NotApplied => "not_applied",
            Self::OutOfOrder => "out_of_order",
            Self::BadPatch => "bad_patch",
            Self::UnsupportedSection => "unsupported_section",
            Self::ArenaFull => "arena_full",
            Self::NotUp => "not_up",
            Self::ArenaInUse => "arena_in_use",
            Self::UnsupportedTarget => "unsupported_target",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::UntrustedKey => "untrusted_key",
            Self::ModuleNotLoaded => "module_not_loaded",
            Self::ModuleChanged => "module_changed",
            Self::Unexpected => "unexpected",
        }
    }
}

/// How far a transaction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the patch, matching, loading, placing (guest running).
    Prepare,
    /// Stopping the vCPUs.
    Pause,
    /// The stack safety check.
    Check,
    /// Writing the jumps.
    Write,
    /// Recording the result in the registry.
    Commit,
    /// Completing or rolling back an interrupted transaction.
    Recover,
    /// Finished.
    Done,
}

/// Timings in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Preparation with the guest running.
    pub prepare_us: u64,
    /// Stopping every vCPU (last attempt).
    pub pause_us: u64,
    /// The safety check (last attempt).
    pub check_us: u64,
    /// Writing the jumps (and the arena mapping the first time).
    pub write_us: u64,
    /// Resuming every vCPU (last attempt).
    pub resume_us: u64,
    /// vCPUs out of the guest, last attempt (stop requested .. resumed):
    /// pause + check + write + resume.
    pub downtime_us: u64,
    /// vCPUs out of the guest, all attempts together.
    pub total_downtime_us: u64,
    /// Whole transaction.
    pub total_us: u64,
    /// Pauses taken.
    pub attempts: u32,
}

/// The result of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxnReport {
    /// `apply`, `revert` or `recover`.
    pub op: &'static str,
    /// Patch id.
    pub patch_id: Option<String>,
    /// Patch name.
    pub patch_name: Option<String>,
    /// Stage reached (where it stopped, or `done`).
    pub stage: Stage,
    /// Stable cause.
    pub cause: Cause,
    /// Stable finer reason (`truncated`, `ambiguous_symbol`, `target_too_small`, …).
    pub reason: Option<String>,
    /// Human explanation.
    pub message: String,
    /// Conflicts found by the last safety check that failed.
    pub conflicts: Vec<Conflict>,
    /// Patches a cumulative patch replaced.
    pub superseded: Vec<String>,
    /// What the loader did that the user should know: alternatives applied
    /// for the guest's CPU, jump labels frozen to their key's state, WARN
    /// sites dropped, return thunks redirected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What the last safety check did: mode, stacks unwound and scanned,
    /// and each stack the ORC check scanned instead, with the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::model::CheckSummary>,
    /// Timings.
    pub timings: Timings,
}

impl TxnReport {
    /// A transaction refused before it could start (nothing read or
    /// written in the guest), e.g. when the kernel cannot be a target.
    pub fn refused(op: &'static str, id: Option<String>, name: Option<String>, cause: Cause, reason: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            op,
            patch_id: id,
            patch_name: name,
            stage: Stage::Prepare,
            cause,
            reason: reason.map(str::to_owned),
            message: message.into(),
            conflicts: Vec::new(),
            superseded: Vec::new(),
            notes: Vec::new(),
            check: None,
            timings: Timings::default(),
        }
    }

    /// True when the cause is `ok`.
    pub fn is_ok(&self) -> bool {
        self.cause == Cause::Ok
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"cause\":\"unexpected\",\"message\":\"{e}\"}}"))
    }
}

/// A failure inside a transaction, turned into a report by the caller.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Stage.
    pub stage: Stage,
    /// Cause.
    pub cause: Cause,
    /// Reason.
    pub reason: Option<String>,
    /// Message (with the source chain).
    pub message: String,
    /// Conflicts.
    pub conflicts: Vec<Conflict>,
}

impl Failure {
    /// A failure with a message.
    pub fn new(stage: Stage, cause: Cause, reason: impl Into<Option<&'static str>>, message: impl Into<String>) -> Self {
        Self { stage, cause, reason: reason.into().map(str::to_owned), message: message.into(), conflicts: Vec::new() }
    }

    /// A failure from an error (message = error and its sources).
    pub fn from_err(stage: Stage, cause: Cause, reason: impl Into<Option<&'static str>>, err: &dyn std::error::Error) -> Self {
        Self::new(stage, cause, reason, chain(err))
    }
}

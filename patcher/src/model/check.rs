//! What the safety check is asked and what it finds: the code ranges no
//! task may be in, the check mode, each conflict, and the summary of what
//! was checked and how.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A range the safety check must find idle, with a label for conflict reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRange {
    /// Start.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// What it is (`tg_step_b`, `patch p1: tg_step_b_v2`, …).
    pub label: String,
}

/// Something running in the code to be replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// Task name (comm), when known.
    pub task: Option<String>,
    /// Task id (pid), when known.
    pub task_id: Option<u64>,
    /// vCPU whose RIP hit, for a RIP conflict.
    pub vcpu: Option<usize>,
    /// `rip`, `stack`, or `unchecked_stack` (a kernel-mode vCPU on no known
    /// stack whose stack could not be read: the pause is retried).
    pub kind: &'static str,
    /// The address found.
    pub addr: u64,
    /// The function it is in (`tg_hold+0x12`, or a patch function).
    pub function: String,
}

/// Which safety check to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum CheckMode {
    /// ORC unwinding, conservative scan per stack where it is unreliable.
    #[default]
    Orc,
    /// Every word of every live stack (Ksplice).
    Conservative,
}

impl FromStr for CheckMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "orc" => Ok(Self::Orc),
            "conservative" => Ok(Self::Conservative),
            other => Err(format!("unknown check `{other}` (orc or conservative)")),
        }
    }
}

impl fmt::Display for CheckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Orc => "orc",
            Self::Conservative => "conservative",
        })
    }
}

/// Whether the pause re-unwinds every task or reuses the verdicts of a
/// check made with the guest running (`crate::safety::incremental`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Incremental {
    /// Every task is checked under the pause (the full check).
    #[default]
    Off,
    /// Tasks the scheduler proves did not run since the pre-check keep
    /// its verdict; all others, and every vCPU, are checked under the pause.
    On,
    /// Both, under the same pause: a difference in their conflicts refuses
    /// the transaction (`incremental_mismatch`), never a write.
    Compare,
}

impl FromStr for Incremental {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::On),
            "compare" => Ok(Self::Compare),
            other => Err(format!("unknown incremental mode `{other}` (off, on or compare)")),
        }
    }
}

impl fmt::Display for Incremental {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Compare => "compare",
        })
    }
}

/// What the incremental check did at the last pause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IncrementalSummary {
    /// The mode asked for.
    pub mode: Incremental,
    /// Tasks the pre-check (guest running) found clean and kept a verdict for.
    pub pre_checked: usize,
    /// Tasks whose pre-check verdict the pause reused.
    pub reused: usize,
    /// Tasks checked under the pause (ran since, new, on a CPU, no evidence).
    pub rechecked: usize,
    /// Microseconds the pre-check took (guest running).
    pub pre_check_us: u64,
    /// Why no verdict was reused, when none could be (no pre-check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Task records read again under the pause, when the kind could tell
    /// which changed since the pre-check's read (the test guest's change
    /// ring); absent when the whole list was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_read: Option<usize>,
    /// How the pause read the task list after the pre-check, when the
    /// kind says: `quiet` (Linux: the scheduler's switch and fork counters
    /// unchanged since the pre-check, only tasks on a CPU re-read), `walk`
    /// (read whole), `changes` (the test guest's change ring).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reread: Option<&'static str>,
}

/// A stack the ORC check could not unwind, scanned conservatively instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fallback {
    /// Which stack (`pid 123 (comm)`, `vcpu 1`).
    pub stack: String,
    /// Why it was not unwound.
    pub reason: String,
}

/// What the check did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckSummary {
    /// The mode asked for.
    pub mode: CheckMode,
    /// Stacks checked through an ORC unwind.
    pub unwound: usize,
    /// Stacks scanned word by word.
    pub scanned: usize,
    /// CPU stacks skipped because no vCPU was on them.
    pub idle_cpu_stacks: usize,
    /// Bytes of stack read.
    pub bytes: u64,
    /// Every stack the ORC check had to scan instead, with the reason.
    pub fallbacks: Vec<Fallback>,
    /// Where the task list came from (`agent+agentless`, `agentless`,
    /// `testguest`, …); empty when not known.
    pub task_source: String,
    /// The incremental check's counts, when it was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalSummary>,
}

//! What the journal says of one target so far (applied by this rollout,
//! a gate failed, the baseline its gates compare with), and which outcomes
//! count against the failure budget.

use std::collections::BTreeMap;

use super::gates::Baseline;
use super::journal::{Op, Step};

/// True for the outcomes that count against the failure budget.
pub(crate) fn is_failure(outcome: &str) -> bool {
    matches!(outcome, "failed" | "reverted" | "revert_failed")
}

/// What a target's history in the journal says.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Applied (`ok`) by this rollout.
    pub applied: bool,
    /// A gate failed.
    pub gate_failed: bool,
    /// The baseline recorded with the apply.
    pub baseline: Option<Baseline>,
}

pub(crate) fn history(steps: &[Step], name: &str) -> History {
    let mut h = History::default();
    let intents: BTreeMap<u64, &Step> = steps.iter().filter(|s| s.phase == "intent" && s.target == name).map(|s| (s.seq, s)).collect();
    for s in steps.iter().filter(|s| s.target == name && s.phase == "done") {
        match (s.op, s.result.as_deref()) {
            (Op::Apply, Some("ok")) => {
                h.applied = true;
                h.baseline = s.intent.and_then(|i| intents.get(&i)).and_then(|i| serde_json::from_str(&i.detail).ok());
            }
            (Op::Gate, Some(r)) if r != "ok" && r != "unknown" => h.gate_failed = true,
            _ => {}
        }
    }
    h
}


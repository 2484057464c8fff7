//! What a rollout looks like from its journal: the status (`vsplice fleet
//! status`, a table or `--json`) and the Prometheus text of its metrics
//! (`status --metrics`, and `JOURNAL.prom` beside the journal, rewritten by
//! the running controller after every target).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::journal::{self, Op, Step};
use super::plan::Rollout;

/// One target's line.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// Name.
    pub name: String,
    /// Its host label.
    pub host: String,
    /// Wave (0 = canary), `None` when not touched.
    pub wave: Option<usize>,
    /// Its kernel's build-id.
    pub build_id: Option<String>,
    /// The patch it gets.
    pub patch: Option<String>,
    /// `pending`, `in_progress`, `patched`, `reverted`, `failed`,
    /// `revert_failed`, `rolled_back`, `no_patch_for_kernel`, `unreachable`.
    pub status: String,
    /// The last step recorded for it (`op result: detail`).
    pub last: String,
}

/// The rollout's status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The rollout's state (`running`, `paused`, `halted`, `done`, …).
    pub state: String,
    /// Waves (0 is the canary).
    pub waves: usize,
    /// The last wave begun.
    pub current_wave: Option<usize>,
    /// Targets per status.
    pub counts: BTreeMap<String, usize>,
    /// Every selected target.
    pub targets: Vec<TargetStatus>,
    /// Journal records.
    pub journal_records: usize,
    /// First and last record times (ms since the epoch).
    pub started_ms: u64,
    /// The last record's time.
    pub updated_ms: u64,
}

/// The status of `rollout` after `steps`.
pub fn status(rollout: &Rollout, steps: &[Step]) -> Status {
    let outcomes = journal::outcomes(steps);
    let open: Vec<&str> = journal::open_intents(steps).iter().map(|s| s.target.as_str()).collect();
    let mut targets = Vec::new();
    for p in &rollout.targets {
        let status = match (&p.skip, outcomes.get(p.target.name.as_str())) {
            (Some(why), _) => why.clone(),
            (None, Some(o)) => (*o).to_owned(),
            (None, None) if open.contains(&p.target.name.as_str()) => "in_progress".into(),
            (None, None) => "pending".into(),
        };
        let last = steps
            .iter()
            .rev()
            .find(|s| s.target == p.target.name)
            .map(|s| format!("{:?} {}{}", s.op, s.result.as_deref().unwrap_or(&s.phase), if s.detail.is_empty() || s.phase == "intent" { String::new() } else { format!(": {}", s.detail) }).to_lowercase())
            .unwrap_or_default();
        targets.push(TargetStatus {
            name: p.target.name.clone(),
            host: p.target.labels.get(&rollout.plan.host_label).cloned().unwrap_or_default(),
            wave: p.wave,
            build_id: p.build_id.clone(),
            patch: p.patch.clone(),
            status,
            last,
        });
    }
    let mut counts = BTreeMap::new();
    for t in &targets {
        *counts.entry(t.status.clone()).or_insert(0) += 1;
    }
    Status {
        state: journal::state(steps).unwrap_or("new").to_owned(),
        waves: rollout.waves,
        current_wave: steps.iter().rev().find(|s| s.op == Op::Wave).and_then(|s| s.patch.parse().ok()),
        counts,
        targets,
        journal_records: steps.len(),
        started_ms: steps.first().map_or(0, |s| s.time_ms),
        updated_ms: steps.last().map_or(0, |s| s.time_ms),
    }
}

/// The status as a table.
pub fn table(st: &Status) -> String {
    let mut out = String::new();
    let done = st.counts.iter().filter(|(k, _)| !matches!(k.as_str(), "pending" | "in_progress")).map(|(_, v)| v).sum::<usize>();
    let _ = writeln!(
        out,
        "rollout: {}  wave {} of 0..{} (0 = canary)  {done}/{} targets settled  ({})",
        st.state,
        st.current_wave.map_or("-".into(), |w| w.to_string()),
        st.waves.saturating_sub(1),
        st.targets.len(),
        st.counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(out, "{:<16} {:<10} {:>4}  {:<20} {:<20} LAST", "TARGET", "HOST", "WAVE", "PATCH", "STATUS");
    for t in &st.targets {
        let wave = t.wave.map_or("-".into(), |w| if w == 0 { "c".into() } else { w.to_string() });
        let _ = writeln!(out, "{:<16} {:<10} {:>4}  {:<20} {:<20} {}", t.name, t.host, wave, t.patch.as_deref().unwrap_or("-"), t.status, t.last.chars().take(100).collect::<String>());
    }
    out
}

/// The Prometheus text of the rollout; `writes` are this process's journal
/// writes and the nanoseconds they took, when known.
pub fn prometheus(st: &Status, writes: Option<(u64, u64)>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP vsplice_fleet_targets Targets of the rollout by status.\n# TYPE vsplice_fleet_targets gauge");
    for (k, v) in &st.counts {
        let _ = writeln!(out, "vsplice_fleet_targets{{status=\"{k}\"}} {v}");
    }
    let _ = writeln!(out, "# HELP vsplice_fleet_state The rollout's state (1 for the current one).\n# TYPE vsplice_fleet_state gauge");
    let _ = writeln!(out, "vsplice_fleet_state{{state=\"{}\"}} 1", st.state);
    let _ = writeln!(out, "# HELP vsplice_fleet_wave The last wave begun (0 is the canary).\n# TYPE vsplice_fleet_wave gauge");
    let _ = writeln!(out, "vsplice_fleet_wave {}", st.current_wave.map_or(-1, |w| w as i64));
    let _ = writeln!(out, "# HELP vsplice_fleet_waves Waves of the rollout.\n# TYPE vsplice_fleet_waves gauge\nvsplice_fleet_waves {}", st.waves);
    let _ = writeln!(out, "# HELP vsplice_fleet_journal_records Records in the journal.\n# TYPE vsplice_fleet_journal_records gauge\nvsplice_fleet_journal_records {}", st.journal_records);
    let elapsed = st.updated_ms.saturating_sub(st.started_ms) as f64 / 1000.0;
    let _ = writeln!(out, "# HELP vsplice_fleet_elapsed_seconds From the first journal record to the last.\n# TYPE vsplice_fleet_elapsed_seconds gauge\nvsplice_fleet_elapsed_seconds {elapsed:.3}");
    if let Some((n, ns)) = writes {
        let _ = writeln!(out, "# HELP vsplice_fleet_journal_write_seconds Journal writes of this controller (each a committed transaction).\n# TYPE vsplice_fleet_journal_write_seconds summary");
        let _ = writeln!(out, "vsplice_fleet_journal_write_seconds_sum {:.6}\nvsplice_fleet_journal_write_seconds_count {n}", ns as f64 / 1e9);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fleet::inventory::Target;
    use crate::fleet::plan::{Plan, Planned};

    fn step(seq: u64, target: &str, op: Op, phase: &str, intent: Option<u64>, result: Option<&str>) -> Step {
        Step { seq, time_ms: 1000 * seq, target: target.into(), patch: "fix".into(), op, phase: phase.into(), intent, result: result.map(Into::into), detail: String::new() }
    }

    #[test]
    fn status_counts_outcomes_in_progress_and_skips() {
        let plan: Plan = serde_json::from_str(r#"{"patches":["x"]}"#).unwrap();
        let planned = |n: &str, wave: Option<usize>, skip: Option<&str>| Planned {
            target: Target { name: n.into(), api_sock: n.into(), labels: [("host".to_owned(), "h1".to_owned())].into(), origin: None },
            build_id: None,
            release: None,
            patch: skip.is_none().then(|| "fix".into()),
            wave,
            skip: skip.map(Into::into),
        };
        let rollout = Rollout { plan, patches: vec![], targets: vec![planned("a", Some(0), None), planned("b", Some(1), None), planned("c", Some(1), None), planned("d", None, Some("no_patch_for_kernel"))], waves: 2 };
        let mut wave = step(2, "", Op::Wave, "done", None, Some("begin"));
        wave.patch = "1".into();
        let steps = vec![
            step(1, "", Op::State, "done", None, Some("running")),
            step(3, "a", Op::Outcome, "done", None, Some("patched")),
            wave,
            step(4, "b", Op::Apply, "intent", None, None),
        ];
        let st = status(&rollout, &steps);
        let got: Vec<&str> = st.targets.iter().map(|t| t.status.as_str()).collect();
        assert_eq!(got, ["patched", "in_progress", "pending", "no_patch_for_kernel"]);
        assert_eq!((st.state.as_str(), st.current_wave), ("running", Some(1)));
        let prom = prometheus(&st, Some((4, 2_000_000)));
        assert!(prom.contains("vsplice_fleet_targets{status=\"patched\"} 1"), "{prom}");
        assert!(prom.contains("vsplice_fleet_journal_write_seconds_count 4"), "{prom}");
        assert!(table(&st).contains("rollout: running  wave 1 of 0..1 (0 = canary)  2/4 targets settled"), "{}", table(&st));
    }
}

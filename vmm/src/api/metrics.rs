//! What `GET /metrics` counts, in the Prometheus text format (0.0.4):
//! transactions by op and cause, the phases of the downtime as one
//! histogram with a `phase` label, pauses, patches applied, guest state.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use vsplice_patcher::txn::TxnReport;

/// Histogram bucket upper bounds, in microseconds.
pub const BUCKETS_US: [u64; 12] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];

/// The phases of a transaction's downtime, as the `phase` label.
pub const PHASES: [&str; 5] = ["pause", "check", "write", "resume", "downtime"];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS_US.len()],
    sum_us: u64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, us: u64) {
        for (i, b) in BUCKETS_US.iter().enumerate() {
            if us <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum_us += us;
        self.count += 1;
    }
}

/// The counters.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    txns: BTreeMap<(&'static str, &'static str), u64>,
    phases: [Histogram; PHASES.len()],
    pauses: u64,
    patches_applied: u64,
    guest_state: &'static str,
}

impl Metrics {
    /// Counts a transaction: its op and cause, its phases (when it paused), its pauses.
    pub fn txn(&mut self, r: &TxnReport) {
        *self.txns.entry((r.op, r.cause.name())).or_default() += 1;
        self.pauses += u64::from(r.timings.attempts);
        if r.timings.attempts > 0 {
            let t = &r.timings;
            for (h, us) in self.phases.iter_mut().zip([t.pause_us, t.check_us, t.write_us, t.resume_us, t.downtime_us]) {
                h.observe(us);
            }
        }
    }

    /// Patches applied now (from the guest registry).
    pub fn set_patches_applied(&mut self, n: u64) {
        self.patches_applied = n;
    }

    /// The guest's state (`running`, `paused`, `exited`).
    pub fn set_guest_state(&mut self, state: &'static str) {
        self.guest_state = state;
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP vsplice_transactions_total Live-patch transactions by operation and cause.");
        let _ = writeln!(s, "# TYPE vsplice_transactions_total counter");
        for ((op, cause), n) in &self.txns {
            let _ = writeln!(s, "vsplice_transactions_total{{op=\"{op}\",cause=\"{cause}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP vsplice_txn_phase_seconds Time of each phase of a transaction's last pause (downtime: all of it).");
        let _ = writeln!(s, "# TYPE vsplice_txn_phase_seconds histogram");
        for (phase, h) in PHASES.iter().zip(&self.phases) {
            for (b, n) in BUCKETS_US.iter().zip(h.counts) {
                let _ = writeln!(s, "vsplice_txn_phase_seconds_bucket{{phase=\"{phase}\",le=\"{}\"}} {n}", seconds(*b));
            }
            let _ = writeln!(s, "vsplice_txn_phase_seconds_bucket{{phase=\"{phase}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(s, "vsplice_txn_phase_seconds_sum{{phase=\"{phase}\"}} {}", seconds(h.sum_us));
            let _ = writeln!(s, "vsplice_txn_phase_seconds_count{{phase=\"{phase}\"}} {}", h.count);
        }
        let _ = writeln!(s, "# HELP vsplice_pauses_total Whole-VM pauses taken by transactions.");
        let _ = writeln!(s, "# TYPE vsplice_pauses_total counter");
        let _ = writeln!(s, "vsplice_pauses_total {}", self.pauses);
        let _ = writeln!(s, "# HELP vsplice_patches_applied Patches applied in the guest now.");
        let _ = writeln!(s, "# TYPE vsplice_patches_applied gauge");
        let _ = writeln!(s, "vsplice_patches_applied {}", self.patches_applied);
        let _ = writeln!(s, "# HELP vsplice_guest_state The guest's state (1 for the current one).");
        let _ = writeln!(s, "# TYPE vsplice_guest_state gauge");
        for state in ["running", "paused", "exited"] {
            let _ = writeln!(s, "vsplice_guest_state{{state=\"{state}\"}} {}", u8::from(self.guest_state == state));
        }
        s
    }
}

fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsplice_patcher::txn::{Cause, Stage, Timings};

    fn report(cause: Cause, attempts: u32, downtime_us: u64) -> TxnReport {
        TxnReport {
            op: "apply",
            patch_id: None,
            patch_name: None,
            stage: Stage::Done,
            cause,
            reason: None,
            message: String::new(),
            conflicts: Vec::new(),
            superseded: Vec::new(),
            notes: Vec::new(),
            check: None,
            timings: Timings { attempts, downtime_us, pause_us: 40, ..Timings::default() },
        }
    }

    #[test]
    fn counts_by_op_and_cause_and_buckets_phases() {
        let mut m = Metrics::default();
        m.txn(&report(Cause::Ok, 1, 300));
        m.txn(&report(Cause::CodeBusy, 3, 2_000));
        m.txn(&report(Cause::BadPatch, 0, 0));
        m.set_guest_state("running");
        let t = m.render();
        assert!(t.contains("vsplice_transactions_total{op=\"apply\",cause=\"ok\"} 1"), "{t}");
        assert!(t.contains("vsplice_transactions_total{op=\"apply\",cause=\"code_busy\"} 1"), "{t}");
        assert!(t.contains("vsplice_pauses_total 4"), "{t}");
        // Two paused transactions; the bad patch never paused.
        assert!(t.contains("vsplice_txn_phase_seconds_count{phase=\"downtime\"} 2"), "{t}");
        assert!(t.contains("vsplice_txn_phase_seconds_bucket{phase=\"downtime\",le=\"0.0005\"} 1"), "{t}");
        assert!(t.contains("vsplice_txn_phase_seconds_bucket{phase=\"pause\",le=\"0.00005\"} 2"), "{t}");
        assert!(t.contains("vsplice_guest_state{state=\"running\"} 1"), "{t}");
        assert!(t.contains("vsplice_guest_state{state=\"exited\"} 0"), "{t}");
    }
}

//! Task lists whose sources disagree across the pauses of one transaction
//! ([`TargetError::Disputed`](crate::model::TargetError::Disputed)): a
//! fork, exit, exec or rename caught half-way is retried, but a task
//! disputed at [`DISPUTE_PAUSES`] pauses in a row is no longer "in flight"
//! and the transaction refuses with the target's cause (`agent_mismatch`).

use std::collections::HashMap;

use crate::model::DISPUTE_PAUSES;

/// Key counted for a dispute that names no task (so it still persists).
const NO_TASK: u64 = u64::MAX;

/// Consecutive pauses each task has been disputed at.
#[derive(Debug, Default)]
pub(crate) struct Disputes {
    streak: HashMap<u64, u32>,
}

impl Disputes {
    /// Records one pause's disputed tasks; a task disputed at the previous
    /// pause too extends its streak, any other starts (or ends) one.
    /// Returns a task and its streak once it reaches [`DISPUTE_PAUSES`].
    pub(crate) fn record(&mut self, tasks: &[u64]) -> Option<(u64, u32)> {
        let keys: Vec<u64> = if tasks.is_empty() { vec![NO_TASK] } else { tasks.to_vec() };
        let mut next = HashMap::with_capacity(keys.len());
        for k in keys {
            let n = self.streak.get(&k).copied().unwrap_or(0) + 1;
            next.insert(k, n);
        }
        self.streak = next;
        self.streak.iter().filter(|(_, &n)| n >= DISPUTE_PAUSES).map(|(&k, &n)| (k, n)).min()
    }

    /// A pause whose sources agreed: every streak ends.
    pub(crate) fn clear(&mut self) {
        self.streak.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_task_disputed_at_every_pause_is_refused_at_the_limit() {
        let mut d = Disputes::default();
        for _ in 1..DISPUTE_PAUSES {
            assert_eq!(d.record(&[0x10, 0x20]), None);
        }
        assert_eq!(d.record(&[0x20]), Some((0x20, DISPUTE_PAUSES)));
    }

    #[test]
    fn different_tasks_in_flight_at_each_pause_never_persist() {
        // A fork storm: a new task caught half-way at every pause.
        let mut d = Disputes::default();
        for i in 0..10 * u64::from(DISPUTE_PAUSES) {
            assert_eq!(d.record(&[0x1000 + i]), None);
        }
    }

    #[test]
    fn a_pause_that_agrees_or_leaves_the_task_out_ends_its_streak() {
        let mut d = Disputes::default();
        for _ in 1..DISPUTE_PAUSES {
            assert_eq!(d.record(&[7]), None);
        }
        d.clear();
        for _ in 1..DISPUTE_PAUSES {
            assert_eq!(d.record(&[7]), None);
        }
        assert_eq!(d.record(&[8]), None);
        for _ in 1..DISPUTE_PAUSES {
            assert_eq!(d.record(&[7]), None);
        }
        assert_eq!(d.record(&[7]), Some((7, DISPUTE_PAUSES)));
    }

    #[test]
    fn a_dispute_naming_no_task_still_persists() {
        let mut d = Disputes::default();
        for _ in 1..DISPUTE_PAUSES {
            assert_eq!(d.record(&[]), None);
        }
        assert_eq!(d.record(&[]), Some((NO_TASK, DISPUTE_PAUSES)));
    }
}

//! [`split`](super::split) in O(changed) instead of O(all): when the kind
//! re-read under the pause only the positions that may differ from the
//! list the pre-check ran on ([`crate::model::GuestTasks::changed`]), every
//! other position holds the very task the pre-check saw, so its fate is
//! known from the pre-check alone: reused when it kept a verdict and no
//! vCPU's RSP is on its stack.
//!
//! The answer is the one [`super::split`] gives on the same list, task for
//! task (same reused count, same tasks checked again, in list order; a unit
//! test compares both on random lists): the positions whose outcome could
//! differ — changed ones, ones without a verdict, ones a vCPU is on — go
//! through the same per-task test; a vCPU is matched to stacks through a
//! sorted index built with the guest running (`Positions::on_stack`), exact
//! for overlapping stacks too.

use super::{Key, PreCheck};
use crate::model::backend::VcpuState;
use crate::model::TaskList;

/// What the pre-check knew of each position of its list.
#[derive(Debug, Clone, Default)]
pub(super) struct Positions {
    /// Length of the list.
    len: usize,
    /// Positions whose task kept no verdict (could not, or was not found clean).
    no_verdict: Vec<usize>,
    /// `(start, end, position)` of every stack, by start.
    stacks: Vec<(u64, u64, usize)>,
    /// `max_end[i]`: the largest end among `stacks[..=i]`.
    max_end: Vec<u64>,
    /// Positions with a verdict.
    with_verdict: usize,
}

impl Positions {
    /// Indexes `list`, the list `pre`'s verdicts were kept from.
    pub(super) fn of(pre: &PreCheck, list: &TaskList) -> Self {
        let mut p = Self { len: list.tasks.len(), ..Self::default() };
        for (i, t) in list.tasks.iter().enumerate() {
            if Key::of(t).is_some_and(|k| pre.index.contains_key(&k)) {
                p.with_verdict += 1;
            } else {
                p.no_verdict.push(i);
            }
            p.stacks.push((t.stack.start, t.stack.end, i));
        }
        p.stacks.sort_unstable();
        let mut m = 0;
        p.max_end = p.stacks.iter().map(|s| { m = m.max(s.1); m }).collect();
        p
    }

    /// Appends to `out` every position whose stack (as the pre-check read
    /// it) holds `x`.
    fn on_stack(&self, x: u64, out: &mut Vec<usize>) {
        let mut j = self.stacks.partition_point(|s| s.0 <= x);
        while j > 0 && self.max_end[j - 1] > x {
            j -= 1;
            let (start, end, pos) = self.stacks[j];
            if (start..end).contains(&x) {
                out.push(pos);
            }
        }
    }
}

/// [`super::split`] of `list` when only the positions in `changed` may
/// differ from the pre-check's list; `None` when `pre` did not index a
/// list of this length (then the caller splits the whole list).
pub(super) fn split(pre: &PreCheck, list: &TaskList, changed: &[usize], vcpus: &[VcpuState]) -> Option<(TaskList, usize)> {
    let pos = pre.positions.as_ref().filter(|p| p.len == list.tasks.len())?;
    // The positions whose outcome is not simply "reused": changed, without
    // a verdict, or with a vCPU on their stack (as read then or now).
    let mut test: Vec<usize> = changed.iter().copied().filter(|&i| i < pos.len).collect();
    test.extend_from_slice(&pos.no_verdict);
    for v in vcpus {
        pos.on_stack(v.rsp(), &mut test);
    }
    test.sort_unstable();
    test.dedup();
    // Of those, how many had a verdict in the pre-check's list: each is
    // counted out of `with_verdict` and judged again below.
    let tested_with_verdict = test.len() - test.iter().filter(|i| pos.no_verdict.binary_search(i).is_ok()).count();
    let mut reused = pos.with_verdict - tested_with_verdict;
    let mut rest = Vec::new();
    for &i in &test {
        let t = &list.tasks[i];
        let on_vcpu = vcpus.iter().any(|v| t.stack.contains(&v.rsp()));
        let mut next = 0;
        if !on_vcpu && Key::of(t).is_some_and(|k| pre.holds(&k, &mut next)) {
            reused += 1;
        } else {
            rest.push(t.clone());
        }
    }
    Some((TaskList { tasks: rest, cpu_stacks: list.cpu_stacks.clone() }, reused))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{TaskEvidence, TaskInfo};

    /// A small deterministic generator (no dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn task(r: &mut Lcg, id: u64) -> TaskInfo {
        // Stacks from a small space, so they overlap and repeat sometimes.
        let base = 0x1000 * r.next(64);
        let size = 0x1000 * (1 + r.next(3));
        let sp = base + 8 * r.next(size / 8);
        let evidence = (r.next(8) != 0).then_some(TaskEvidence { addr: id, start_time: id, nvcsw: r.next(3), nivcsw: 0, sp });
        TaskInfo { id, name: format!("t{id}"), cpu: Some(0), stack: base..base + size, saved_sp: Some(sp), on_cpu: r.next(10) == 0, evidence }
    }

    #[test]
    fn the_changed_split_is_the_whole_split_on_random_lists() {
        let mut r = Lcg(7);
        for round in 0..400 {
            let n = 1 + r.next(40) as usize;
            let before: Vec<TaskInfo> = (0..n as u64)
                .map(|id| {
                    let m = 1 + r.next(n as u64);
                    task(&mut r, id % m)
                })
                .collect();
            let before = TaskList { tasks: before, cpu_stacks: Vec::new() };
            let mut pre = PreCheck::default();
            for t in &before.tasks {
                if let Some(k) = Key::of(t).filter(|_| r.next(4) != 0) {
                    pre.keep(k);
                }
            }
            pre.positions = Some(Positions::of(&pre, &before));
            // Some positions change (a fresh task there), and are named changed.
            let mut now = before.clone();
            let mut changed = Vec::new();
            for i in 0..n {
                if r.next(5) == 0 {
                    now.tasks[i] = if r.next(2) == 0 { task(&mut r, i as u64) } else { TaskInfo { on_cpu: true, ..now.tasks[i].clone() } };
                    changed.push(i);
                }
            }
            let vcpus: Vec<VcpuState> = (0..r.next(3))
                .map(|_| {
                    let mut v = VcpuState::default();
                    v.gprs[VcpuState::RSP] = 0x1000 * r.next(70) + 8 * r.next(512);
                    v
                })
                .collect();
            let (whole, reused) = super::super::split(&pre, &now, &vcpus);
            let (part, reused2) = split(&pre, &now, &changed, &vcpus).unwrap();
            assert_eq!((reused2, part.tasks), (reused, whole.tasks), "round {round}");
        }
    }

    #[test]
    fn a_list_of_another_length_is_not_split_this_way() {
        let mut r = Lcg(1);
        let list = TaskList { tasks: (0..4).map(|id| task(&mut r, id)).collect(), cpu_stacks: Vec::new() };
        let mut pre = PreCheck::default();
        pre.positions = Some(Positions::of(&pre, &list));
        let shorter = TaskList { tasks: list.tasks[..3].to_vec(), cpu_stacks: Vec::new() };
        assert!(split(&pre, &shorter, &[], &[]).is_none());
        assert!(split(&PreCheck::default(), &list, &[], &[]).is_none());
    }
}

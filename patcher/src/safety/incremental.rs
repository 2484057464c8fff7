//! The incremental check: the tasks the scheduler proves did not run since
//! a check made with the guest running keep that check's verdict; under the
//! pause only the others, every vCPU and every CPU stack are checked.
//!
//! [`pre_check`] runs with the guest running, on a task list read then
//! (each task's [`TaskEvidence`] read with it, before any of its stack).
//! It keeps a verdict only for a task whose ORC unwind from its saved SP
//! was reliable and found nothing: a task in the code being replaced, a
//! stack scanned instead of unwound, an unreadable one — all are checked
//! again under the pause. On a kernel whose switched-out stacks are written
//! by their owners only ([`crate::kernels::TargetKernel::owner_only_stacks`]:
//! the test guest) a clean word scan of the live stack is a verdict too
//! (see the last point below). [`split`] then takes the list read under the
//! pause and leaves out exactly the tasks whose evidence, task id, stack
//! and saved SP are all the same as at the pre-check and that are on no
//! CPU: not flagged on a CPU, no vCPU's RSP on their stack (the kernel kind
//! gives no evidence for a task current on a vCPU either).
//!
//! Why a reused verdict is the verdict the pause would reach:
//!
//! - `nvcsw` and `nivcsw` only grow, and every switch-out of a task adds
//!   one to either (`__schedule`, when `prev != next`). Equal values at the
//!   pre-check read and under the pause mean no switch-out in between. A
//!   task that executed at any moment after the counters were read is then
//!   still executing under the pause, and so is on a CPU there (`on_cpu`
//!   is set before the switch to it and cleared only after the switch away
//!   completes; it is the current task of its vCPU; its stack holds the
//!   vCPU's RSP): never reused. So a reused task did not execute from the
//!   counters' read to the pause, and its stack was read after its counters.
//! - A sleeping task's frames (return addresses, saved frame pointers, the
//!   `inactive_task_frame` at `thread.sp`, interrupt `pt_regs` inside the
//!   kernel) are written only by the task itself. Others do write into a
//!   sleeper's stack: a waker unlinks a wait-queue entry living there, a
//!   timer clears a `hrtimer_sleeper`'s task, a lock's waiter record is
//!   updated, ptrace rewrites the user `pt_regs` at the top. Those are
//!   locals and user registers, which the ORC unwind never reads as code
//!   addresses; that is why only a reliable unwind's verdict is kept, never
//!   a word scan's (a scan reads every word, locals included).
//! - A torn read while the guest runs can only make the evidence differ
//!   (a recheck) or make the pre-check's unwind find something or fail (no
//!   verdict kept): a verdict is kept only when the evidence read *before*
//!   the stack equals the evidence under the pause, and then the stack did
//!   not change after that read. This needs each counter read as one value
//!   the guest held. The gdbstub reads inside a stop; from the RAM file the
//!   walk reads every word of a task — the counters, `start_time`,
//!   `thread.sp`, `stack` — as one aligned 8-byte load
//!   ([`crate::model::mem::KernelMemory::read_words`],
//!   `crate::os::linux::task_read`), which x86-64 performs whole: never a
//!   mix of two values. A kernel whose BTF places one of them at an offset
//!   that is not 8-aligned gives no evidence at all.
//! - Identity: the `task_struct` address, `start_time` and the task id must
//!   match, so a record freed and reused by a new task is not the same one;
//!   the stack and the saved SP must match, so the verdict was computed on
//!   the stack the pause has.
//! - The verdict depends on the ranges and the unwinder too: a pre-check is
//!   made for one transaction's ranges with its unwinder, and used only by it.
//! - A scan's verdict (owner-only stacks): the scan reads every word from
//!   the saved SP to the stack's end, so it stands exactly when those words
//!   are the same under the pause. Only the task writes them (the kind
//!   says so), the task did not run (evidence as above), and the saved SP
//!   is the same (the key): the words are the same. The test guest's
//!   evidence is its task table v2 (`switches`, bumped with `saved_sp`
//!   under the table's seq at every switch away); the table is read whole
//!   between two equal even seq reads, so counters, SPs and on-CPU flags
//!   are one consistent snapshot (the same caveat on copies that are not
//!   formally 8-byte atomic as above: the counter is a u32 there, a torn
//!   value needs 2^16 or more switches of one task ending at the same SP).
//!
//! When the kind re-read under the pause only what changed since the
//! pre-check's read (the test guest's change ring; on Linux, the tasks on
//! a CPU when no task was switched in or forked since:
//! `crate::os::linux::sched_quiet`), [`split_changed`] gives [`split`]'s
//! answer touching only those positions.
//!
//! Under the pause, [`split`] is one pass over the list: the pre-check's
//! keys are kept in list order and compared with a cursor (a hash lookup
//! only when the order differs), and only tasks checked again are copied.

mod changed;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::{check, CheckInput};
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{CheckMode, CheckRange, Conflict, SymbolTable, TaskEvidence, TaskInfo, TaskList};
use crate::os::linux::unwind::OrcUnwinder;

/// What a kept verdict was computed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    evidence: TaskEvidence,
    id: u64,
    stack: (u64, u64),
    saved_sp: u64,
}

impl Key {
    /// The key of a task that could keep a verdict: evidence, not on a
    /// CPU, its saved SP the one the evidence read, on its stack.
    fn of(t: &TaskInfo) -> Option<Self> {
        let evidence = t.evidence?;
        let sp = t.saved_sp?;
        if t.on_cpu || sp != evidence.sp || !t.stack.contains(&sp) {
            return None;
        }
        Some(Self { evidence, id: t.id, stack: (t.stack.start, t.stack.end), saved_sp: sp })
    }
}

/// The clean verdicts of one pre-check.
#[derive(Debug, Clone, Default)]
pub struct PreCheck {
    /// In the order of the list they were read from.
    clean: Vec<Key>,
    /// Where each is in `clean`.
    index: HashMap<Key, usize>,
    /// Microseconds it took.
    pub took_us: u64,
    /// Per position of the list it ran on (for [`split_changed`]).
    positions: Option<changed::Positions>,
}

impl PreCheck {
    /// Tasks found clean.
    pub fn len(&self) -> usize {
        self.clean.len()
    }

    /// True when no verdict was kept.
    pub fn is_empty(&self) -> bool {
        self.clean.is_empty()
    }

    fn keep(&mut self, key: Key) {
        if !self.index.contains_key(&key) {
            self.index.insert(key.clone(), self.clean.len());
            self.clean.push(key);
        }
    }

    /// True when `key` kept a verdict; `next` is the cursor into `clean`
    /// (the position after the last hit), so a list in the pre-check's
    /// order costs one comparison per task.
    fn holds(&self, key: &Key, next: &mut usize) -> bool {
        if self.clean.get(*next) == Some(key) {
            *next += 1;
            return true;
        }
        match self.index.get(key) {
            Some(&i) => {
                *next = i + 1;
                true
            }
            None => false,
        }
    }
}

/// Checks every task of `tasks` that could keep a verdict, one by one,
/// with the guest running; keeps the ones a reliable ORC unwind found
/// clean, and with `owner_only_stacks` the ones a word scan found clean.
/// Otherwise, without an unwinder or in the conservative mode, nothing is
/// kept (a word scan's verdict depends on words others write).
pub fn pre_check(
    mode: CheckMode,
    unwinder: Option<&OrcUnwinder>,
    owner_only_stacks: bool,
    mem: &mut dyn KernelMemory,
    symbols: &SymbolTable,
    tasks: &TaskList,
    ranges: &[CheckRange],
) -> PreCheck {
    let t0 = Instant::now();
    let mut pre = PreCheck::default();
    let orc = unwinder.filter(|_| mode == CheckMode::Orc);
    if orc.is_none() && !owner_only_stacks {
        return pre;
    }
    if orc.is_none() && scan_all(mem, symbols, tasks, ranges, &mut pre) {
        pre.positions = Some(changed::Positions::of(&pre, tasks));
        pre.took_us = t0.elapsed().as_micros() as u64;
        return pre;
    }
    for t in &tasks.tasks {
        let Some(key) = Key::of(t) else { continue };
        let one = TaskList { tasks: vec![t.clone()], cpu_stacks: Vec::new() };
        let input = CheckInput { vcpus: &[], vcpu_cpus: &[], tasks: &one };
        let (mode, u) = if orc.is_some() { (CheckMode::Orc, orc) } else { (CheckMode::Conservative, None) };
        match check(mode, u, mem, symbols, input, ranges) {
            Ok((c, s)) if c.is_empty() && s.fallbacks.is_empty() && s.scanned == 0 && s.unwound == 1 => pre.keep(key),
            Ok((c, s)) if owner_only_stacks && c.is_empty() && s.scanned == 1 && s.unwound == 0 => pre.keep(key),
            _ => {}
        }
    }
    pre.positions = Some(changed::Positions::of(&pre, tasks));
    pre.took_us = t0.elapsed().as_micros() as u64;
    pre
}

/// Owner-only stacks, no unwinder: one word scan of every task's stack (the
/// same scan as task by task, without a list per task: 10,000 sleepers in
/// a few milliseconds with the guest running)
/// (no vCPU: each task from its saved SP, or whole when flagged on a CPU),
/// every task it names in a conflict keeps no verdict, the others do.
/// False (nothing kept) when the scan failed or did not scan each task once:
/// the caller then checks task by task.
fn scan_all(mem: &mut dyn KernelMemory, symbols: &SymbolTable, tasks: &TaskList, ranges: &[CheckRange], pre: &mut PreCheck) -> bool {
    // CPU stacks would be scanned too (no vCPU says which are idle).
    if !tasks.cpu_stacks.is_empty() {
        return false;
    }
    let input = CheckInput { vcpus: &[], vcpu_cpus: &[], tasks };
    let Ok((conflicts, sum)) = check(CheckMode::Conservative, None, mem, symbols, input, ranges) else {
        return false;
    };
    if sum.scanned != tasks.tasks.len() {
        return false;
    }
    let Some(busy) = conflicts.iter().map(|c| c.task_id).collect::<Option<HashSet<u64>>>() else {
        return false;
    };
    for t in tasks.tasks.iter().filter(|t| !busy.contains(&t.id)) {
        if let Some(k) = Key::of(t) {
            pre.keep(k);
        }
    }
    true
}

/// The list read under the pause without the tasks whose pre-check
/// verdict stands (see the module doc), and how many those are.
pub fn split(pre: &PreCheck, list: &TaskList, vcpus: &[VcpuState]) -> (TaskList, usize) {
    let mut rest = Vec::new();
    let mut reused = 0;
    let mut next = 0;
    for t in &list.tasks {
        let on_vcpu = vcpus.iter().any(|v| t.stack.contains(&v.rsp()));
        if !on_vcpu && Key::of(t).is_some_and(|k| pre.holds(&k, &mut next)) {
            reused += 1;
        } else {
            rest.push(t.clone());
        }
    }
    (TaskList { tasks: rest, cpu_stacks: list.cpu_stacks.clone() }, reused)
}

/// [`split`], when the list read under the pause is the pre-check's own
/// list with only the positions in `changed` read again (the kind says so:
/// [`crate::model::GuestTasks::changed`]): the same answer in O(changed +
/// tasks without a verdict + vCPUs), not O(all). `None` when the
/// pre-check did not run on a list of this length: split the whole list.
pub fn split_changed(pre: &PreCheck, list: &TaskList, changed: &[usize], vcpus: &[VcpuState]) -> Option<(TaskList, usize)> {
    changed::split(pre, list, changed, vcpus)
}

/// How two checks' conflicts differ, if they do (as sets: the order of the
/// stacks checked is not a finding).
pub fn difference(full: &[Conflict], incremental: &[Conflict]) -> Option<String> {
    let key = |c: &Conflict| format!("{}/{:?}/{:?}/{}/{:#x}/{}", c.task.as_deref().unwrap_or("?"), c.task_id, c.vcpu, c.kind, c.addr, c.function);
    let a: HashSet<String> = full.iter().map(key).collect();
    let b: HashSet<String> = incremental.iter().map(key).collect();
    if a == b {
        return None;
    }
    let mut only_full: Vec<&String> = a.difference(&b).collect();
    let mut only_incr: Vec<&String> = b.difference(&a).collect();
    only_full.sort();
    only_incr.sort();
    Some(format!("only the full check found {only_full:?}; only the incremental one found {only_incr:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn task(id: u64, sp: u64, nvcsw: u64) -> TaskInfo {
        let base = 0x10_0000 * id;
        let evidence = Some(TaskEvidence { addr: 0xffff_8880_0000_0000 + id, start_time: id, nvcsw, nivcsw: 0, sp: base + sp });
        TaskInfo { id, name: format!("t{id}"), cpu: Some(0), stack: base..base + 0x4000, saved_sp: Some(base + sp), on_cpu: false, evidence }
    }

    fn pre_of(tasks: &[TaskInfo]) -> PreCheck {
        let mut pre = PreCheck::default();
        tasks.iter().filter_map(Key::of).for_each(|k| pre.keep(k));
        pre
    }

    #[test]
    fn only_the_same_switched_out_task_off_every_vcpu_is_left_out() {
        let before = [task(1, 0x100, 5), task(2, 0x200, 5), task(3, 0x300, 5), task(4, 0x400, 5), task(5, 0x500, 5)];
        let pre = pre_of(&before);
        let mut now = before.to_vec();
        now[1].evidence = now[1].evidence.map(|e| TaskEvidence { nivcsw: 1, ..e }); // ran since
        now[2].on_cpu = true; // on a CPU
        now[3].evidence = now[3].evidence.map(|e| TaskEvidence { start_time: 99, ..e }); // a new task in the old record
        now.push(task(6, 0x600, 0)); // new
        let list = TaskList { tasks: now.clone(), cpu_stacks: Vec::new() };
        let (rest, reused) = split(&pre, &list, &[]);
        assert_eq!(reused, 2, "{rest:?}");
        assert_eq!(rest.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2, 3, 4, 6]);
        // A vCPU's RSP on task 5's stack: it runs there, whatever its flags say.
        let mut v = VcpuState::default();
        v.gprs[VcpuState::RSP] = 0x50_0000 + 0x800;
        let (rest, reused) = split(&pre, &list, &[v]);
        assert_eq!((reused, rest.tasks.iter().map(|t| t.id).collect::<Vec<_>>()), (1, vec![2, 3, 4, 5, 6]));
        // No evidence, or a saved SP the evidence did not read: never reused.
        let mut odd = before.to_vec();
        odd[0].evidence = None;
        odd[4].saved_sp = Some(0x50_0000 + 0x508);
        let (_, reused) = split(&pre, &TaskList { tasks: odd, cpu_stacks: Vec::new() }, &[]);
        assert_eq!(reused, 3);
    }

    #[test]
    fn a_list_in_another_order_reuses_the_same_tasks() {
        let before = [task(1, 0x100, 5), task(2, 0x200, 5), task(3, 0x300, 5)];
        let pre = pre_of(&before);
        let mut now = before.to_vec();
        now.reverse();
        now.insert(1, task(9, 0x900, 1));
        let (rest, reused) = split(&pre, &TaskList { tasks: now, cpu_stacks: Vec::new() }, &[]);
        assert_eq!((reused, rest.tasks.iter().map(|t| t.id).collect::<Vec<_>>()), (3, vec![9]));
        // A task kept twice in the list (a forged list) is reused only as itself.
        let twice = vec![task(1, 0x100, 5), task(1, 0x100, 5), task(2, 0x200, 6)];
        let (rest, reused) = split(&pre, &TaskList { tasks: twice, cpu_stacks: Vec::new() }, &[]);
        assert_eq!((reused, rest.tasks.len()), (2, 1));
    }

    #[test]
    fn conflicts_are_compared_as_sets() {
        let c = |task: &str, function: &str| Conflict { task: Some(task.into()), task_id: Some(1), vcpu: None, kind: "stack", addr: 0x10, function: function.into() };
        assert_eq!(difference(&[c("a", "f+0x1"), c("b", "f+0x2")], &[c("b", "f+0x2"), c("a", "f+0x1")]), None);
        let d = difference(&[c("a", "f+0x1")], &[]).unwrap();
        assert!(d.contains("only the full check found [\"a/"), "{d}");
    }
}

//! The quiet-scheduler fast path of the incremental check's read under the
//! pause (issue 12): when no task was switched in and none forked since the
//! pre-check's read (guest running), the pause re-reads only the tasks that
//! can differ — the ones on a CPU then or now — instead of walking every
//! thread again (10,000 sleeping threads: ~5 ms of walk under the pause).
//!
//! The counter: C = the sum over every possible CPU of
//! `runqueues.nr_switches` plus `total_forks`, each monotonic; the vector
//! of them is kept and compared element by element (a guest cannot offset
//! one counter with another). The pre-check reads them *before* its walk
//! (a compiler fence between; [`QuietIndex`] remembers them and, per
//! position of the list, the `task_struct` address and stack); under the
//! pause [`reread`] reads them again and, when all are equal, re-reads:
//!
//! - the tasks the pre-check saw with `on_cpu` set;
//! - every CPU's `current_task` and `rq->curr`;
//! - every task whose stack holds a kernel-mode vCPU's RSP;
//!
//! and the CPU stacks and vCPU to CPU map as `super::task_list::build` does.
//! Anything else (counters moved, `tasklist_lock` write-held, a task
//! unknown to the index, a re-read task that is another task or unlinked
//! now, an unreadable word) is a [`NotQuiet`]: the caller walks as before.
//!
//! Why the other tasks are exactly as the pre-check saw them (6.1, x86-64):
//!
//! - A sleeping task's stack and saved SP (`thread.sp`) change only while
//!   it runs. Running needs a switch to it, and `__schedule` increments
//!   `rq->nr_switches` (when `prev != next`) and sets `rq->curr = next`
//!   before `context_switch`, which sets `next->on_cpu = 1`
//!   (`prepare_task`) before switching stacks.
//! - If that increment is not in the pre-check's C, C differs under the
//!   pause (all vCPUs stopped: every store is visible). If it is, and the
//!   task still runs at the pause, it is `rq->curr` (and, once switched,
//!   `current_task`) of its CPU: re-read. If it ran and switched away
//!   again, that switch-out's increment is either missing from C (C
//!   differs) or in it; in the latter case the guest CPU's stores are seen
//!   in program order (x86 TSO) and the pre-check loads in order (the
//!   counters first, then the walk: a compiler fence between, and x86 does
//!   not reorder loads with loads), so the walk saw the task's `on_cpu`
//!   either still 1 (re-read) or 0 from `finish_task`, whose release store
//!   comes after the switch completed: the saved SP read after it (the
//!   walk reads `on_cpu` before `thread.sp`, as [`QuietOffsets::resolve`]
//!   checks) is final, and so is the stack the pre-check unwinds later.
//! - A fork increments `total_forks` under `tasklist_lock` (write), after
//!   linking the new task: either the pre-check's C includes it and its
//!   walk (later loads) saw the new task, or C differs; a fork stopped
//!   inside that section holds the lock: not quiet.
//! - An exit unlinks the task under `tasklist_lock`, by the exiting task
//!   (running: on a CPU at the pause, re-read, and its thread list link is
//!   checked) or by a parent reaping a zombie, whose stack was freed at its
//!   last switch (left out of the list already: nothing to change).
//!
//! Gaps, written down: fields the check does not use for a sleeping task
//! can be stale on the quiet path — `cpu` after a wakeup moved a task that
//! had not run yet by the pause, `comm` renamed through `/proc` by another
//! task; and a zombie caught between `finish_task` and `put_task_stack` at
//! the pre-check read stays listed (its stack checked once more; it never
//! runs again). `compare` mode compares lists only in what the check reads
//! (`TaskList::same_for_check`: a stale `cpu` or `comm` of a sleeping task
//! is no mismatch); the zombie would be reported `incremental_mismatch`, a
//! false alarm, never a conflict missed.

use std::collections::HashMap;

use foldhash::fast::FixedState;
use thiserror::Error;

use super::btf::Btf;
use super::cpustacks;
use super::kallsyms::Kallsyms;
use super::task_list::{merge_cpu_stacks, task_infos, vcpu_cpus};
use super::tasks::{per_cpu_offsets, read_task, Task, TaskError, TaskOffsets, THREAD_SIZE};
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{GuestTasks, TaskInfo};

/// `_QW_LOCKED`: the write-locked byte of a `qrwlock`'s `cnts`.
const QW_LOCKED: u32 = 0xff;

/// Where the counters and the per-CPU current tasks are (kallsyms, BTF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietOffsets {
    /// Per-CPU offset of `runqueues`.
    runqueues: u64,
    /// `struct rq.nr_switches`.
    nr_switches: u64,
    /// `struct rq.curr`.
    curr: u64,
    /// Address of `total_forks`.
    total_forks: u64,
    /// Per-CPU offset of `current_task`.
    current_task: u64,
    /// Address of `tasklist_lock`.
    tasklist_lock: u64,
    /// `task_struct.thread_node` (the link checked on re-read tasks).
    thread_node: u64,
}

impl QuietOffsets {
    /// Resolves what the fast path needs; `None` (with the reason logged)
    /// when something is missing, and then every pause walks.
    pub fn resolve(k: &Kallsyms, btf: &Btf, off: &TaskOffsets) -> Option<Self> {
        let sym = |n: &str| {
            let a = k.first_addr(n);
            if a.is_none() {
                tracing::debug!(symbol = n, "quiet path off: symbol missing");
            }
            a
        };
        let rq = btf.find_struct("rq")?;
        let nr_switches = btf.member(rq, "nr_switches")?;
        let curr = btf.member(rq, "curr")?;
        let q = Self {
            runqueues: sym("runqueues")?,
            nr_switches: nr_switches.offset,
            curr: curr.offset,
            total_forks: sym("total_forks")?,
            current_task: sym("current_task")?,
            tasklist_lock: sym("tasklist_lock")?,
            thread_node: off.thread_node,
        };
        // One load per counter (never torn), and `on_cpu` read before
        // `thread.sp` (the spans are read in offset order).
        if nr_switches.size != Some(8) || !q.nr_switches.is_multiple_of(8) || !q.curr.is_multiple_of(8) || off.on_cpu >= off.thread_sp {
            tracing::debug!(?q, on_cpu = off.on_cpu, sp = off.thread_sp, "quiet path off: layout not as assumed");
            return None;
        }
        Some(q)
    }
}

/// Why the pause could not take the quiet path (then it walks).
#[derive(Debug, Error)]
pub enum NotQuiet {
    /// The list handed back is not the one indexed at the pre-check.
    #[error("the list was not indexed at the pre-check")]
    NotIndexed,
    /// `__per_cpu_offset[]` or `nr_cpu_ids` differ.
    #[error("the per-CPU offsets changed")]
    CpusChanged,
    /// A switch counter or `total_forks` moved.
    #[error("a task was switched in or forked since the pre-check")]
    Switched,
    /// `tasklist_lock` is held for writing (a fork or exit in flight).
    #[error("tasklist_lock is write-held")]
    ListLocked,
    /// A task on a CPU is not in the indexed list.
    #[error("task {0:#x} on a CPU is not in the pre-check's list")]
    UnknownTask(u64),
    /// A re-read task is no longer the one at its position.
    #[error("task {0:#x} changed identity or stack")]
    TaskChanged(u64),
    /// A re-read task is no longer on its thread list.
    #[error("task {0:#x} is unlinked")]
    Unlinked(u64),
    /// Reading failed.
    #[error("reading the scheduler state failed")]
    Unreadable(#[from] #[source] TaskError),
}

impl NotQuiet {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NotIndexed => "not_indexed",
            Self::CpusChanged => "cpus_changed",
            Self::Switched => "switched",
            Self::ListLocked => "tasklist_locked",
            Self::UnknownTask(_) => "task_unknown",
            Self::TaskChanged(_) => "task_changed",
            Self::Unlinked(_) => "task_unlinked",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

/// Lists at least this long are worth a retry rather than a walk under the
/// pause: a walk costs ~0.5–2 µs per task (measured, 2026-12-06), a failed
/// pause and resume ~0.5–1 ms, so below a thousand tasks the walk is as
/// cheap as stopping again.
pub const RETRY_FROM_TASKS: usize = 1_000;

/// When the quiet path failed with `e` on a list of `tasks` tasks and
/// another attempt is possible: true when resuming and trying again (a new
/// pre-check, a new pause) is better than walking under this pause — the
/// guest changed (a switch, a fork, a lock held, a task gone or unknown)
/// and the list is long. A list that was not indexed or a word that could
/// not be read is walked: trying again would find the same.
pub fn retry_rather_than_walk(e: &NotQuiet, tasks: usize) -> bool {
    let changed = matches!(
        e,
        NotQuiet::Switched | NotQuiet::ListLocked | NotQuiet::UnknownTask(_) | NotQuiet::TaskChanged(_) | NotQuiet::Unlinked(_)
    );
    changed && tasks >= RETRY_FROM_TASKS
}

/// The counters as read: per CPU `nr_switches`, then `total_forks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    per_cpu: Vec<u64>,
    values: Vec<u64>,
}

impl Counters {
    /// Reads `__per_cpu_offset[]` and every counter (one aligned load each).
    pub fn read(mem: &mut dyn KernelMemory, k: &Kallsyms, q: &QuietOffsets) -> Result<Self, TaskError> {
        let per_cpu = per_cpu_offsets(mem, k, 1)?;
        let mut values = Vec::with_capacity(per_cpu.len() + 1);
        let mut w = [0u64; 1];
        for base in &per_cpu {
            mem.read_words(base.wrapping_add(q.runqueues).wrapping_add(q.nr_switches), &mut w)?;
            values.push(w[0]);
        }
        mem.read_words(q.total_forks, &mut w)?;
        values.push(w[0]);
        Ok(Self { per_cpu, values })
    }

    /// C: the sum (what [`GuestTasks::changes`] carries).
    pub fn sum(&self) -> u64 {
        self.values.iter().fold(0u64, |a, &v| a.wrapping_add(v))
    }
}

/// What the pre-check's read leaves for the pause: its counters and, per
/// position of its list, the task's address and stack.
#[derive(Debug, Clone)]
pub struct QuietIndex {
    counters: Counters,
    addrs: Vec<u64>,
    by_addr: HashMap<u64, usize, FixedState>,
    /// `(stack start, position)`, by start.
    stacks: Vec<(u64, usize)>,
    /// Positions the pre-check's list has on a CPU (no vCPU known then:
    /// by the task's `on_cpu` flag alone).
    on_cpu: Vec<usize>,
}

impl QuietIndex {
    /// Indexes `list`, built from `raw` (the walk's tasks: those with a
    /// stack, in order, are the list's positions); `None` when the lengths
    /// do not match or an address repeats. The positions flagged on a CPU
    /// are noted here, with the guest running, so that the pause does not
    /// scan the list for them.
    pub fn build(counters: Counters, raw: &[Task], list: &[TaskInfo]) -> Option<Self> {
        let addrs: Vec<u64> = raw.iter().filter(|t| t.stack != 0).map(|t| t.addr).collect();
        if addrs.len() != list.len() {
            return None;
        }
        let mut by_addr = HashMap::with_capacity_and_hasher(list.len(), FixedState::default());
        let mut stacks = Vec::with_capacity(list.len());
        for (i, t) in raw.iter().filter(|t| t.stack != 0).enumerate() {
            if by_addr.insert(t.addr, i).is_some() {
                return None;
            }
            stacks.push((t.stack, i));
        }
        stacks.sort_unstable();
        let on_cpu = list.iter().enumerate().filter(|(_, t)| t.on_cpu).map(|(i, _)| i).collect();
        Some(Self { counters, addrs, by_addr, stacks, on_cpu })
    }

    /// C at the pre-check.
    pub fn sum(&self) -> u64 {
        self.counters.sum()
    }

    fn position(&self, addr: u64) -> Result<usize, NotQuiet> {
        self.by_addr.get(&addr).copied().ok_or(NotQuiet::UnknownTask(addr))
    }

    /// Positions whose stack `[start, start + THREAD_SIZE)` holds `x`.
    fn on_stack(&self, x: u64, out: &mut Vec<usize>) {
        let lo = x.saturating_sub(THREAD_SIZE - 1);
        let from = self.stacks.partition_point(|s| s.0 < lo);
        out.extend(self.stacks[from..].iter().take_while(|s| s.0 <= x).map(|s| s.1));
    }
}

/// Under the pause: when the counters are those of `idx` (the pre-check's),
/// re-reads in `prev` (the pre-check's list, the one `idx` was built
/// from: the caller hands back what the pre-check's read returned; its
/// source, length and counter sum are checked) only the tasks that can
/// differ, the CPU stacks and the vCPU to CPU map, and marks the re-read
/// positions in [`GuestTasks::changed`]. `prev` is changed only on success.
#[allow(clippy::too_many_arguments)]
pub fn reread(
    mem: &mut dyn KernelMemory,
    k: &Kallsyms,
    btf: Option<&Btf>,
    off: &TaskOffsets,
    q: &QuietOffsets,
    idx: &QuietIndex,
    prev: &mut GuestTasks,
    vcpus: &[VcpuState],
) -> Result<(), NotQuiet> {
    if prev.source != "agentless" || prev.changes != Some(idx.sum()) || prev.list.tasks.len() != idx.addrs.len() {
        return Err(NotQuiet::NotIndexed);
    }
    let now = Counters::read(mem, k, q)?;
    if now.per_cpu != idx.counters.per_cpu {
        return Err(NotQuiet::CpusChanged);
    }
    if now.values != idx.counters.values {
        return Err(NotQuiet::Switched);
    }
    if mem.read_u32(q.tasklist_lock).map_err(TaskError::from)? & QW_LOCKED != 0 {
        return Err(NotQuiet::ListLocked);
    }
    // On a CPU at the pre-check (no vCPU known then: by the flag alone).
    let mut pos = idx.on_cpu.clone();
    // On a CPU now: current_task and rq->curr of every CPU.
    let mut currents = Vec::with_capacity(now.per_cpu.len());
    for base in &now.per_cpu {
        let cur = mem.read_u64(base.wrapping_add(q.current_task)).map_err(TaskError::from)?;
        let rq_curr = mem.read_u64(base.wrapping_add(q.runqueues).wrapping_add(q.curr)).map_err(TaskError::from)?;
        for t in [cur, rq_curr] {
            if t != 0 {
                pos.push(idx.position(t)?);
            }
        }
        currents.push(cur);
    }
    for v in vcpus.iter().filter(|v| v.cpl() == 0) {
        idx.on_stack(v.rsp(), &mut pos);
    }
    pos.sort_unstable();
    pos.dedup();
    let mut raw = Vec::with_capacity(pos.len());
    for &i in &pos {
        let (addr, before) = (idx.addrs[i], &prev.list.tasks[i]);
        let t = read_task(mem, off, addr)?;
        if t.stack != before.stack.start || t.pid.max(0) as u64 != before.id {
            return Err(NotQuiet::TaskChanged(addr));
        }
        if t.pid != 0 && !linked(mem, addr.wrapping_add(q.thread_node))? {
            return Err(NotQuiet::Unlinked(addr));
        }
        raw.push(t);
    }
    // As `task_list::build`: the current task of each vCPU whose CPU is known.
    let cpus = vcpu_cpus(vcpus, &now.per_cpu);
    let current: Vec<Option<u64>> = cpus.iter().map(|c| c.and_then(|c| currents.get(c as usize).copied())).collect();
    let infos = task_infos(&raw, vcpus, &current)?;
    if infos.len() != pos.len() {
        return Err(NotQuiet::TaskChanged(0));
    }
    let walked = btf.map(|b| cpustacks::cpu_stacks(mem, k, b, true)).transpose()?;
    let cpu_stacks = merge_cpu_stacks(walked.as_deref(), None)?;
    for (&i, info) in pos.iter().zip(infos) {
        prev.list.tasks[i] = info;
    }
    prev.list.cpu_stacks = cpu_stacks;
    prev.vcpu_cpus = cpus;
    prev.changes = Some(now.sum());
    prev.changed = Some(pos);
    prev.reread = Some("quiet");
    Ok(())
}

/// True when the `list_head` at `node` is linked both ways.
fn linked(mem: &mut dyn KernelMemory, node: u64) -> Result<bool, TaskError> {
    let mut links = [0u64; 2];
    mem.read_words(node, &mut links)?;
    let [next, prev] = links;
    let mut back = [0u64; 2];
    mem.read_words(next, &mut back)?;
    let mut fwd = [0u64; 1];
    mem.read_words(prev, &mut fwd)?;
    Ok(back[1] == node && fwd[0] == node)
}

#[cfg(test)]
#[path = "sched_quiet_tests.rs"]
mod tests;

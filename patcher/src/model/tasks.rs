//! The stopped guest's tasks and stacks, as every kernel kind hands them to
//! the safety check (with the CPU each vCPU is, and where the list came
//! from), and why they could not be read.

use std::ops::Range;

use serde::Serialize;
use thiserror::Error;

use super::mem::MemError;

/// How many pauses in a row the same task may be disputed
/// ([`TargetError::Disputed`]) before the transaction refuses: a fork or
/// exit caught half-way is over within a few instructions of the guest;
/// the longest window, exec's (`de_thread` swaps pids; the agent hears of
/// it at `sched_process_exec`, after the binary is loaded), within a few
/// milliseconds. With the pause loop's backoff (5 ms doubling) the guest
/// has run for about 150 ms between the first and the sixth pause.
pub const DISPUTE_PAUSES: u32 = 6;

/// Why live target state could not be read.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The kernel is not up yet (or no longer): nothing to patch.
    #[error("the guest kernel is not up: {0}")]
    NotUp(String),
    /// The task list was caught mid-update (lock held, odd sequence): resume and retry.
    #[error("the task list is being updated ({0}); retry after the guest ran")]
    Inconsistent(String),
    /// The task list's sources disagree in a way a fork, exit, exec or
    /// rename caught half-way explains: resume and retry, but the same
    /// `tasks` disputed over [`DISPUTE_PAUSES`] pauses in a row is refused
    /// with `cause` (e.g. `agent_mismatch`).
    #[error("{message}")]
    Disputed {
        /// Stable cause when it persists.
        cause: &'static str,
        /// The tasks (`task_struct` addresses) disputed at this pause.
        tasks: Vec<u64>,
        /// What differs.
        message: String,
    },
    /// The task list is malformed.
    #[error("the task list is unusable: {0}")]
    Malformed(String),
    /// Guest memory could not be read.
    #[error("reading guest memory failed")]
    Memory(#[from] #[source] MemError),
    /// The task list's sources cannot be trusted (e.g. the guest agent and
    /// the agentless walk disagree); `cause` is stable (`agent_mismatch`, …).
    #[error("{message}")]
    Untrusted {
        /// Stable cause.
        cause: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl TargetError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NotUp(_) => "not_up",
            Self::Inconsistent(_) => "tasks_inconsistent",
            Self::Disputed { cause, .. } => cause,
            Self::Malformed(_) => "tasks_malformed",
            // The memory error's own name (`not_mapped`, `not_ram`, …).
            Self::Memory(e) => e.cause(),
            Self::Untrusted { cause, .. } => cause,
        }
    }
}

/// One task with its kernel stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// Task id (pid for Linux).
    pub id: u64,
    /// Name (comm for Linux).
    pub name: String,
    /// CPU it runs on or last ran on, when known.
    pub cpu: Option<u32>,
    /// Its kernel stack, `[lowest, highest)`.
    pub stack: Range<u64>,
    /// Stack pointer saved when it was switched out (valid when not on a CPU).
    pub saved_sp: Option<u64>,
    /// True when it is the current task of its CPU (its SP is that vCPU's RSP).
    pub on_cpu: bool,
    /// The scheduler's evidence of whether it ran, when the kernel kind can
    /// read it (the incremental check reuses an earlier verdict only on it);
    /// `None` for a task on a CPU or when the counters are unknown.
    #[serde(skip)]
    pub evidence: Option<TaskEvidence>,
}

/// What the scheduler says about one switched-out task, read together with
/// the list: if every field is the same at two reads and the task is on no
/// CPU at the second, it did not run in between (a task that runs is
/// switched out again before it can be seen off a CPU, and every switch-out
/// adds one to `nvcsw` or `nivcsw`), so its stack from `sp` up is what it
/// was. See `crate::safety::incremental`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskEvidence {
    /// Address of its `task_struct` (or the kind's task record).
    pub addr: u64,
    /// When it was created (`start_time`, ns since boot): a task record
    /// freed and reused by a new task is not the same task.
    pub start_time: u64,
    /// Voluntary context switches (`nvcsw`).
    pub nvcsw: u64,
    /// Involuntary context switches (`nivcsw`).
    pub nivcsw: u64,
    /// Saved stack pointer (`thread.sp`) as read.
    pub sp: u64,
}

/// A stack that belongs to a CPU rather than a task (IRQ, exception stacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuStack {
    /// CPU index.
    pub cpu: u32,
    /// What it is (`irq`, `nmi`, `db`, `df`, `mce`, …).
    pub kind: String,
    /// Its range.
    pub range: Range<u64>,
}

/// Every stack the safety check must scan, read with every vCPU stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskList {
    /// All tasks.
    pub tasks: Vec<TaskInfo>,
    /// Per-CPU IRQ and exception stacks (none in the test guest).
    pub cpu_stacks: Vec<CpuStack>,
}

impl TaskInfo {
    /// True when `other` gives the safety check the same stack to look at:
    /// same task, stack, saved stack pointer, CPU state and evidence. The
    /// name and last CPU of a task off every CPU are left out: another
    /// thread can rename it (`/proc/PID/comm`) and a wake-up can move it to
    /// another CPU's queue without it running, and the check reads neither.
    pub fn same_for_check(&self, other: &TaskInfo) -> bool {
        self.id == other.id
            && self.stack == other.stack
            && self.saved_sp == other.saved_sp
            && self.on_cpu == other.on_cpu
            && self.evidence == other.evidence
            && (!self.on_cpu || (self.name == other.name && self.cpu == other.cpu))
    }
}

impl TaskList {
    /// [`TaskInfo::same_for_check`] task by task, in order, and the same CPU stacks.
    pub fn same_for_check(&self, other: &TaskList) -> bool {
        self.cpu_stacks == other.cpu_stacks
            && self.tasks.len() == other.tasks.len()
            && self.tasks.iter().zip(&other.tasks).all(|(a, b)| a.same_for_check(b))
    }
}

/// One read of a stopped guest's tasks, as a kernel kind hands it to the
/// transaction: the list, the CPU each vCPU is, and where the list came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestTasks {
    /// Every stack the safety check must consider.
    pub list: TaskList,
    /// The guest CPU each vCPU is (vCPU order); `None` where it cannot be
    /// told, which the check answers by taking more stacks, never fewer.
    pub vcpu_cpus: Vec<Option<u32>>,
    /// Where the list came from (`testguest`, `agent`, `agentless`,
    /// `agent+agentless`).
    pub source: &'static str,
    /// Where the kernel's task source was found (for Linux: the guest
    /// agent's header, kernel-virtual). The caller hands it back to the next
    /// read, which looks there first; a stale one costs only a fresh lookup.
    pub source_at: Option<u64>,
    /// The kind's count of task-record changes at this read, when it keeps
    /// one (the test guest's change ring): handed back through
    /// [`crate::kernels::TargetKernel::tasks_again`], it lets the next read
    /// re-read only what changed since.
    pub changes: Option<u64>,
    /// Set by `tasks_again` only: the positions of `list.tasks` that may
    /// differ from the list it was handed, every other position being the
    /// same task with the same fields (sorted, no duplicates). `None`: any
    /// position may differ.
    pub changed: Option<Vec<usize>>,
    /// How [`crate::kernels::TargetKernel::tasks_again`] read this list,
    /// when the kind says: `quiet` (Linux: no task switched in or forked
    /// since the pre-check, only the tasks on a CPU re-read) or `walk`
    /// (read whole). `None` from `tasks`.
    pub reread: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(on_cpu: bool) -> TaskInfo {
        TaskInfo { id: 7, name: "worker".into(), cpu: Some(0), stack: 0x1000..0x5000, saved_sp: Some(0x4f00), on_cpu, evidence: None }
    }

    #[test]
    fn an_off_cpu_task_renamed_or_moved_is_the_same_for_the_check() {
        let (a, mut b) = (task(false), task(false));
        b.name = "renamed".into();
        b.cpu = Some(1);
        assert!(a.same_for_check(&b));
        let (a, mut b) = (task(true), task(true));
        b.cpu = Some(1);
        assert!(!a.same_for_check(&b), "on a CPU the CPU counts");
    }

    #[test]
    fn what_the_check_reads_must_be_equal() {
        let a = task(false);
        for change in [
            |t: &mut TaskInfo| t.saved_sp = Some(0x4e00),
            |t: &mut TaskInfo| t.stack = 0x2000..0x6000,
            |t: &mut TaskInfo| t.id = 8,
            |t: &mut TaskInfo| t.on_cpu = true,
            |t: &mut TaskInfo| t.evidence = Some(TaskEvidence { addr: 1, start_time: 2, nvcsw: 3, nivcsw: 4, sp: 5 }),
        ] {
            let mut b = task(false);
            change(&mut b);
            assert!(!a.same_for_check(&b), "{b:?}");
        }
        let l = TaskList { tasks: vec![a.clone()], cpu_stacks: Vec::new() };
        assert!(l.same_for_check(&l.clone()));
        assert!(!l.same_for_check(&TaskList { tasks: vec![a.clone(), a], cpu_stacks: Vec::new() }));
    }
}

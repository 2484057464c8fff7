//! What the task walk knows of `task_struct`: the members it reads (offsets
//! from BTF), one task as read, and why a walk fails. The walk itself is
//! `super::tasks`; the reading of one task, `super::task_read`.

use thiserror::Error;

use super::btf::Btf;
use crate::model::mem::MemError;

/// THREAD_SIZE on x86-64 without KASAN (Debian): 16 KiB kernel stacks.
pub const THREAD_SIZE: u64 = 16 * 1024;

/// Most CPU ids a kernel may claim (x86-64's largest `NR_CPUS`).
pub const MAX_CPUS: u32 = 8192;

/// Why the task list could not be read.
#[derive(Debug, Error)]
pub enum TaskError {
    /// BTF lacks a type or member the walk needs.
    #[error("BTF has no {0}")]
    MissingType(String),
    /// A symbol the walk needs is not in kallsyms.
    #[error("kallsyms has no {0}")]
    MissingSymbol(&'static str),
    /// prev/next pointers disagree or the list does not close: caught mid-update.
    #[error("{list} list is inconsistent at {node:#x}: {why} (retry after the guest ran)")]
    Inconsistent {
        /// Which list.
        list: &'static str,
        /// Node where it was noticed.
        node: u64,
        /// What was wrong.
        why: String,
    },
    /// A list longer than any real one (or lists that together are): a
    /// corrupted or hostile guest.
    #[error("{list} list has more than {limit} nodes")]
    TooLong {
        /// Which list.
        list: &'static str,
        /// The bound.
        limit: usize,
    },
    /// A walk ran over its time bound.
    #[error("walking the {list} list took longer than {limit_ms} ms")]
    TimeBound {
        /// The list being walked when time ran out.
        list: &'static str,
        /// The bound.
        limit_ms: u64,
    },
    /// A stack that cannot be one (it does not fit the address space, or
    /// is far bigger than any stack of its kind).
    #[error("implausible stack: {0}")]
    BadStack(String),
    /// A BTF search stopped at its bound: the type is unusable, not absent.
    #[error("the kernel's BTF could not be searched")]
    BtfBound(#[source] super::btf::BtfError),
    /// `nr_cpu_ids` is 0 or more than any kernel supports ([`MAX_CPUS`]).
    #[error("the kernel claims {0} CPU ids (nr_cpu_ids; at most {MAX_CPUS})")]
    CpuCount(u32),
    /// Reading guest memory failed.
    #[error("reading the task list failed")]
    Memory(#[from] #[source] MemError),
}

impl TaskError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::MissingType(_) => "btf_missing",
            Self::MissingSymbol(_) => "symbol_missing",
            Self::Inconsistent { .. } => "list_inconsistent",
            Self::TooLong { .. } => "list_too_long",
            Self::TimeBound { .. } => "walk_time_bound",
            Self::BadStack(_) => "stack_implausible",
            Self::CpuCount(_) => "cpu_count_implausible",
            Self::BtfBound(e) => e.cause(),
            Self::Memory(_) => "memory",
        }
    }
}

/// Offsets inside `task_struct` (and `signal_struct`) from BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.tasks` (list_head of processes).
    pub tasks: u64,
    /// `pid`.
    pub pid: u64,
    /// `tgid`.
    pub tgid: u64,
    /// `comm` (char[16]).
    pub comm: u64,
    /// `stack` (void *).
    pub stack: u64,
    /// `thread.sp`.
    pub thread_sp: u64,
    /// `__state`.
    pub state: u64,
    /// `on_cpu`.
    pub on_cpu: u64,
    /// `thread_info.cpu`.
    pub cpu: u64,
    /// `signal`.
    pub signal: u64,
    /// `thread_node`.
    pub thread_node: u64,
    /// `signal_struct.thread_head`.
    pub signal_thread_head: u64,
    /// `sizeof(struct task_struct)`.
    pub task_size: u64,
    /// The scheduler's evidence (`nvcsw`, `nivcsw`, `start_time`), when
    /// BTF has all three: without it every task is checked at every pause.
    pub sched: Option<SchedOffsets>,
}

/// Where the scheduler's evidence is in `task_struct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedOffsets {
    /// `nvcsw` (voluntary switches).
    pub nvcsw: u64,
    /// `nivcsw` (involuntary switches).
    pub nivcsw: u64,
    /// `start_time` (ns since boot).
    pub start_time: u64,
}

/// A task's scheduler evidence as read (see `crate::model::TaskEvidence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sched {
    /// `nvcsw`.
    pub nvcsw: u64,
    /// `nivcsw`.
    pub nivcsw: u64,
    /// `start_time`.
    pub start_time: u64,
}

impl TaskOffsets {
    /// Look every member up by name.
    pub fn from_btf(btf: &Btf) -> Result<Self, TaskError> {
        let ts = btf.find_struct("task_struct").ok_or_else(|| TaskError::MissingType("struct task_struct".into()))?;
        let ss = btf.find_struct("signal_struct").ok_or_else(|| TaskError::MissingType("struct signal_struct".into()))?;
        let m = |s: u32, sname: &str, path: &str| match btf.member_checked(s, path) {
            Ok(Some(i)) => Ok(i.offset),
            Ok(None) => Err(TaskError::MissingType(format!("{sname}.{path}"))),
            Err(e) => Err(TaskError::BtfBound(e)),
        };
        // The older name, only when the newer is absent (not when a bound stopped the search).
        let either = |a: Result<u64, TaskError>, b: &dyn Fn() -> Result<u64, TaskError>| match a {
            Err(TaskError::MissingType(_)) => b(),
            other => other,
        };
        Ok(Self {
            tasks: m(ts, "task_struct", "tasks")?,
            pid: m(ts, "task_struct", "pid")?,
            tgid: m(ts, "task_struct", "tgid")?,
            comm: m(ts, "task_struct", "comm")?,
            stack: m(ts, "task_struct", "stack")?,
            thread_sp: m(ts, "task_struct", "thread.sp")?,
            state: either(m(ts, "task_struct", "__state"), &|| m(ts, "task_struct", "state"))?,
            on_cpu: m(ts, "task_struct", "on_cpu")?,
            cpu: either(m(ts, "task_struct", "thread_info.cpu"), &|| m(ts, "task_struct", "cpu"))?,
            signal: m(ts, "task_struct", "signal")?,
            thread_node: m(ts, "task_struct", "thread_node")?,
            signal_thread_head: m(ss, "signal_struct", "thread_head")?,
            task_size: btf.size_of(ts).unwrap_or(0),
            sched: match (m(ts, "task_struct", "nvcsw"), m(ts, "task_struct", "nivcsw"), m(ts, "task_struct", "start_time")) {
                (Ok(nvcsw), Ok(nivcsw), Ok(start_time)) => Some(SchedOffsets { nvcsw, nivcsw, start_time }),
                _ => None,
            },
        })
    }
}

/// One task as the walk saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Address of its `task_struct`.
    pub addr: u64,
    /// Thread id.
    pub pid: i32,
    /// Process id.
    pub tgid: i32,
    /// Command name.
    pub comm: String,
    /// `__state` (0 = running/runnable).
    pub state: u32,
    /// Currently on a CPU.
    pub on_cpu: bool,
    /// CPU it last ran on.
    pub cpu: u32,
    /// Kernel stack base (`stack`); the stack is `[stack, stack + THREAD_SIZE)`.
    pub stack: u64,
    /// Saved kernel stack pointer (`thread.sp`), meaningful when not running.
    pub sp: u64,
    /// The scheduler's evidence, read before any of its stack (the walk
    /// reads it; an agent-only task has none).
    pub sched: Option<Sched>,
}

impl Task {
    /// End of the kernel stack.
    pub fn stack_end(&self) -> u64 {
        self.stack.wrapping_add(THREAD_SIZE)
    }

    /// A `ps`-like state letter.
    pub fn state_char(&self) -> char {
        match self.state {
            0 => 'R',
            s if s & 0x402 == 0x402 => 'I',
            s if s & 0x1 != 0 => 'S',
            s if s & 0x2 != 0 => 'D',
            s if s & 0x4 != 0 => 'T',
            s if s & 0x8 != 0 => 't',
            s if s & 0x80 != 0 => 'X',
            s if s & 0x100 != 0 => 'K',
            s if s & 0x200 != 0 => 'W',
            s if s & 0x400 != 0 => 'P',
            _ => '?',
        }
    }
}

//! The agentless task walk: from `init_task` over `tasks` (processes) and
//! each process's threads (`signal->thread_head` / `thread_node` on 6.1),
//! with BTF offsets; plus the task running on each CPU (per-CPU
//! `current_task` on 6.1). A list caught mid-update is an error for the
//! caller to retry after letting the guest run, never a partial list.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::btf::Btf;
use super::kallsyms::Kallsyms;
use crate::model::backend::VcpuState;
use crate::model::mem::{KernelMemory, MemError};

/// THREAD_SIZE on x86-64 without KASAN (Debian): 16 KiB kernel stacks.
pub const THREAD_SIZE: u64 = 16 * 1024;
/// Most nodes one list may have (`PID_MAX_LIMIT` is 4M; a guest with a
/// million tasks is far beyond anything vsplice parks).
pub const MAX_TASKS: usize = 1 << 20;
/// Most nodes one whole walk visits over all its lists (the process list
/// plus every thread list): thread lists that share nodes cannot multiply
/// the work.
pub const MAX_WALK_NODES: usize = 2 * MAX_TASKS;
/// Time bound on one walk of guest lists (every node is a read of guest
/// memory, over a gdbstub for attached guests).
pub const MAX_WALK_TIME: Duration = Duration::from_secs(30);

/// What one walk may still spend: nodes and time. Shared by every list of
/// one walk ([`walk_tasks`]).
#[derive(Debug, Clone)]
pub struct WalkBudget {
    nodes_left: usize,
    limit: usize,
    started: Instant,
    time: Duration,
}

impl WalkBudget {
    /// A budget of `nodes` nodes and `time`.
    pub fn new(nodes: usize, time: Duration) -> Self {
        Self { nodes_left: nodes, limit: nodes, started: Instant::now(), time }
    }

    /// The default bounds: [`MAX_WALK_NODES`], [`MAX_WALK_TIME`].
    pub fn standard() -> Self {
        Self::new(MAX_WALK_NODES, MAX_WALK_TIME)
    }

    /// Spend one node of `list`.
    pub fn spend(&mut self, list: &'static str) -> Result<(), TaskError> {
        if self.nodes_left == 0 {
            return Err(TaskError::TooLong { list, limit: self.limit });
        }
        self.nodes_left -= 1;
        if (self.limit - self.nodes_left) % 256 == 1 && self.started.elapsed() > self.time {
            return Err(TaskError::TimeBound { list, limit_ms: self.time.as_millis() as u64 });
        }
        Ok(())
    }
}

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

/// Walk a circular `list_head` starting at `head`; return the node addresses
/// (head excluded), checking every `next->prev` link. Bounded by
/// [`WalkBudget::standard`].
pub fn walk_list<M: KernelMemory + ?Sized>(mem: &mut M, head: u64, list: &'static str) -> Result<Vec<u64>, TaskError> {
    walk_list_in(mem, head, list, &mut WalkBudget::standard())
}

/// [`walk_list`] spending from `budget`: a list that never returns to its
/// head is `list_inconsistent` (a node seen twice) or `list_too_long`.
pub fn walk_list_in<M: KernelMemory + ?Sized>(mem: &mut M, head: u64, list: &'static str, budget: &mut WalkBudget) -> Result<Vec<u64>, TaskError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut node = head;
    loop {
        budget.spend(list)?;
        let next = mem.read_u64(node)?;
        let back = mem.read_u64(next.wrapping_add(8))?;
        if back != node {
            return Err(TaskError::Inconsistent { list, node, why: format!("next {next:#x} has prev {back:#x}") });
        }
        if next == head {
            return Ok(out);
        }
        if out.len() >= MAX_TASKS {
            return Err(TaskError::TooLong { list, limit: MAX_TASKS });
        }
        if !seen.insert(next) {
            return Err(TaskError::Inconsistent { list, node: next, why: "list does not return to its head".into() });
        }
        out.push(next);
        node = next;
    }
}

/// Read one task's fields.
pub fn read_task<M: KernelMemory + ?Sized>(mem: &mut M, off: &TaskOffsets, addr: u64) -> Result<Task, TaskError> {
    let mut comm = [0u8; 16];
    mem.read(addr.wrapping_add(off.comm), &mut comm)?;
    let end = comm.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(Task {
        addr,
        pid: mem.read_i32(addr.wrapping_add(off.pid))?,
        tgid: mem.read_i32(addr.wrapping_add(off.tgid))?,
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        state: mem.read_u32(addr.wrapping_add(off.state))?,
        on_cpu: mem.read_u32(addr.wrapping_add(off.on_cpu))? != 0,
        cpu: mem.read_u32(addr.wrapping_add(off.cpu))?,
        stack: mem.read_u64(addr.wrapping_add(off.stack))?,
        sp: mem.read_u64(addr.wrapping_add(off.thread_sp))?,
        sched: match off.sched {
            Some(o) => Some(Sched {
                nvcsw: mem.read_u64(addr.wrapping_add(o.nvcsw))?,
                nivcsw: mem.read_u64(addr.wrapping_add(o.nivcsw))?,
                start_time: mem.read_u64(addr.wrapping_add(o.start_time))?,
            }),
            None => None,
        },
    })
}

/// Every task (every thread of every process, idle task of CPU 0 first).
pub fn walk_tasks<M: KernelMemory + ?Sized>(mem: &mut M, off: &TaskOffsets, init_task: u64) -> Result<Vec<Task>, TaskError> {
    let mut budget = WalkBudget::standard();
    walk_tasks_in(mem, off, init_task, &mut budget)
}

/// [`walk_tasks`] spending from `budget` (the process list and every
/// thread list together).
pub fn walk_tasks_in<M: KernelMemory + ?Sized>(mem: &mut M, off: &TaskOffsets, init_task: u64, budget: &mut WalkBudget) -> Result<Vec<Task>, TaskError> {
    let procs = walk_list_in(mem, init_task.wrapping_add(off.tasks), "tasks", budget)?;
    let mut out = Vec::with_capacity(procs.len() * 2);
    let mut seen = HashSet::new();
    for leader in std::iter::once(init_task).chain(procs.into_iter().map(|n| n.wrapping_sub(off.tasks))) {
        let signal = mem.read_u64(leader.wrapping_add(off.signal))?;
        if signal == 0 {
            // A leader that is being reaped: count it alone.
            if seen.insert(leader) {
                out.push(read_task(mem, off, leader)?);
            }
            continue;
        }
        for node in walk_list_in(mem, signal.wrapping_add(off.signal_thread_head), "thread", budget)? {
            let t = node.wrapping_sub(off.thread_node);
            if seen.insert(t) {
                out.push(read_task(mem, off, t)?);
            }
        }
        if !seen.contains(&leader) {
            return Err(TaskError::Inconsistent { list: "thread", node: leader, why: "leader not on its own thread list".into() });
        }
    }
    Ok(out)
}

/// Most CPU ids a kernel may claim (x86-64's largest `NR_CPUS`).
pub const MAX_CPUS: u32 = 8192;

/// `__per_cpu_offset[0..nr_cpu_ids]`; an `nr_cpu_ids` of 0 or above
/// [`MAX_CPUS`] is refused ([`TaskError::CpuCount`]), not clamped: a
/// kernel that lies about it cannot be trusted for its CPUs' stacks.
pub fn per_cpu_offsets<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, fallback_cpus: usize) -> Result<Vec<u64>, TaskError> {
    let pco = k.first_addr("__per_cpu_offset").ok_or(TaskError::MissingSymbol("__per_cpu_offset"))?;
    let nr = match k.first_addr("nr_cpu_ids") {
        Some(a) => match mem.read_u32(a)? {
            n @ 1..=MAX_CPUS => n,
            n => return Err(TaskError::CpuCount(n)),
        },
        None => fallback_cpus.max(1) as u32,
    };
    let mut offs = Vec::with_capacity(nr as usize);
    for c in 0..nr {
        offs.push(mem.read_u64(pco + 8 * u64::from(c))?);
    }
    Ok(offs)
}

/// The idle tasks of CPUs 1.. (per-CPU `idle_threads`): they are on no task
/// list (pid 0), yet their stacks matter. CPU 0's is `init_task`.
pub fn idle_tasks<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, off: &TaskOffsets) -> Result<Vec<Task>, TaskError> {
    let idle = k.first_addr("idle_threads").ok_or(TaskError::MissingSymbol("idle_threads"))?;
    let mut out = Vec::new();
    for (cpu, base) in per_cpu_offsets(mem, k, 1)?.into_iter().enumerate().skip(1) {
        let t = mem.read_u64(base.wrapping_add(idle))?;
        if t != 0 {
            let task = read_task(mem, off, t)?;
            if task.pid != 0 {
                return Err(TaskError::Inconsistent { list: "idle_threads", node: t, why: format!("cpu {cpu} idle task has pid {}", task.pid) });
            }
            out.push(task);
        }
    }
    Ok(out)
}

/// Every task including the idle tasks of all CPUs.
pub fn all_tasks<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, off: &TaskOffsets) -> Result<Vec<Task>, TaskError> {
    let init = k.first_addr("init_task").ok_or(TaskError::MissingSymbol("init_task"))?;
    let mut list = walk_tasks(mem, off, init)?;
    for t in idle_tasks(mem, k, off)? {
        if !list.iter().any(|x| x.addr == t.addr) {
            list.push(t);
        }
    }
    Ok(list)
}

/// The CPU `v` is, by its GS base (kernel mode) or `KERNEL_GS_BASE` (user
/// mode, where user code cannot have set it) matched against
/// `__per_cpu_offset[]` (`per_cpu`); `None` when neither matches.
pub fn vcpu_cpu(v: &VcpuState, per_cpu: &[u64]) -> Option<u32> {
    let base = if v.cpl() == 0 { Some(v.gs_base) } else { v.kernel_gs_base };
    base.and_then(|b| per_cpu.iter().position(|&o| o == b)).and_then(|c| u32::try_from(c).ok())
}

/// The task on each vCPU, for display: `(vcpu index, cpu number, task
/// address)`. The CPU is [`vcpu_cpu`], else taken as the vCPU index (a
/// guess the safety check never makes: see `super::task_list`).
pub fn current_tasks<M: KernelMemory + ?Sized>(
    mem: &mut M,
    k: &Kallsyms,
    vcpus: &[VcpuState],
) -> Result<Vec<(usize, u32, u64)>, TaskError> {
    let cur = k.first_addr("current_task").ok_or(TaskError::MissingSymbol("current_task"))?;
    let offs = per_cpu_offsets(mem, k, vcpus.len())?;
    let mut out = Vec::new();
    for v in vcpus {
        let cpu = vcpu_cpu(v, &offs).map_or(v.index.min(offs.len().saturating_sub(1)), |c| c as usize);
        let task = mem.read_u64(offs[cpu].wrapping_add(cur))?;
        out.push((v.index, cpu as u32, task));
    }
    Ok(out)
}

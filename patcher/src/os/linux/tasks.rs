//! The agentless task walk: from `init_task` over `tasks` (processes) and
//! each process's threads (`signal->thread_head` / `thread_node` on 6.1),
//! with BTF offsets; plus the task running on each CPU (per-CPU
//! `current_task` on 6.1). A list caught mid-update is an error for the
//! caller to retry after letting the guest run, never a partial list.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use foldhash::fast::FixedState;

use super::kallsyms::Kallsyms;
use super::task_read::TaskSpans;
pub use super::task_struct::{Sched, SchedOffsets, Task, TaskError, TaskOffsets, MAX_CPUS, THREAD_SIZE};
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;

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


/// Walk a circular `list_head` starting at `head`; return the node addresses
/// (head excluded), checking every `next->prev` link. Bounded by
/// [`WalkBudget::standard`].
pub fn walk_list<M: KernelMemory + ?Sized>(mem: &mut M, head: u64, list: &'static str) -> Result<Vec<u64>, TaskError> {
    walk_list_in(mem, head, list, &mut WalkBudget::standard())
}

/// [`walk_list`] spending from `budget`: a list that never returns to its
/// head is `list_inconsistent` (a node seen twice) or `list_too_long`. Each
/// node's `next` and `prev` are read together, as aligned words
/// ([`KernelMemory::read_words`]).
pub fn walk_list_in<M: KernelMemory + ?Sized>(mem: &mut M, head: u64, list: &'static str, budget: &mut WalkBudget) -> Result<Vec<u64>, TaskError> {
    walk_list_hinted(mem, head, list, budget, &[], 0)
}

/// [`walk_list_in`], prefetching the node [`PREFETCH_AHEAD`] places ahead
/// as `guess` predicts it (`guess[i] + link`: the expected address of node
/// `i`, from an earlier walk). The guess is only a cache hint: what is read,
/// checked and returned is exactly [`walk_list_in`]'s, whatever it says.
fn walk_list_hinted<M: KernelMemory + ?Sized>(mem: &mut M, head: u64, list: &'static str, budget: &mut WalkBudget, guess: &[u64], link: u64) -> Result<Vec<u64>, TaskError> {
    let mut out = Vec::new();
    for &g in guess.iter().take(PREFETCH_AHEAD) {
        mem.prefetch(g.wrapping_add(link), 16);
    }
    let mut seen = AddrSet::default();
    let mut node = head;
    let mut next = mem.read_u64(head)?;
    loop {
        budget.spend(list)?;
        // The next node's own links: its prev must be this node, its next is
        // where the walk goes after it.
        let mut links = [0u64; 2];
        mem.read_words(next, &mut links)?;
        let [after, back] = links;
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
        if let Some(&g) = guess.get(out.len() + PREFETCH_AHEAD) {
            mem.prefetch(g.wrapping_add(link), 16);
        }
        out.push(next);
        node = next;
        next = after;
    }
}

/// How many tasks ahead of the one being read the walk prefetches.
const PREFETCH_AHEAD: usize = 8;

/// A set of guest addresses (fast hashing: a walk inserts every node).
type AddrSet = HashSet<u64, FixedState>;

/// Read one task's fields (in a few spans of words: [`TaskSpans`]).
pub fn read_task<M: KernelMemory + ?Sized>(mem: &mut M, off: &TaskOffsets, addr: u64) -> Result<Task, TaskError> {
    TaskSpans::new(off).read(mem, addr, &mut Vec::new())
}

/// Read one task's fields one read per field (what [`TaskSpans`] must agree with).
#[cfg(test)]
pub(crate) fn read_task_fields<M: KernelMemory + ?Sized>(mem: &mut M, off: &TaskOffsets, addr: u64) -> Result<Task, TaskError> {
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
    walk_tasks_trailed(mem, off, init_task, budget, &mut Trail::default())
}

/// The task addresses of the last walk, in the order it returned them: a
/// prefetch hint for the next walk, which then loads the thread-list nodes
/// it expects ahead of the pointer chase (independent loads instead of one
/// dependent cache and TLB miss per thread). Never trusted: a stale or
/// forged trail only prefetches the wrong lines.
#[derive(Debug, Clone, Default)]
pub struct Trail(Vec<u64>);

impl Trail {
    /// Tasks recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True before any walk.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// [`walk_tasks_in`] guided by (and recording into) `trail`: the same
/// reads, checks and result, with the nodes the last walk found prefetched
/// ahead of the chase. The trail is replaced by this walk's only when it
/// succeeds.
pub fn walk_tasks_trailed<M: KernelMemory + ?Sized>(mem: &mut M, off: &TaskOffsets, init_task: u64, budget: &mut WalkBudget, trail: &mut Trail) -> Result<Vec<Task>, TaskError> {
    let procs = walk_list_in(mem, init_task.wrapping_add(off.tasks), "tasks", budget)?;
    let mut out = Vec::with_capacity(procs.len() * 2);
    let mut seen = AddrSet::default();
    let spans = TaskSpans::new(off);
    let mut scratch = Vec::new();
    for leader in std::iter::once(init_task).chain(procs.into_iter().map(|n| n.wrapping_sub(off.tasks))) {
        let signal = mem.read_u64(leader.wrapping_add(off.signal))?;
        if signal == 0 {
            // A leader that is being reaped: count it alone.
            if seen.insert(leader) {
                out.push(spans.read(mem, leader, &mut scratch)?);
            }
            continue;
        }
        // The last walk's tasks from here on: this thread list's, if
        // nothing changed (the list of the next leader starts where `out` is).
        let guess = trail.0.get(out.len()..).unwrap_or(&[]);
        let nodes = walk_list_hinted(mem, signal.wrapping_add(off.signal_thread_head), "thread", budget, guess, off.thread_node)?;
        let task = |i: usize| nodes.get(i).map(|n| n.wrapping_sub(off.thread_node));
        for i in 0..PREFETCH_AHEAD {
            if let Some(t) = task(i) {
                spans.prefetch(mem, t);
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            // The loads of the next tasks overlap this one's.
            if let Some(ahead) = task(i + PREFETCH_AHEAD) {
                spans.prefetch(mem, ahead);
            }
            let t = node.wrapping_sub(off.thread_node);
            if seen.insert(t) {
                out.push(spans.read(mem, t, &mut scratch)?);
            }
        }
        if !seen.contains(&leader) {
            return Err(TaskError::Inconsistent { list: "thread", node: leader, why: "leader not on its own thread list".into() });
        }
    }
    trail.0.clear();
    trail.0.extend(out.iter().map(|t| t.addr));
    Ok(out)
}


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
    all_tasks_trailed(mem, k, off, &mut Trail::default())
}

/// [`all_tasks`] with the walk guided by, and recorded into, `trail`
/// ([`walk_tasks_trailed`]).
pub fn all_tasks_trailed<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, off: &TaskOffsets, trail: &mut Trail) -> Result<Vec<Task>, TaskError> {
    let init = k.first_addr("init_task").ok_or(TaskError::MissingSymbol("init_task"))?;
    let mut list = walk_tasks_trailed(mem, off, init, &mut WalkBudget::standard(), trail)?;
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

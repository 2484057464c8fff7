//! The one list of a stopped Linux guest's stacks that the safety check
//! gets, and the CPU each vCPU is: built the same way for a transaction
//! (`LinuxTarget::tasks`) and for the tests and tools
//! ([`super::view::read_view`]), from the tasks the agent and/or the walk
//! found ([`super::view::read_tasks`]).
//!
//! The rules (the check itself decides which CPU stacks are live and how
//! each stack is checked; this only says what is there, never less):
//!
//! - the CPU of a vCPU: its GS base in kernel mode, `KERNEL_GS_BASE` in
//!   user mode, matched against `__per_cpu_offset[]`; never guessed from
//!   the vCPU index; two vCPUs claiming the same CPU both count as unknown;
//! - a task whose stack is freed (`stack == NULL`: it switched away for the
//!   last time) has nothing to check and is left out; a stack that does not
//!   fit the address space is an error, never skipped;
//! - the current task of a vCPU in kernel mode, a task whose stack holds a
//!   kernel-mode vCPU's RSP, and a task with `on_cpu` set are on a CPU (no
//!   saved SP: checked from the vCPU's registers, else whole);
//! - the current task of a vCPU in user mode (no kernel-mode vCPU on its
//!   stack) has only its user registers on its kernel stack: its saved SP is
//!   the top `pt_regs`;
//! - any other task: switched out, its saved SP `thread.sp` when that is on
//!   its stack (else none, and the check takes the stack whole);
//! - CPU stacks: every CPU's, both the agent's records and the ones found
//!   through kallsyms and BTF ([`super::cpustacks`]), each once; a stack
//!   larger than any CPU stack is an error.

use tracing::{debug, info};

use super::btf::Btf;
use super::cpustacks;
use super::kallsyms::Kallsyms;
use super::tasks::{per_cpu_offsets, vcpu_cpu, Task, TaskError, THREAD_SIZE};
use super::unwind::PT_REGS_SIZE;
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{CpuStack, TaskEvidence, TaskInfo, TaskList};

/// Longest CPU stack believed (6.1: IRQ 16 KiB, exception stacks 4 KiB, the
/// entry stack a page; twice that with KASAN).
pub const MAX_CPU_STACK: u64 = 64 << 10;

/// The CPU each vCPU is (vCPU order), by [`vcpu_cpu`]; a CPU claimed by
/// two vCPUs is unknown for both.
pub fn vcpu_cpus(vcpus: &[VcpuState], per_cpu: &[u64]) -> Vec<Option<u32>> {
    let mut out: Vec<Option<u32>> = vcpus.iter().map(|v| vcpu_cpu(v, per_cpu)).collect();
    let claimed = out.clone();
    for (i, c) in out.iter_mut().enumerate() {
        if c.is_some() && claimed.iter().enumerate().any(|(j, d)| j != i && d == c) {
            debug!(vcpu = i, cpu = *c, "two vCPUs claim the same CPU: taking it as unknown");
            *c = None;
        }
    }
    out
}

/// Each task with its stack and how the check must take it (the rules of
/// the module doc). `current[i]`: the `task_struct` current on vCPU `i`'s
/// CPU, when known.
pub fn task_infos(raw: &[Task], vcpus: &[VcpuState], current: &[Option<u64>]) -> Result<Vec<TaskInfo>, TaskError> {
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        if t.stack == 0 {
            continue;
        }
        let end = t
            .stack
            .checked_add(THREAD_SIZE)
            .ok_or_else(|| TaskError::BadStack(format!("pid {} ({}): stack at {:#x} runs past the address space", t.pid, t.comm, t.stack)))?;
        let stack = t.stack..end;
        let kernel_rsp_on = vcpus.iter().any(|v| v.cpl() == 0 && stack.contains(&v.rsp()));
        let current_on = |kernel: bool| vcpus.iter().zip(current).any(|(v, c)| *c == Some(t.addr) && (v.cpl() == 0) == kernel);
        let (on_cpu, saved_sp) = if kernel_rsp_on || current_on(true) {
            (true, None)
        } else if current_on(false) {
            (false, Some(end - PT_REGS_SIZE))
        } else if t.on_cpu {
            (true, None)
        } else {
            (false, Some(t.sp).filter(|sp| stack.contains(sp)))
        };
        // Evidence only for a task switched out and current on no vCPU
        // (`crate::safety::incremental`): the others are checked every time.
        let current_anywhere = current.contains(&Some(t.addr));
        let evidence = match (t.sched, on_cpu || t.on_cpu || current_anywhere) {
            (Some(s), false) => Some(TaskEvidence { addr: t.addr, start_time: s.start_time, nvcsw: s.nvcsw, nivcsw: s.nivcsw, sp: t.sp }),
            _ => None,
        };
        out.push(TaskInfo { id: t.pid.max(0) as u64, name: t.comm.clone(), cpu: Some(t.cpu), stack, saved_sp, on_cpu, evidence });
    }
    Ok(out)
}

/// Every CPU stack of both sources, each once (the walk's first). The two
/// should agree; where they do not, both are kept.
pub fn merge_cpu_stacks(walked: Option<&[CpuStack]>, agent: Option<&[CpuStack]>) -> Result<Vec<CpuStack>, TaskError> {
    let mut out: Vec<CpuStack> = Vec::new();
    for s in walked.into_iter().flatten().chain(agent.into_iter().flatten()) {
        let len = s.range.end.checked_sub(s.range.start).filter(|l| (1..=MAX_CPU_STACK).contains(l));
        if len.is_none() {
            return Err(TaskError::BadStack(format!("cpu {} {} stack {:#x}..{:#x}", s.cpu, s.kind, s.range.start, s.range.end)));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    if let (Some(w), Some(a)) = (walked, agent) {
        if w.len() != a.len() || w.iter().any(|s| !a.contains(s)) {
            info!(walked = w.len(), agent = a.len(), all = out.len(), "the agent's CPU stacks differ from the ones found without it: checking all");
        }
    }
    Ok(out)
}

/// The list and the vCPU to CPU map from `tasks` (the agent's and/or the
/// walk's), `agent_stacks` (the agent's CPU records, when it was used) and
/// what is read now: `__per_cpu_offset[]`, each CPU's `current_task`, and
/// with `btf` every CPU's stacks.
pub fn build<M: KernelMemory + ?Sized>(
    mem: &mut M,
    k: &Kallsyms,
    btf: Option<&Btf>,
    tasks: &[Task],
    agent_stacks: Option<&[CpuStack]>,
    vcpus: &[VcpuState],
) -> Result<(TaskList, Vec<Option<u32>>), TaskError> {
    let per_cpu = match per_cpu_offsets(mem, k, vcpus.len()) {
        Ok(p) => p,
        Err(TaskError::MissingSymbol(s)) => {
            debug!(symbol = s, "no per-CPU offsets: no vCPU's CPU is known");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let cpus = vcpu_cpus(vcpus, &per_cpu);
    let mut current = vec![None; vcpus.len()];
    match k.first_addr("current_task") {
        Some(cur) => {
            for (slot, cpu) in current.iter_mut().zip(&cpus) {
                if let Some(base) = cpu.and_then(|c| per_cpu.get(c as usize)) {
                    *slot = Some(mem.read_u64(base.wrapping_add(cur))?);
                }
            }
        }
        None => debug!("no current_task symbol: no vCPU's task is known"),
    }
    let walked = btf.map(|b| cpustacks::cpu_stacks(mem, k, b, true)).transpose()?;
    let cpu_stacks = merge_cpu_stacks(walked.as_deref(), agent_stacks)?;
    let tasks = task_infos(tasks, vcpus, &current)?;
    debug!(tasks = tasks.len(), cpu_stacks = cpu_stacks.len(), ?cpus, "Linux task list");
    Ok((TaskList { tasks, cpu_stacks }, cpus))
}

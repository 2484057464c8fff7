//! The stopped vCPUs' part of the check: which task each vCPU runs, its
//! RIP as a conflict, and (ORC check) the unwind from its registers through
//! its CPU's own stacks into the interrupted task's stack.
//!
//! A vCPU runs the task whose stack holds its RSP; on a CPU stack, the one
//! task on a CPU of its CPU (else any task on a CPU: the unwind tells which
//! stack it reaches). A vCPU in user mode has nothing live on kernel stacks,
//! and neither has one in kernel mode whose RSP is still a user address
//! (the syscall entry before its stack switch, the exit after it).
//! When an unwind from the registers cannot be trusted, every stack of that
//! vCPU's CPU and its task's stack from the RSP are scanned instead.
//!
//! A vCPU in kernel mode whose RSP is on no listed stack (an exiting task
//! already off the task list, a boot stack, agentless mode) is never left
//! unchecked: its stack is scanned from the RSP to the next
//! [`ORPHAN_STACK_ALIGN`] boundary ([`scan_orphan`], both checks); when that
//! cannot be read it is an `unchecked_stack` conflict, and the pause is
//! retried like any busy one.

use std::ops::Range;

use super::cpu_stacks;
use super::findings::{Findings, Owner};
use super::scan::scan;
use super::CheckInput;
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{TargetError, TaskInfo, TaskList};
use crate::os::linux::unwind::{OrcUnwinder, Start};

/// Kernel stacks on x86-64 end on a multiple of this (Linux's THREAD_SIZE
/// stacks are THREAD_SIZE aligned, 16 KiB without KASAN; the test guest's
/// task stacks likewise): a stack no list names is scanned from the RSP up
/// to the next one.
pub(super) const ORPHAN_STACK_ALIGN: u64 = 16 << 10;

/// The live part of the stack `v` is on when it is in kernel mode on none
/// of the listed stacks: its RSP up to the next [`ORPHAN_STACK_ALIGN`] boundary.
pub(super) fn orphan_stack(v: &VcpuState, list: &TaskList) -> Option<Range<u64>> {
    if v.cpl() != 0 {
        return None;
    }
    let rsp = v.rsp();
    let listed = list.tasks.iter().any(|t| t.stack.contains(&rsp)) || list.cpu_stacks.iter().any(|s| s.range.contains(&rsp));
    if listed {
        return None;
    }
    let end = (rsp | (ORPHAN_STACK_ALIGN - 1)).checked_add(1)?;
    Some(rsp..end)
}

/// Scans the stack of `v` when it is on no listed stack (see [`orphan_stack`]);
/// unreadable, it is an `unchecked_stack` conflict.
pub(super) fn scan_orphan(mem: &mut dyn KernelMemory, f: &mut Findings<'_>, v: &VcpuState, list: &TaskList) {
    let Some(range) = orphan_stack(v, list) else { return };
    f.fallback(format!("vcpu {}", v.index), format!("RSP {:#x} is on no known stack: scanned to {:#x}", range.start, range.end));
    if let Err(e) = scan(mem, f, Owner::Unknown, range.clone()) {
        f.unchecked_stack(v.index, range.start, e.to_string());
    }
}

/// The task a vCPU runs, as far as the list tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Running {
    /// The task it runs, when the list says which (index into the tasks).
    pub(super) known: Option<usize>,
    /// The tasks it may run: `known` alone, else those on a CPU (of its
    /// CPU when there are any, else all).
    pub(super) candidates: Vec<usize>,
}

/// Which task `v` (the vCPU of guest CPU `cpu`, when known) runs.
pub(super) fn running(tasks: &[TaskInfo], v: &VcpuState, cpu: Option<u32>) -> Running {
    let rsp = v.rsp();
    if let Some(i) = tasks.iter().position(|t| t.stack.contains(&rsp)) {
        return Running { known: Some(i), candidates: vec![i] };
    }
    let on_cpu = |i: &usize| tasks[*i].on_cpu;
    let mine: Vec<usize> = match cpu {
        Some(c) => (0..tasks.len()).filter(on_cpu).filter(|&i| tasks[i].cpu == Some(c)).collect(),
        None => Vec::new(),
    };
    match mine.as_slice() {
        [one] => Running { known: Some(*one), candidates: mine },
        [] => Running { known: None, candidates: (0..tasks.len()).filter(on_cpu).collect() },
        _ => Running { known: None, candidates: mine },
    }
}

/// `v`'s RIP as a conflict, naming the task it runs.
pub(super) fn rip(f: &mut Findings<'_>, tasks: &[TaskInfo], v: &VcpuState, known: Option<usize>) {
    f.code(Owner::task(known.map(|i| &tasks[i])), Some(v.index), "rip", v.rip, v.rip);
}

/// True for an address in the kernel's half of the address space (4- and
/// 5-level paging alike: the top bit set).
fn kernel_half(addr: u64) -> bool {
    addr >> 63 == 1
}

/// What the vCPUs' unwinds covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Covered {
    /// Per task: checked through a vCPU (unwound, scanned, or running in user mode).
    pub(super) tasks: Vec<bool>,
    /// Per CPU stack: in use by a vCPU (and checked).
    pub(super) cpu_stacks: Vec<bool>,
}

/// Every vCPU's RIP and, in kernel mode, its unwind from its registers (or
/// the scan of its stacks where the unwind cannot be trusted).
pub(super) fn unwind_all(u: &OrcUnwinder, mem: &mut dyn KernelMemory, input: &CheckInput<'_>, f: &mut Findings<'_>) -> Result<Covered, TargetError> {
    let tasks = &input.tasks.tasks;
    let cpu_stacks = &input.tasks.cpu_stacks;
    let mut cov = Covered { tasks: vec![false; tasks.len()], cpu_stacks: vec![false; cpu_stacks.len()] };
    for (vi, v) in input.vcpus.iter().enumerate() {
        let cpu = cpu_stacks::cpu_of(v, input.vcpu_cpus.get(vi).copied().flatten(), cpu_stacks);
        let Running { known, candidates } = running(tasks, v, cpu);
        rip(f, tasks, v, known);
        if v.cpl() != 0 || !kernel_half(v.rsp()) {
            // User mode: its kernel stack holds nothing live. The same for
            // kernel code still (or again) on the user stack: the first
            // instructions of the syscall entry before the switch to the
            // task's stack, the last ones of the exit after it; no kernel
            // frame is live on any kernel stack then (its RIP is checked).
            if let (Some(i), Some(_)) = (known, cpu) {
                cov.tasks[i] = true;
            }
            continue;
        }
        let own: Vec<usize> = (0..cpu_stacks.len()).filter(|&i| cpu.is_none_or(|c| cpu_stacks[i].cpu == c)).collect();
        let mut stacks: Vec<Range<u64>> = own.iter().map(|&i| cpu_stacks[i].range.clone()).collect();
        stacks.extend(candidates.iter().map(|&i| tasks[i].stack.clone()));
        let w = u.unwind(mem, Start::Regs { rip: v.rip, gprs: v.gprs }, &stacks);
        let reached = w.visited.iter().find_map(|&s| s.checked_sub(own.len()).and_then(|c| candidates.get(c).copied())).or(known);
        match &w.unreliable {
            None => {
                for &s in w.visited.iter().filter(|&&s| s < own.len()) {
                    cov.cpu_stacks[own[s]] = true;
                }
                if let Some(i) = reached {
                    cov.tasks[i] = true;
                }
                f.frames(Owner::task(reached.map(|i| &tasks[i])), &w);
            }
            Some(why) => {
                f.fallback(format!("vcpu {}", v.index), why.clone());
                for &i in &own {
                    cov.cpu_stacks[i] = true;
                    let s = &cpu_stacks[i];
                    scan(mem, f, Owner::Cpu(s), s.range.clone())?;
                }
                if let Some(i) = known {
                    let t = &tasks[i];
                    let rsp = v.rsp();
                    let from = if t.stack.contains(&rsp) { rsp } else { t.stack.start };
                    scan(mem, f, Owner::Task(t), from..t.stack.end)?;
                    cov.tasks[i] = true;
                }
                scan_orphan(mem, f, v, input.tasks);
            }
        }
    }
    Ok(cov)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, cpu: u32, base: u64, on_cpu: bool) -> TaskInfo {
        TaskInfo { id, name: format!("t{id}"), cpu: Some(cpu), stack: base..base + 0x4000, saved_sp: None, on_cpu, evidence: None }
    }

    fn vcpu(rsp: u64) -> VcpuState {
        let mut v = VcpuState::default();
        v.gprs[VcpuState::RSP] = rsp;
        v
    }

    #[test]
    fn a_vcpu_runs_the_task_its_rsp_is_on_else_the_one_on_its_cpu() {
        let tasks = [task(1, 0, 0x10_0000, true), task(2, 1, 0x20_0000, true), task(3, 1, 0x30_0000, false)];
        // RSP on a task's stack: that task, whatever the CPU says.
        assert_eq!(running(&tasks, &vcpu(0x30_0100), Some(0)), Running { known: Some(2), candidates: vec![2] });
        // On a CPU stack: the one task on a CPU of its CPU.
        assert_eq!(running(&tasks, &vcpu(0x9000), Some(1)), Running { known: Some(1), candidates: vec![1] });
        // CPU unknown, or none of its tasks on a CPU: any task on a CPU may be it.
        assert_eq!(running(&tasks, &vcpu(0x9000), None), Running { known: None, candidates: vec![0, 1] });
        assert_eq!(running(&tasks, &vcpu(0x9000), Some(7)), Running { known: None, candidates: vec![0, 1] });
        // Two tasks on a CPU of its CPU (one mid-switch): either, not a guess.
        let two = [task(1, 0, 0x10_0000, true), task(2, 0, 0x20_0000, true)];
        assert_eq!(running(&two, &vcpu(0x9000), Some(0)), Running { known: None, candidates: vec![0, 1] });
    }
}

//! The precise safety check (`--check orc`): instead of every word of every
//! stack, the return addresses an ORC unwind proves (and each vCPU's RIP and
//! every interrupted instruction on the way) are tested against the ranges
//! being replaced. A stale code address left in a dead local is therefore
//! no conflict. Where an unwind cannot be trusted, that stack is scanned
//! conservatively (Ksplice's word scan) and the summary says which and why,
//! so the check is never less safe than the conservative one:
//!
//! - each vCPU in kernel mode is unwound from its registers through its
//!   CPU's IRQ/exception/entry stacks into the interrupted task's stack;
//!   failing that, all of that CPU's stacks and its current task's stack
//!   are scanned (a vCPU in user mode has nothing live on kernel stacks);
//! - each task that no vCPU runs is unwound from its saved frame; failing
//!   that, its stack is scanned from the saved SP (a saved SP inside the
//!   top `pt_regs` means a task in user mode: nothing to unwind);
//! - a task that claims to be on a CPU but that no vCPU's unwind reached is
//!   scanned whole (caught mid-switch);
//! - a CPU stack no vCPU is on holds nothing live and is skipped (hard and
//!   soft interrupts never sleep).
//!
//! `--check conservative` is [`crate::safety::conservative::scan`] unchanged.

use std::ops::Range;

use super::conservative;
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{CheckMode, CheckRange, CheckSummary, Conflict, Fallback, SymbolTable, TargetError, TaskInfo, TaskList};
use crate::os::linux::unwind::{OrcUnwinder, Start, Unwind, PT_REGS_SIZE};

/// The stopped guest as the check sees it.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// Every vCPU's registers.
    pub vcpus: &'a [VcpuState],
    /// The guest CPU number of each vCPU (same order), when known; without
    /// it a running task is found by its stack holding the vCPU's RSP.
    pub vcpu_cpus: &'a [Option<u32>],
    /// Tasks and CPU stacks.
    pub tasks: &'a TaskList,
}

fn hit(ranges: &[CheckRange], addr: u64) -> Option<&CheckRange> {
    ranges.iter().find(|r| addr >= r.start && addr < r.end)
}

fn describe(symbols: &SymbolTable, r: &CheckRange, addr: u64) -> String {
    match symbols.lookup_addr(addr) {
        Some((s, off)) if s.addr >= r.start && s.addr < r.end => format!("{}+{off:#x}", s.name),
        _ => format!("{}+{:#x}", r.label, addr - r.start),
    }
}

struct Run<'a> {
    mem: &'a mut dyn KernelMemory,
    symbols: &'a SymbolTable,
    ranges: &'a [CheckRange],
    out: Vec<Conflict>,
    sum: CheckSummary,
}

impl Run<'_> {
    fn conflict(&mut self, t: Option<&TaskInfo>, vcpu: Option<usize>, kind: &'static str, addr: u64, code: u64) {
        if let Some(r) = hit(self.ranges, code) {
            let function = describe(self.symbols, r, code);
            self.out.push(Conflict { task: t.map(|t| t.name.clone()), task_id: t.map(|t| t.id), vcpu, kind, addr, function });
        }
    }

    fn frames(&mut self, t: Option<&TaskInfo>, w: &Unwind) {
        self.sum.unwound += 1;
        self.sum.bytes += w.bytes;
        for f in &w.frames {
            self.conflict(t, None, "stack", f.ip, f.code_addr());
        }
    }

    fn scan(&mut self, t: Option<&TaskInfo>, label: Option<String>, range: Range<u64>) -> Result<(), TargetError> {
        let start = range.start & !7;
        if range.end <= start {
            return Ok(());
        }
        self.sum.scanned += 1;
        self.sum.bytes += range.end - start;
        let bytes = self.mem.read_vec(start, (range.end - start) as usize)?;
        for w in bytes.chunks_exact(8) {
            let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            if let Some(r) = hit(self.ranges, v) {
                let function = describe(self.symbols, r, v);
                let task = t.map(|t| t.name.clone()).or_else(|| label.clone());
                self.out.push(Conflict { task, task_id: t.map(|t| t.id), vcpu: None, kind: "stack", addr: v, function });
            }
        }
        Ok(())
    }

    fn fallback(&mut self, stack: String, reason: String) {
        tracing::debug!(%stack, %reason, "ORC unwind unreliable: scanning conservatively");
        self.sum.fallbacks.push(Fallback { stack, reason });
    }
}

fn task_label(t: &TaskInfo) -> String {
    format!("pid {} ({})", t.id, t.name)
}

/// Runs the check. `unwinder` is needed for [`CheckMode::Orc`]; without one
/// the conservative scan runs and the summary says so.
pub fn check(
    mode: CheckMode,
    unwinder: Option<&OrcUnwinder>,
    mem: &mut dyn KernelMemory,
    symbols: &SymbolTable,
    input: CheckInput<'_>,
    ranges: &[CheckRange],
) -> Result<(Vec<Conflict>, CheckSummary), TargetError> {
    let Some(u) = unwinder.filter(|_| mode == CheckMode::Orc) else {
        let (c, st) = conservative::scan(mem, symbols, input.vcpus, input.tasks, ranges)?;
        let mut sum = CheckSummary { mode, scanned: st.stacks, bytes: st.bytes, ..CheckSummary::default() };
        if mode == CheckMode::Orc {
            sum.fallbacks.push(Fallback { stack: "all".into(), reason: "no ORC unwinder for this kernel".into() });
        }
        return Ok((c, sum));
    };
    let tasks = &input.tasks.tasks;
    let cpu_stacks = &input.tasks.cpu_stacks;
    let mut run = Run { mem, symbols, ranges, out: Vec::new(), sum: CheckSummary { mode, ..CheckSummary::default() } };
    let mut covered = vec![false; tasks.len()];
    let mut live_cpu_stacks = vec![false; cpu_stacks.len()];
    for (vi, v) in input.vcpus.iter().enumerate() {
        let cpu = input.vcpu_cpus.get(vi).copied().flatten();
        let rsp = v.rsp();
        // The task this vCPU runs: by CPU number, else by its RSP on the
        // task's stack, else any task on a CPU (the unwind tells which).
        let known = tasks
            .iter()
            .position(|t| t.on_cpu && cpu.is_some() && t.cpu == cpu)
            .or_else(|| tasks.iter().position(|t| t.stack.contains(&rsp)));
        let candidates: Vec<usize> = match known {
            Some(i) => vec![i],
            None => (0..tasks.len()).filter(|&i| tasks[i].on_cpu).collect(),
        };
        run.conflict(known.map(|i| &tasks[i]), Some(v.index), "rip", v.rip, v.rip);
        if v.cpl() != 0 {
            // User mode: its kernel stack holds nothing live.
            if let (Some(i), Some(_)) = (known, cpu) {
                covered[i] = true;
            }
            continue;
        }
        let own: Vec<usize> = (0..cpu_stacks.len()).filter(|&i| cpu.is_none_or(|c| cpu_stacks[i].cpu == c)).collect();
        let mut stacks: Vec<Range<u64>> = own.iter().map(|&i| cpu_stacks[i].range.clone()).collect();
        stacks.extend(candidates.iter().map(|&i| tasks[i].stack.clone()));
        let w = u.unwind(run.mem, Start::Regs { rip: v.rip, gprs: v.gprs }, &stacks);
        let reached = w.visited.iter().find_map(|&s| s.checked_sub(own.len()).map(|c| candidates[c])).or(known);
        match &w.unreliable {
            None => {
                for &s in w.visited.iter().filter(|&&s| s < own.len()) {
                    live_cpu_stacks[own[s]] = true;
                }
                if let Some(i) = reached {
                    covered[i] = true;
                }
                run.frames(reached.map(|i| &tasks[i]), &w);
            }
            Some(why) => {
                run.fallback(format!("vcpu {}", v.index), why.clone());
                for &i in &own {
                    live_cpu_stacks[i] = true;
                    let s = &cpu_stacks[i];
                    run.scan(None, Some(format!("cpu{}:{}", s.cpu, s.kind)), s.range.clone())?;
                }
                if let Some(i) = known {
                    let t = &tasks[i];
                    let from = if t.stack.contains(&rsp) { rsp } else { t.stack.start };
                    run.scan(Some(t), None, from..t.stack.end)?;
                    covered[i] = true;
                }
            }
        }
    }
    for (i, t) in tasks.iter().enumerate() {
        if covered[i] {
            continue;
        }
        let saved = t.saved_sp.filter(|sp| t.stack.contains(sp));
        match saved {
            // The task runs in user mode: only its user registers (pt_regs)
            // are on its kernel stack, no kernel frame.
            Some(sp) if !t.on_cpu && sp >= t.stack.end.saturating_sub(PT_REGS_SIZE) => run.sum.unwound += 1,
            Some(sp) if !t.on_cpu => {
                let w = u.unwind(run.mem, Start::Sleeping { saved_sp: sp }, std::slice::from_ref(&t.stack));
                match &w.unreliable {
                    None => run.frames(Some(t), &w),
                    Some(why) => {
                        run.fallback(task_label(t), why.clone());
                        run.scan(Some(t), None, sp..t.stack.end)?;
                    }
                }
            }
            _ => {
                let why = if t.on_cpu { "on a CPU but reached by no vCPU's unwind" } else { "no saved stack pointer on its stack" };
                run.fallback(task_label(t), why.into());
                run.scan(Some(t), None, t.stack.clone())?;
            }
        }
    }
    run.sum.idle_cpu_stacks = live_cpu_stacks.iter().filter(|l| !**l).count();
    let mut seen = std::collections::HashSet::new();
    run.out.retain(|c| seen.insert((c.task.clone(), c.task_id, c.vcpu, c.kind, c.function.clone())));
    Ok((run.out, run.sum))
}

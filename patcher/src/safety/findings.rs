//! What one safety check found and did: each conflict (an address in a
//! range being replaced, named by the function it is in and by whose stack
//! or vCPU it was on) and the summary (stacks unwound or scanned, bytes
//! read, fallbacks). Both checks, conservative and ORC, report through it.

use std::collections::HashSet;

use crate::model::{CheckMode, CheckRange, CheckSummary, Conflict, CpuStack, Fallback, SymbolTable, TaskInfo};
use crate::os::linux::unwind::Unwind;

/// Whose stack (or vCPU) an address was found on.
#[derive(Debug, Clone, Copy)]
pub(super) enum Owner<'t> {
    /// A task's.
    Task(&'t TaskInfo),
    /// A CPU's own stack (IRQ, exception, entry).
    Cpu(&'t CpuStack),
    /// Not known (a vCPU running no task the list has).
    Unknown,
}

impl<'t> Owner<'t> {
    /// The task, when one is known.
    pub(super) fn task(t: Option<&'t TaskInfo>) -> Self {
        t.map_or(Self::Unknown, Self::Task)
    }

    fn name(self) -> Option<String> {
        match self {
            Self::Task(t) => Some(t.name.clone()),
            Self::Cpu(s) => Some(format!("cpu{}:{}", s.cpu, s.kind)),
            Self::Unknown => None,
        }
    }

    fn id(self) -> Option<u64> {
        match self {
            Self::Task(t) => Some(t.id),
            _ => None,
        }
    }
}

/// A task as a fallback names it.
pub(super) fn task_label(t: &TaskInfo) -> String {
    format!("pid {} ({})", t.id, t.name)
}

/// Conflicts and summary of one check in progress.
pub(super) struct Findings<'a> {
    symbols: &'a SymbolTable,
    ranges: &'a [CheckRange],
    conflicts: Vec<Conflict>,
    /// What was checked and how.
    pub(super) sum: CheckSummary,
}

impl<'a> Findings<'a> {
    pub(super) fn new(mode: CheckMode, symbols: &'a SymbolTable, ranges: &'a [CheckRange]) -> Self {
        Self { symbols, ranges, conflicts: Vec::new(), sum: CheckSummary { mode, ..CheckSummary::default() } }
    }

    /// `code` as a conflict report names it (`fn+0x12`, or the range's
    /// label and offset when no symbol of the range covers it), when it is
    /// inside a range being replaced.
    fn describe(&self, code: u64) -> Option<String> {
        let r = self.ranges.iter().find(|r| code >= r.start && code < r.end)?;
        Some(match self.symbols.lookup_addr(code) {
            Some((s, off)) if s.addr >= r.start && s.addr < r.end => format!("{}+{off:#x}", s.name),
            _ => format!("{}+{:#x}", r.label, code - r.start),
        })
    }

    /// A conflict when `code` is inside a range: `addr` is what was found
    /// (a RIP, a return address, a stack word), `code` the instruction it
    /// stands for (a return address's call is at `addr - 1`).
    pub(super) fn code(&mut self, owner: Owner<'_>, vcpu: Option<usize>, kind: &'static str, addr: u64, code: u64) {
        if let Some(function) = self.describe(code) {
            self.conflicts.push(Conflict { task: owner.name(), task_id: owner.id(), vcpu, kind, addr, function });
        }
    }

    /// A kernel-mode vCPU whose stack is on no listed stack and cannot be
    /// read: unchecked, so it counts as a conflict (the pause is retried).
    pub(super) fn unchecked_stack(&mut self, vcpu: usize, rsp: u64, why: String) {
        let function = format!("stack at RSP {rsp:#x} (on no known stack) unreadable: {why}");
        self.conflicts.push(Conflict { task: None, task_id: None, vcpu: Some(vcpu), kind: "unchecked_stack", addr: rsp, function });
    }

    /// Every frame of a reliable unwind of `owner`'s stack.
    pub(super) fn frames(&mut self, owner: Owner<'_>, w: &Unwind) {
        self.sum.unwound += 1;
        self.sum.bytes += w.bytes;
        for f in &w.frames {
            self.code(owner, None, "stack", f.ip, f.code_addr());
        }
    }

    /// A stack the ORC check scans instead of unwinding, and why.
    pub(super) fn fallback(&mut self, stack: String, reason: String) {
        tracing::debug!(%stack, %reason, "ORC unwind unreliable: scanning conservatively");
        self.sum.fallbacks.push(Fallback { stack, reason });
    }

    /// The conflicts (one per owner, vCPU, kind and function: enough for a
    /// report) and the summary.
    pub(super) fn finish(self) -> (Vec<Conflict>, CheckSummary) {
        let mut seen = HashSet::new();
        let mut out = self.conflicts;
        out.retain(|c| seen.insert((c.task.clone(), c.task_id, c.vcpu, c.kind, c.function.clone())));
        (out, self.sum)
    }
}

//! The stop-the-world safety check, Ksplice's conservative scan: with every
//! vCPU stopped, no vCPU's RIP and no word on any live kernel stack may point
//! into a range being replaced. Live stack = from the task's stack pointer
//! (its saved SP, or the RSP of the vCPU it runs on) to the top; a running
//! task whose vCPU's RSP is not on its stack (caught mid-switch) and every
//! CPU stack (IRQ, exception) are scanned whole.

use std::ops::Range;

use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{CheckRange, Conflict, SymbolTable, TargetError, TaskList};

fn hit(ranges: &[CheckRange], addr: u64) -> Option<&CheckRange> {
    ranges.iter().find(|r| addr >= r.start && addr < r.end)
}

fn describe(symbols: &SymbolTable, r: &CheckRange, addr: u64) -> String {
    match symbols.lookup_addr(addr) {
        Some((s, off)) if addr >= r.start && s.addr >= r.start && s.addr < r.end => format!("{}+{off:#x}", s.name),
        _ => format!("{}+{:#x}", r.label, addr - r.start),
    }
}

fn scan_words(
    mem: &mut dyn KernelMemory,
    range: Range<u64>,
    ranges: &[CheckRange],
    symbols: &SymbolTable,
    mut conflict: impl FnMut(u64, String),
) -> Result<(), TargetError> {
    let start = range.start & !7;
    if range.end <= start {
        return Ok(());
    }
    let bytes = mem.read_vec(start, (range.end - start) as usize)?;
    for (i, w) in bytes.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let v = u64::from_le_bytes(b);
        if let Some(r) = hit(ranges, v) {
            conflict(start + 8 * i as u64, describe(symbols, r, v));
        }
    }
    Ok(())
}

/// Statistics of one check.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanStats {
    /// Stacks scanned.
    pub stacks: usize,
    /// Bytes of stack read.
    pub bytes: u64,
}

/// Every conflict with `ranges`, given the stopped vCPUs and the task list.
pub fn scan(
    mem: &mut dyn KernelMemory,
    symbols: &SymbolTable,
    vcpus: &[VcpuState],
    tasks: &TaskList,
    ranges: &[CheckRange],
) -> Result<(Vec<Conflict>, ScanStats), TargetError> {
    let mut out = Vec::new();
    let mut stats = ScanStats::default();
    let task_on = |v: &VcpuState| tasks.tasks.iter().find(|t| t.stack.contains(&v.rsp()));
    for v in vcpus {
        if let Some(r) = hit(ranges, v.rip) {
            let t = task_on(v);
            out.push(Conflict {
                task: t.map(|t| t.name.clone()),
                task_id: t.map(|t| t.id),
                vcpu: Some(v.index),
                kind: "rip",
                addr: v.rip,
                function: describe(symbols, r, v.rip),
            });
        }
    }
    for t in &tasks.tasks {
        let sp = if t.on_cpu {
            vcpus.iter().map(VcpuState::rsp).find(|sp| t.stack.contains(sp))
        } else {
            t.saved_sp.filter(|sp| t.stack.contains(sp))
        };
        let from = sp.unwrap_or(t.stack.start);
        stats.stacks += 1;
        stats.bytes += t.stack.end - from;
        scan_words(mem, from..t.stack.end, ranges, symbols, |addr, function| {
            // A word found is a return address (or a value that looks like one).
            let _ = addr;
            out.push(Conflict { task: Some(t.name.clone()), task_id: Some(t.id), vcpu: None, kind: "stack", addr: 0, function });
        })?;
    }
    for s in &tasks.cpu_stacks {
        stats.stacks += 1;
        stats.bytes += s.range.end - s.range.start;
        scan_words(mem, s.range.clone(), ranges, symbols, |_, function| {
            out.push(Conflict { task: Some(format!("cpu{}:{}", s.cpu, s.kind)), task_id: None, vcpu: None, kind: "stack", addr: 0, function });
        })?;
    }
    // One entry per (task, function) is enough for a report.
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert((c.task.clone(), c.vcpu, c.kind, c.function.clone())));
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::mem::BufferMemory;
    use crate::model::{Symbol, SymbolKind, TaskInfo};

    const STACK: u64 = 0xffff_ffff_8200_0000;
    const F: u64 = 0xffff_ffff_8100_1000;

    fn setup() -> (BufferMemory, SymbolTable, TaskList, Vec<CheckRange>) {
        let mut data = vec![0u8; 0x2000];
        // Task 1 (switched out, SP at +0x100): a return address into f at +0x180.
        data[0x180..0x188].copy_from_slice(&(F + 0x10).to_le_bytes());
        // Below task 1's SP (dead stack): an old return address, not a conflict.
        data[0x80..0x88].copy_from_slice(&(F + 0x8).to_le_bytes());
        // Task 2 (running, RSP at +0x1800): nothing live; dead word below.
        data[0x1700..0x1708].copy_from_slice(&(F + 0x4).to_le_bytes());
        let mem = BufferMemory { base: STACK, data };
        let syms = SymbolTable::new(vec![Symbol {
            name: "f".into(),
            addr: F,
            size: 0x40,
            kind: SymbolKind::Func,
            local: false,
            file: None,
            position: 0,
        }]);
        let tasks = TaskList {
            tasks: vec![
                TaskInfo { id: 1, name: "worker/0:0".into(), cpu: Some(0), stack: STACK..STACK + 0x1000, saved_sp: Some(STACK + 0x100), on_cpu: false },
                TaskInfo { id: 2, name: "worker/0:1".into(), cpu: Some(0), stack: STACK + 0x1000..STACK + 0x2000, saved_sp: None, on_cpu: true },
            ],
            cpu_stacks: vec![],
        };
        (mem, syms, tasks, vec![CheckRange { start: F, end: F + 0x40, label: "f".into() }])
    }

    fn vcpu(rip: u64, rsp: u64) -> VcpuState {
        let mut v = VcpuState { rip, ..VcpuState::default() };
        v.gprs[VcpuState::RSP] = rsp;
        v
    }

    #[test]
    fn live_return_addresses_and_rips_conflict_dead_stack_does_not() {
        let (mut mem, syms, tasks, ranges) = setup();
        let (c, stats) = scan(&mut mem, &syms, &[vcpu(0x1234, STACK + 0x1800)], &tasks, &ranges).unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].task.as_deref(), Some("worker/0:0"));
        assert_eq!(c[0].function, "f+0x10");
        assert_eq!(stats.stacks, 2);
        // The running task's vCPU is inside f: a RIP conflict naming it.
        let (c, _) = scan(&mut mem, &syms, &[vcpu(F + 3, STACK + 0x1800)], &tasks, &ranges).unwrap();
        assert!(c.iter().any(|c| c.kind == "rip" && c.task_id == Some(2) && c.function == "f+0x3"), "{c:?}");
    }

    #[test]
    fn a_running_task_caught_off_its_stack_is_scanned_whole() {
        let (mut mem, syms, tasks, ranges) = setup();
        let (c, _) = scan(&mut mem, &syms, &[vcpu(0x1234, 0x9999)], &tasks, &ranges).unwrap();
        assert!(c.iter().any(|c| c.task_id == Some(2) && c.function == "f+0x4"), "{c:?}");
    }
}

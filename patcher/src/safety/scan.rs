//! Ksplice's word scan and the conservative check built on it
//! (`--check conservative`): every 8-byte word of every live stack that
//! points into a range being replaced is a conflict, whether it is a return
//! address or a stale value.
//!
//! Live stack: a task switched out, from its saved SP; a task on a CPU,
//! from the RSP of the vCPU on its stack, or whole when no vCPU's RSP is on
//! it (caught mid-switch); a CPU's own stacks as
//! [`super::cpu_stacks::live_cpu_stacks`] says; a kernel-mode vCPU on no
//! listed stack, from its RSP ([`super::vcpus::scan_orphan`]). The ORC check scans with
//! the same [`scan`] wherever it cannot trust an unwind.

use std::ops::Range;

use super::findings::{Findings, Owner};
use super::{cpu_stacks, vcpus, CheckInput};
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{TargetError, TaskInfo};

/// Bytes read at once: a stack of any size is read in pieces this big, so
/// a range from guest memory never sizes one allocation.
const CHUNK: u64 = 64 << 10;

/// Scans `range` (its start rounded down to a word) of `owner`'s stack.
pub(super) fn scan(mem: &mut dyn KernelMemory, f: &mut Findings<'_>, owner: Owner<'_>, range: Range<u64>) -> Result<(), TargetError> {
    f.sum.scanned += 1;
    let start = range.start & !7;
    if range.end <= start {
        return Ok(());
    }
    f.sum.bytes += range.end - start;
    let mut at = start;
    while at < range.end {
        let len = (range.end - at).min(CHUNK);
        let bytes = mem.read_vec(at, len as usize)?;
        for w in bytes.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            let v = u64::from_le_bytes(b);
            f.code(owner, None, "stack", v, v);
        }
        at += len;
    }
    Ok(())
}

/// Where a task's live stack starts for the conservative scan.
fn live_from(t: &TaskInfo, vcpus: &[VcpuState]) -> u64 {
    let sp = if t.on_cpu {
        vcpus.iter().map(VcpuState::rsp).find(|sp| t.stack.contains(sp))
    } else {
        t.saved_sp.filter(|sp| t.stack.contains(sp))
    };
    sp.unwrap_or(t.stack.start)
}

/// The conservative check: each vCPU's RIP, every task's live stack and
/// every live CPU stack, word by word.
pub(super) fn conservative(mem: &mut dyn KernelMemory, input: &CheckInput<'_>, f: &mut Findings<'_>) -> Result<(), TargetError> {
    let tasks = &input.tasks.tasks;
    for (i, v) in input.vcpus.iter().enumerate() {
        let cpu = cpu_stacks::cpu_of(v, input.vcpu_cpus.get(i).copied().flatten(), &input.tasks.cpu_stacks);
        let runs = vcpus::running(tasks, v, cpu);
        vcpus::rip(f, tasks, v, runs.known);
        vcpus::scan_orphan(mem, f, v, input.tasks);
    }
    for t in tasks {
        scan(mem, f, Owner::Task(t), live_from(t, input.vcpus)..t.stack.end)?;
    }
    let all = &input.tasks.cpu_stacks;
    let live = cpu_stacks::live_cpu_stacks(all, input.vcpus, input.vcpu_cpus);
    f.sum.idle_cpu_stacks = all.iter().filter(|s| !live.iter().any(|l| l.cpu == s.cpu && l.kind == s.kind)).count();
    for s in &live {
        scan(mem, f, Owner::Cpu(s), s.range.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::model::backend::VcpuState;
    use crate::model::mem::BufferMemory;
    use crate::model::{CheckMode, CheckRange, CpuStack, Symbol, SymbolKind, SymbolTable, TaskInfo, TaskList};
    use crate::safety::{check, CheckInput};

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
                TaskInfo { id: 1, name: "worker/0:0".into(), cpu: Some(0), stack: STACK..STACK + 0x1000, saved_sp: Some(STACK + 0x100), on_cpu: false, evidence: None },
                TaskInfo { id: 2, name: "worker/0:1".into(), cpu: Some(0), stack: STACK + 0x1000..STACK + 0x2000, saved_sp: None, on_cpu: true, evidence: None },
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

    fn scan(mem: &mut BufferMemory, syms: &SymbolTable, vcpus: &[VcpuState], tasks: &TaskList, ranges: &[CheckRange]) -> (Vec<crate::model::Conflict>, crate::model::CheckSummary) {
        let input = CheckInput { vcpus, vcpu_cpus: &[], tasks };
        check(CheckMode::Conservative, None, mem, syms, input, ranges).unwrap()
    }

    #[test]
    fn live_return_addresses_and_rips_conflict_dead_stack_does_not() {
        let (mut mem, syms, tasks, ranges) = setup();
        let (c, stats) = scan(&mut mem, &syms, &[vcpu(0x1234, STACK + 0x1800)], &tasks, &ranges);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].task.as_deref(), Some("worker/0:0"));
        assert_eq!(c[0].function, "f+0x10");
        assert_eq!(stats.scanned, 2);
        // The running task's vCPU is inside f: a RIP conflict naming it.
        let (c, _) = scan(&mut mem, &syms, &[vcpu(F + 3, STACK + 0x1800)], &tasks, &ranges);
        assert!(c.iter().any(|c| c.kind == "rip" && c.task_id == Some(2) && c.function == "f+0x3"), "{c:?}");
    }

    #[test]
    fn a_running_task_caught_off_its_stack_is_scanned_whole() {
        let (mut mem, syms, tasks, ranges) = setup();
        let (c, _) = scan(&mut mem, &syms, &[vcpu(0x1234, 0x9999)], &tasks, &ranges);
        assert!(c.iter().any(|c| c.task_id == Some(2) && c.function == "f+0x4"), "{c:?}");
    }

    #[test]
    fn only_live_cpu_stacks_are_scanned_and_each_stack_is_read_in_bounded_pieces() {
        let (mut mem, syms, mut tasks, ranges) = setup();
        // Task 1's stack as CPU 0's IRQ stack, task 2's as CPU 1's NMI stack.
        tasks.cpu_stacks = vec![
            CpuStack { cpu: 0, kind: "irq".into(), range: STACK..STACK + 0x1000 },
            CpuStack { cpu: 1, kind: "nmi".into(), range: STACK + 0x1000..STACK + 0x2000 },
        ];
        tasks.tasks.clear();
        let mut v0 = vcpu(0x1234, STACK + 0x100);
        v0.cs = 0x10;
        let mut v1 = vcpu(0x1234, 0x9999);
        v1.cs = 0x33;
        let vcpus = [v0, v1];
        // CPU 0 on its IRQ stack (from its RSP: the word at +0x180, not the one
        // at +0x80), CPU 1 in user mode: its NMI stack is idle.
        let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &[Some(0), Some(1)], tasks: &tasks };
        let (c, sum) = check(CheckMode::Conservative, None, &mut mem, &syms, input, &ranges).unwrap();
        assert_eq!(c.iter().map(|c| (c.task.as_deref(), c.function.as_str())).collect::<Vec<_>>(), vec![(Some("cpu0:irq"), "f+0x10")]);
        assert_eq!((sum.scanned, sum.idle_cpu_stacks, sum.bytes), (1, 1, 0xf00));
        // The CPU of a vCPU unknown: every CPU stack, whole.
        let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &[Some(0), None], tasks: &tasks };
        let (c, sum) = check(CheckMode::Conservative, None, &mut mem, &syms, input, &ranges).unwrap();
        assert_eq!((c.len(), sum.scanned, sum.idle_cpu_stacks), (3, 2, 0), "{c:?}");
        // A stack far bigger than one read: read piecewise, every word seen.
        let big = 3 * super::CHUNK + 0x18;
        let mut data = vec![0u8; big as usize];
        let last = (big - 8) as usize;
        data[last..].copy_from_slice(&(F + 0x20).to_le_bytes());
        let mut mem = BufferMemory { base: STACK, data };
        let t = TaskList {
            tasks: vec![TaskInfo { id: 9, name: "big".into(), cpu: None, stack: STACK..STACK + big, saved_sp: None, on_cpu: true, evidence: None }],
            cpu_stacks: vec![],
        };
        let input = CheckInput { vcpus: &[], vcpu_cpus: &[], tasks: &t };
        let (c, sum) = check(CheckMode::Conservative, None, &mut mem, &syms, input, &ranges).unwrap();
        assert_eq!((c.len(), c[0].function.as_str(), sum.bytes), (1, "f+0x20", big));
    }

    /// A kernel-mode vCPU on no listed stack (an exiting task already off
    /// the list): its stack is scanned from the RSP to the 16 KiB boundary
    /// in both checks; unreadable, it is a conflict, never unchecked.
    #[test]
    fn a_kernel_vcpu_on_no_known_stack_is_scanned_from_its_rsp() {
        let (_, syms, mut tasks, ranges) = setup();
        tasks.tasks.clear();
        // An unlisted 16 KiB stack: RSP at +0x3000, a return into f at
        // +0x3f00 (live) and at +0x100 (below the RSP: dead).
        let base = STACK + 0x4000;
        let mut data = vec![0u8; 0x8000];
        data[0x3f00..0x3f08].copy_from_slice(&(F + 0x10).to_le_bytes());
        data[0x100..0x108].copy_from_slice(&(F + 0x18).to_le_bytes());
        // Past the boundary: another stack, not this vCPU's.
        data[0x4100..0x4108].copy_from_slice(&(F + 0x20).to_le_bytes());
        let mut mem = BufferMemory { base, data };
        let mut v = vcpu(0x1234, base + 0x3000);
        v.cs = 0x10;
        for mode in [CheckMode::Conservative, CheckMode::Orc] {
            let u = crate::os::linux::unwind::OrcUnwinder::new(crate::os::linux::orc::OrcTable::new("vmlinux", F, F + 0x40, vec![]), None);
            let vs = [v.clone()];
            let input = CheckInput { vcpus: &vs, vcpu_cpus: &[], tasks: &tasks };
            let (c, sum) = check(mode, Some(&u), &mut mem, &syms, input, &ranges).unwrap();
            let found: Vec<&str> = c.iter().map(|c| c.function.as_str()).collect();
            assert_eq!(found, vec!["f+0x10"], "{mode:?}: {c:?}");
            assert_eq!(sum.bytes, 0x1000, "{mode:?}");
            assert!(sum.fallbacks.iter().any(|f| f.stack == "vcpu 0" && f.reason.contains("no known stack")), "{mode:?}: {sum:?}");
        }
        // Unreadable: a conflict that makes the pause retry.
        let mut v = vcpu(0x1234, 0xdead_0000);
        v.cs = 0x10;
        let vs = [v];
        let input = CheckInput { vcpus: &vs, vcpu_cpus: &[], tasks: &tasks };
        let (c, _) = check(CheckMode::Conservative, None, &mut mem, &syms, input, &ranges).unwrap();
        assert_eq!((c.len(), c[0].kind, c[0].vcpu), (1, "unchecked_stack", Some(0)), "{c:?}");
    }
}

//! Which of a CPU's own stacks (IRQ, exception, entry: found by
//! [`crate::os::linux::cpustacks`]) can hold a live return address when every
//! vCPU is stopped, and which CPU a vCPU is when its RSP is on one.
//!
//! Nobody sleeps on these stacks, so one that no vCPU's RSP is on is dead.
//! A vCPU on its IRQ stack makes that stack live from its RSP up; a vCPU on
//! an exception or entry stack may have interrupted the others, so all of
//! that CPU's stacks are taken whole. When the CPU a vCPU runs is unknown,
//! every stack of every CPU is taken whole.
//!
//! Only its own CPU uses a CPU stack, so a vCPU in kernel mode whose RSP is
//! on one is that CPU, whatever else said otherwise (a GS base caught
//! before `swapgs`, a wrong map): the stack is found among every CPU's.

use crate::model::backend::VcpuState;
use crate::model::CpuStack;

/// The CPU `v` is: the owner of the CPU stack its RSP is on (kernel mode),
/// else `mapped` (from the vCPU to CPU map, when known).
pub fn cpu_of(v: &VcpuState, mapped: Option<u32>, all: &[CpuStack]) -> Option<u32> {
    if v.cpl() != 0 {
        return mapped;
    }
    let rsp = v.rsp();
    match all.iter().find(|s| s.range.contains(&rsp)) {
        Some(s) => {
            if mapped.is_some_and(|m| m != s.cpu) {
                tracing::debug!(vcpu = v.index, mapped, on = s.cpu, kind = %s.kind, "vCPU's RSP on another CPU's stack: taking that CPU");
            }
            Some(s.cpu)
        }
        None => mapped,
    }
}

/// The live parts of `all` (every CPU's stacks); `cpu_of[i]` is the CPU
/// vCPU `i` runs, when known.
pub fn live_cpu_stacks(all: &[CpuStack], vcpus: &[VcpuState], cpu_of: &[Option<u32>]) -> Vec<CpuStack> {
    if cpu_of.len() != vcpus.len() || cpu_of.iter().any(Option::is_none) {
        return all.to_vec();
    }
    let mut out: Vec<CpuStack> = Vec::new();
    for v in vcpus {
        if v.cpl() != 0 {
            continue;
        }
        let rsp = v.rsp();
        let Some(on) = all.iter().find(|s| s.range.contains(&rsp)) else { continue };
        let live: Vec<CpuStack> = if on.kind == "irq" {
            vec![CpuStack { range: (rsp & !7)..on.range.end, ..on.clone() }]
        } else {
            all.iter().filter(|s| s.cpu == on.cpu).cloned().collect()
        };
        for s in live {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(index: usize, rsp: u64, cs: u16) -> VcpuState {
        let mut v = VcpuState { index, cs, ..VcpuState::default() };
        v.gprs[VcpuState::RSP] = rsp;
        v
    }

    fn stacks() -> Vec<CpuStack> {
        let mut v = Vec::new();
        for c in 0..2u32 {
            let b = 0x10_0000 * u64::from(c + 1);
            v.push(CpuStack { cpu: c, kind: "irq".into(), range: b..b + 0x4000 });
            v.push(CpuStack { cpu: c, kind: "nmi".into(), range: 2 * b..2 * b + 0x2000 });
        }
        v
    }

    #[test]
    fn only_stacks_in_use_are_live() {
        // cpu0 on its IRQ stack, cpu1 in a task.
        let v = [vcpu(0, 0x10_0100, 0x10), vcpu(1, 0x9999_0000, 0x10)];
        let live = live_cpu_stacks(&stacks(), &v, &[Some(0), Some(1)]);
        assert_eq!(live, vec![CpuStack { cpu: 0, kind: "irq".into(), range: 0x10_0100..0x10_4000 }]);
        // cpu1 in an NMI: all of its stacks, whole.
        let v = [vcpu(0, 0x9999_0000, 0x10), vcpu(1, 0x40_0010, 0x10)];
        let live = live_cpu_stacks(&stacks(), &v, &[Some(0), Some(1)]);
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|c| c.cpu == 1));
        // User mode: nothing.
        let v = [vcpu(0, 0x10_0100, 0x33), vcpu(1, 0x10, 0x33)];
        assert!(live_cpu_stacks(&stacks(), &v, &[Some(0), Some(1)]).is_empty());
    }

    #[test]
    fn unknown_cpu_mapping_takes_everything() {
        let v = [vcpu(0, 0x9999_0000, 0x10), vcpu(1, 0x9999_0000, 0x10)];
        assert_eq!(live_cpu_stacks(&stacks(), &v, &[Some(0), None]).len(), 4);
    }

    #[test]
    fn the_stack_a_vcpu_is_on_tells_its_cpu_over_a_wrong_map() {
        // vCPU 0 said to be CPU 0, but in CPU 1's NMI; vCPU 1 in a task.
        let v = [vcpu(0, 0x40_0010, 0x10), vcpu(1, 0x9999_0000, 0x10)];
        assert_eq!(cpu_of(&v[0], Some(0), &stacks()), Some(1));
        assert_eq!(cpu_of(&v[1], Some(0), &stacks()), Some(0));
        // In user mode the RSP says nothing.
        assert_eq!(cpu_of(&vcpu(0, 0x40_0010, 0x33), Some(0), &stacks()), Some(0));
        let live = live_cpu_stacks(&stacks(), &v, &[Some(0), Some(0)]);
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|c| c.cpu == 1), "{live:?}");
    }
}

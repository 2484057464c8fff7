//! Which of a CPU's own stacks (IRQ, exception, entry: found by
//! [`crate::os::linux::cpustacks`]) can hold a live return address when every
//! vCPU is stopped.
//!
//! Nobody sleeps on these stacks, so one that no vCPU's RSP is on is dead.
//! A vCPU on its IRQ stack makes that stack live from its RSP up; a vCPU on
//! an exception or entry stack may have interrupted the others, so all of
//! that CPU's stacks are taken whole. When the CPU a vCPU runs is unknown,
//! every stack of every CPU is taken whole.

use crate::model::backend::VcpuState;
use crate::model::CpuStack;

/// The live parts of `all` (every CPU's stacks); `cpu_of[i]` is the CPU
/// vCPU `i` runs, when known.
pub fn live_cpu_stacks(all: Vec<CpuStack>, vcpus: &[VcpuState], cpu_of: &[Option<u32>]) -> Vec<CpuStack> {
    if cpu_of.len() != vcpus.len() || cpu_of.iter().any(Option::is_none) {
        return all;
    }
    let mut out = Vec::new();
    for (v, cpu) in vcpus.iter().zip(cpu_of) {
        let Some(cpu) = *cpu else { continue };
        if v.cpl() != 0 {
            continue;
        }
        let rsp = v.rsp();
        let mine = || all.iter().filter(|s| s.cpu == cpu);
        match mine().find(|s| s.range.contains(&rsp)) {
            Some(s) if s.kind == "irq" => out.push(CpuStack { range: (rsp & !7)..s.range.end, ..s.clone() }),
            Some(_) => out.extend(mine().cloned()),
            None => {}
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
        let live = live_cpu_stacks(stacks(), &v, &[Some(0), Some(1)]);
        assert_eq!(live, vec![CpuStack { cpu: 0, kind: "irq".into(), range: 0x10_0100..0x10_4000 }]);
        // cpu1 in an NMI: all of its stacks, whole.
        let v = [vcpu(0, 0x9999_0000, 0x10), vcpu(1, 0x40_0010, 0x10)];
        let live = live_cpu_stacks(stacks(), &v, &[Some(0), Some(1)]);
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|c| c.cpu == 1));
        // User mode: nothing.
        let v = [vcpu(0, 0x10_0100, 0x33), vcpu(1, 0x10, 0x33)];
        assert!(live_cpu_stacks(stacks(), &v, &[Some(0), Some(1)]).is_empty());
    }

    #[test]
    fn unknown_cpu_mapping_takes_everything() {
        let v = [vcpu(0, 0x9999_0000, 0x10), vcpu(1, 0x9999_0000, 0x10)];
        assert_eq!(live_cpu_stacks(stacks(), &v, &[Some(0), None]).len(), 4);
    }
}

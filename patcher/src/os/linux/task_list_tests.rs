//! Unit tests of the one task list the check gets ([`super::task_list`]):
//! each rule on its own, then the whole read (agent table, per-CPU
//! `current_task`, GS bases) from a synthetic guest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::single_range_in_vec_init)]

use super::agent::layout::F_IRQ_STACKS;
use super::agent::testutil::{task, FakeAgent, OFF};
use crate::testing::RamGuest;
use super::kallsyms::Kallsyms;
use super::task_list::{merge_cpu_stacks, task_infos, vcpu_cpus, MAX_CPU_STACK};
use super::tasks::{Task, THREAD_SIZE};
use super::testutil::{kallsyms_blob, sample_syms};
use super::unwind::PT_REGS_SIZE;
use super::view::{read_guest_tasks, AgentHint, TaskSource};
use crate::model::backend::VcpuState;
use crate::model::{CpuStack, TaskInfo};

const P0: u64 = 0xffff_8880_7000_0000;
const P1: u64 = 0xffff_8880_7004_0000;

fn vcpu(index: usize, cs: u16, rsp: u64, gs: u64, kgs: Option<u64>) -> VcpuState {
    let mut v = VcpuState { index, cs, gs_base: gs, kernel_gs_base: kgs, ..VcpuState::default() };
    v.gprs[VcpuState::RSP] = rsp;
    v
}

fn raw(n: u64, on_cpu: bool, sp_off: u64) -> Task {
    let stack = 0xffff_c900_0100_0000 + n * 0x8000;
    Task { addr: 0xffff_8880_0200_0000 + n * 0x4000, pid: n as i32, tgid: n as i32, comm: format!("t{n}"), state: 1, on_cpu, cpu: 0, stack, sp: stack + sp_off, sched: None }
}

fn info(tasks: &[TaskInfo], id: u64) -> &TaskInfo {
    tasks.iter().find(|t| t.id == id).unwrap()
}

#[test]
fn the_cpu_of_a_vcpu_is_its_gs_base_never_its_index() {
    let per_cpu = [P0, P1];
    // Kernel mode: GS base; user mode: KERNEL_GS_BASE (user code may set GS to anything).
    let v = [vcpu(0, 0x33, 0, P0, Some(P1)), vcpu(1, 0x10, 0, P0, Some(0x1234))];
    assert_eq!(vcpu_cpus(&v, &per_cpu), vec![Some(1), Some(0)]);
    // No match, or user mode without KERNEL_GS_BASE: unknown (not "vCPU 1 is CPU 1").
    let v = [vcpu(0, 0x10, 0, P0, None), vcpu(1, 0x10, 0, 0x7f00_0000, None), vcpu(2, 0x33, 0, P1, None)];
    assert_eq!(vcpu_cpus(&v, &per_cpu), vec![Some(0), None, None]);
    // Two vCPUs claiming one CPU (a user GS base caught before swapgs): both unknown.
    let v = [vcpu(0, 0x10, 0, P1, None), vcpu(1, 0x33, 0, 0, Some(P1))];
    assert_eq!(vcpu_cpus(&v, &per_cpu), vec![None, None]);
}

#[test]
fn each_task_is_taken_by_what_the_vcpus_say_about_it() {
    let t: Vec<Task> = (1..=7).map(|n| raw(n, false, 0x3e00)).collect();
    let mut t = t;
    t[2].on_cpu = true; // 3: on a CPU by its flag only (mid-switch)
    t[4].sp = 0x1234; // 5: saved SP off its stack
    t[5].stack = 0; // 6: dead, stack freed
    t[6].on_cpu = true; // 7: current in user mode (its on_cpu flag is set too)
    let top = |n: usize| t[n - 1].stack + THREAD_SIZE;
    let vcpus = [
        // CPU 0 in the kernel on task 1's stack (its current task).
        vcpu(0, 0x10, t[0].stack + 0x3000, P0, None),
        // CPU 1 in user mode, running task 7.
        vcpu(1, 0x33, 0x7ffe_0000, 0, Some(P1)),
        // A vCPU whose CPU is not known, in the kernel on task 2's stack.
        vcpu(2, 0x10, t[1].stack + 0x3800, 0, None),
    ];
    let current = [Some(t[0].addr), Some(t[6].addr), None];
    let list = task_infos(&t, &vcpus, &current).unwrap();
    assert_eq!(list.len(), 6, "the dead task is left out: {list:?}");
    assert!(!list.iter().any(|x| x.id == 6));
    let on = |id| (info(&list, id).on_cpu, info(&list, id).saved_sp);
    assert_eq!(on(1), (true, None), "current on a kernel-mode vCPU");
    assert_eq!(on(2), (true, None), "a kernel-mode vCPU's RSP on its stack");
    assert_eq!(on(3), (true, None), "on_cpu set");
    assert_eq!(on(4), (false, Some(t[3].sp)), "switched out");
    assert_eq!(on(5), (false, None), "a saved SP off its stack is no saved SP");
    assert_eq!(on(7), (false, Some(top(7) - PT_REGS_SIZE)), "in user mode: only pt_regs");
    assert_eq!(info(&list, 1).stack, t[0].stack..top(1));
    // Current in user mode, yet a kernel-mode vCPU's RSP is on its stack: on a CPU.
    let mut v2 = vcpus.clone();
    v2[2].gprs[VcpuState::RSP] = t[6].stack + 0x100;
    assert_eq!(task_infos(&t, &v2, &current).unwrap().iter().find(|x| x.id == 7).map(|x| (x.on_cpu, x.saved_sp)), Some((true, None)));
    // Current on two CPUs, one in the kernel: the kernel one wins.
    let both = [Some(t[6].addr), Some(t[6].addr), None];
    let mut v3 = vcpus.clone();
    v3[0].gprs[VcpuState::RSP] = 0x9000;
    assert_eq!(task_infos(&t, &v3, &both).unwrap().iter().find(|x| x.id == 7).map(|x| x.on_cpu), Some(true));
    // A stack that runs past the end of the address space is an error, never skipped.
    let mut bad = t.clone();
    bad[3].stack = u64::MAX - 0x100;
    assert_eq!(task_infos(&bad, &vcpus, &current).unwrap_err().cause(), "stack_implausible");
}

#[test]
fn cpu_stacks_of_both_sources_are_all_kept_once_and_bounded() {
    let s = |cpu: u32, kind: &str, start: u64, len: u64| CpuStack { cpu, kind: kind.into(), range: start..start + len };
    let walked = [s(0, "irq", 0x10_0000, 0x4000), s(0, "nmi", 0x20_0000, 0x1000), s(0, "entry", 0x30_0000, 0x1000)];
    // The agent knows the same IRQ stack, a different NMI stack, no entry stack.
    let agent = [s(0, "irq", 0x10_0000, 0x4000), s(0, "nmi", 0x28_0000, 0x1000)];
    let all = merge_cpu_stacks(Some(&walked), Some(&agent)).unwrap();
    assert_eq!(all, vec![walked[0].clone(), walked[1].clone(), walked[2].clone(), agent[1].clone()]);
    assert_eq!(merge_cpu_stacks(None, Some(&agent)).unwrap(), agent.to_vec());
    assert_eq!(merge_cpu_stacks(Some(&walked), None).unwrap(), walked.to_vec());
    // A huge or an empty stack from guest memory: refused, never read.
    let (hi, lo) = (0x50_0000, 0x40_0000);
    for bad in [s(1, "irq", lo, MAX_CPU_STACK + 8), s(1, "db", lo, 0), CpuStack { cpu: 1, kind: "df".into(), range: hi..lo }] {
        let e = merge_cpu_stacks(Some(&walked), Some(std::slice::from_ref(&bad))).unwrap_err();
        assert_eq!(e.cause(), "stack_implausible", "{bad:?}");
    }
}

/// Kallsyms with `__per_cpu_offset`, `nr_cpu_ids` and `current_task`
/// (per-CPU, at 0x1fb80 in `sample_syms`); the two data symbols' addresses.
fn kallsyms() -> (Kallsyms, u64, u64) {
    let text = 0xffff_ffff_8100_0000;
    let mut syms = sample_syms(text);
    let end = syms.last().unwrap().2;
    let (pco, nr) = (end + 0x1000, end + 0x1100);
    syms.push(('D', "__per_cpu_offset".into(), pco, false));
    syms.push(('D', "nr_cpu_ids".into(), nr, false));
    let base = 0xffff_ffff_8300_0000;
    let (blob, _) = kallsyms_blob(&syms, base, 64, true);
    (Kallsyms::locate_in(&blob, base).unwrap(), pco, nr)
}

#[test]
fn a_read_gives_tasks_cpus_and_stacks_by_the_same_rules() {
    let (k, pco, nr) = kallsyms();
    let cur = k.first_addr("current_task").unwrap();
    let mut agent = FakeAgent::new((1..=4).map(|n| task(n, &format!("t{n}"))).collect());
    agent.flags |= F_IRQ_STACKS;
    let mut g = RamGuest::sparse();
    agent.install(&mut g);
    // The task_structs: on_cpu 0, cpu n % 2, the stack, thread.sp; task 4 is dead.
    for t in &agent.tasks {
        g.map_range(t.task, 0x2000_0000 + (t.task & 0xff_ffff), 0x2000);
        let stack = if t.pid == 4 { 0 } else { t.stack };
        g.write_virt(t.task + u64::from(OFF[5].1), &t.cpu.to_le_bytes()).unwrap();
        g.write_virt(t.task + u64::from(OFF[6].1), &stack.to_le_bytes()).unwrap();
        g.write_virt(t.task + u64::from(OFF[7].1), &t.sp.to_le_bytes()).unwrap();
    }
    // __per_cpu_offset[2], nr_cpu_ids, each CPU's current_task (1 on CPU 0, 2 on CPU 1).
    g.map_range(pco & !0xfff, 0x3000_0000, 0x2000);
    g.write_virt(pco, &P0.to_le_bytes()).unwrap();
    g.write_virt(pco + 8, &P1.to_le_bytes()).unwrap();
    g.write_virt(nr, &2u32.to_le_bytes()).unwrap();
    for (i, (p, t)) in [(P0, &agent.tasks[0]), (P1, &agent.tasks[1])].into_iter().enumerate() {
        g.map_range((p + cur) & !0xfff, 0x3100_0000 + 0x1000 * i as u64, 0x1000);
        g.write_virt(p + cur, &t.task.to_le_bytes()).unwrap();
    }
    // vCPU 0: CPU 0 in the kernel on its IRQ stack; vCPU 1: CPU 1 in user mode.
    let irq0 = agent.cpus[0].stacks[0].start;
    let vcpus = [vcpu(0, 0x10, irq0 + 0x100, P0, None), vcpu(1, 0x33, 0x7ffe_0000, 0x7f00_0000, Some(P1))];
    let hint = Some(AgentHint::Virt(agent.virt));
    let mem: &mut dyn crate::model::mem::KernelMemory = &mut g;
    let (read, got) = read_guest_tasks(mem, &k, None, None, TaskSource::Agent, hint, &vcpus, &mut Default::default()).unwrap();
    assert_eq!((got.source, got.source_at), ("agent", Some(agent.virt)));
    assert_eq!(read.tasks.len(), 4, "the read keeps the dead task");
    assert_eq!(got.vcpu_cpus, vec![Some(0), Some(1)]);
    let l = &got.list.tasks;
    assert_eq!(l.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!((info(l, 1).on_cpu, info(l, 1).saved_sp), (true, None), "current of the kernel-mode vCPU");
    let t2 = &agent.tasks[1];
    assert_eq!((info(l, 2).on_cpu, info(l, 2).saved_sp), (false, Some(t2.stack + THREAD_SIZE - PT_REGS_SIZE)), "current in user mode");
    assert_eq!((info(l, 3).on_cpu, info(l, 3).saved_sp), (false, Some(agent.tasks[2].sp)));
    // Every CPU stack the agent recorded, none filtered here (the check decides).
    assert_eq!(got.list.cpu_stacks.len(), 4);
    assert!(got.list.cpu_stacks.iter().any(|s| s.cpu == 0 && s.kind == "irq" && s.range.start == irq0));
    // An agent without IRQ stacks and no BTF to find them: refused, not checked without them.
    let mut bare = agent.clone();
    bare.flags &= !F_IRQ_STACKS;
    bare.install(&mut g);
    let mem: &mut dyn crate::model::mem::KernelMemory = &mut g;
    let e = read_guest_tasks(mem, &k, None, None, TaskSource::Agent, hint, &vcpus, &mut Default::default()).unwrap_err();
    assert_eq!(e.cause(), "no_task_source", "{e}");
}

/// Issue 11: an absurd `nr_cpu_ids` (0, or above any kernel's `NR_CPUS`)
/// is refused by name before any per-CPU offset is read, not clamped.
#[test]
fn an_absurd_cpu_count_is_refused_not_clamped() {
    let (k, pco, nr) = kallsyms();
    let mut g = RamGuest::sparse();
    g.map_range(pco & !0xfff, 0x3000_0000, 0x2000);
    g.write_virt(pco, &P0.to_le_bytes()).unwrap();
    g.write_virt(pco + 8, &P1.to_le_bytes()).unwrap();
    for bad in [0u32, crate::os::linux::tasks::MAX_CPUS + 1, 0x7fff_ffff, u32::MAX] {
        g.write_virt(nr, &bad.to_le_bytes()).unwrap();
        let e = crate::os::linux::tasks::per_cpu_offsets(&mut g, &k, 2).unwrap_err();
        assert_eq!(e.cause(), "cpu_count_implausible", "{bad}: {e}");
    }
    g.write_virt(nr, &2u32.to_le_bytes()).unwrap();
    assert_eq!(crate::os::linux::tasks::per_cpu_offsets(&mut g, &k, 2).unwrap(), vec![P0, P1]);
}

/// The scheduler's evidence (for the incremental check) is given only to a
/// task switched out and current on no vCPU, and only when it was read:
/// a task on a CPU by any sign, or current on a vCPU in user mode, has none.
#[test]
fn evidence_only_for_tasks_switched_out_and_current_nowhere() {
    use super::tasks::Sched;
    let mut t: Vec<Task> = (1..=6).map(|n| raw(n, false, 0x3e00)).collect();
    for (i, x) in t.iter_mut().enumerate() {
        x.sched = Some(Sched { nvcsw: 10 + i as u64, nivcsw: 2, start_time: 100 + i as u64 });
    }
    t[2].on_cpu = true; // 3: on a CPU by its flag only
    t[5].sched = None; // 6: counters not read
    let vcpus = [
        vcpu(0, 0x10, t[0].stack + 0x3000, P0, None), // in the kernel on task 1's stack
        vcpu(1, 0x33, 0x7ffe_0000, 0, Some(P1)),      // user mode, running task 5 (flag clear)
        vcpu(2, 0x10, t[1].stack + 0x3800, 0, None),  // on task 2's stack, CPU unknown
    ];
    let current = [Some(t[0].addr), Some(t[4].addr), None];
    let list = task_infos(&t, &vcpus, &current).unwrap();
    let ev = |id| info(&list, id).evidence;
    assert_eq!((ev(1), ev(2), ev(3), ev(5), ev(6)), (None, None, None, None, None), "{list:?}");
    let e = ev(4).unwrap();
    assert_eq!((e.addr, e.nvcsw, e.nivcsw, e.start_time, e.sp), (t[3].addr, 13, 2, 103, t[3].sp));
    // With the guest running (no vCPUs known): by the flag alone.
    let list = task_infos(&t, &[], &[]).unwrap();
    assert_eq!(list.iter().filter(|x| x.evidence.is_some()).map(|x| x.id).collect::<Vec<_>>(), vec![1, 2, 4, 5]);
}

//! Unit tests of the precise safety check on the synthetic kernel of the
//! unwinder's tests: stale words, tasks on and off CPUs, IRQ stacks, and
//! every fallback to the conservative scan.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::single_range_in_vec_init)]

use crate::os::linux::unwind_tests::*;
use crate::model::backend::VcpuState;
use super::{check, CheckInput};
use crate::model::{CheckMode, CheckRange, CpuStack, Symbol, SymbolKind, SymbolTable, TaskInfo, TaskList};

fn syms() -> SymbolTable {
    let f = |name: &str, addr: u64, size: u64| Symbol { name: name.into(), addr, size, kind: SymbolKind::Func, local: false, file: None, position: 0 };
    SymbolTable::new(vec![f("do_d", D, 0x100), f("target", TARGET, 0x40), f("handler", H, 0x80), f("irq_x", X, 0x80)])
}

fn range(start: u64, len: u64, label: &str) -> Vec<CheckRange> {
    vec![CheckRange { start, end: start + len, label: label.into() }]
}

fn sleeper(sp: u64) -> TaskInfo {
    TaskInfo { id: 300, name: "mthreads".into(), cpu: Some(0), stack: S..S + SIZE, saved_sp: Some(sp), on_cpu: false, evidence: None }
}

#[test]
fn a_stale_word_is_a_conflict_for_the_scan_and_not_for_orc() {
    let (s, sp) = sleeping_user_task(true);
    let mut g = RamGuest::sparse();
    s.install(&mut g, 0x10_0000);
    let u = OrcUnwinder::new(kernel_table(), None);
    let tasks = TaskList { tasks: vec![sleeper(sp)], cpu_stacks: vec![] };
    let input = CheckInput { vcpus: &[], vcpu_cpus: &[], tasks: &tasks };
    let target = range(TARGET, 0x40, "target");
    let (c, sum) = check(CheckMode::Conservative, Some(&u), &mut g, &syms(), input, &target).unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!((c[0].function.as_str(), c[0].task_id, sum.scanned), ("target+0x4", Some(300), 1));
    let (c, sum) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &target).unwrap();
    assert!(c.is_empty(), "{c:?}");
    assert_eq!((sum.unwound, sum.scanned, sum.fallbacks.len()), (1, 0, 0));
    // A function really on the stack is a conflict for both.
    let d = range(D, 0x100, "do_d");
    for mode in [CheckMode::Orc, CheckMode::Conservative] {
        let (c, _) = check(mode, Some(&u), &mut g, &syms(), input, &d).unwrap();
        assert_eq!(c.len(), 1, "{mode}: {c:?}");
        assert_eq!(c[0].function, format!("do_d+{:#x}", RET_D - D - if mode == CheckMode::Orc { 1 } else { 0 }));
    }
    // Without an unwinder, ORC mode is the scan and says so.
    let (c, sum) = check(CheckMode::Orc, None, &mut g, &syms(), input, &target).unwrap();
    assert_eq!((c.len(), sum.fallbacks[0].stack.as_str()), (1, "all"));
}

#[test]
fn an_unreliable_stack_falls_back_to_the_scan_and_says_why() {
    let (mut s, sp) = sleeping_user_task(true);
    s.put(sp + 56 + FS as u64, 0xdead_beef);
    let mut g = RamGuest::sparse();
    s.install(&mut g, 0x10_0000);
    let u = OrcUnwinder::new(kernel_table(), None);
    let tasks = TaskList { tasks: vec![sleeper(sp)], cpu_stacks: vec![] };
    let input = CheckInput { vcpus: &[], vcpu_cpus: &[], tasks: &tasks };
    let (c, sum) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(TARGET, 0x40, "target")).unwrap();
    assert_eq!(c.len(), 1, "the scan finds the stale word: {c:?}");
    assert_eq!((sum.unwound, sum.scanned), (0, 1));
    assert_eq!(sum.fallbacks[0].stack, "pid 300 (mthreads)");
    assert!(sum.fallbacks[0].reason.contains("outside kernel text"), "{:?}", sum.fallbacks);
}

#[test]
fn a_vcpu_in_an_interrupt_is_checked_through_its_irq_stack() {
    let mut t = Stack::new(S);
    t.regs(0x40_1000, 0x33, 0x7ffe_0000);
    t.push(RET_E);
    t.reserve(FD);
    t.put(t.sp + 8, TARGET + 8);
    let isp = t.sp;
    t.regs(D + 0x40, 0x10, isp);
    t.push(RET_E2);
    t.reserve(FX);
    let task_sp = t.sp;
    let mut i = Stack::new(IRQ);
    i.put(IRQ + SIZE - 8, task_sp);
    i.sp = IRQ + SIZE - 8;
    i.push(RET_X);
    i.reserve(FH);
    let mut g = RamGuest::sparse();
    t.install(&mut g, 0x10_0000);
    i.install(&mut g, 0x20_0000);
    Stack::new(IRQ + 0x10000).install(&mut g, 0x30_0000);
    let mut v = VcpuState { index: 0, rip: H + 0x10, cs: 0x10, ..VcpuState::default() };
    v.gprs[7] = i.sp;
    let running = TaskInfo { id: 77, name: "busy".into(), cpu: Some(0), stack: S..S + SIZE, saved_sp: Some(0), on_cpu: true, evidence: None };
    let tasks = TaskList {
        tasks: vec![running],
        cpu_stacks: vec![
            CpuStack { cpu: 0, kind: "irq".into(), range: IRQ..IRQ + SIZE },
            CpuStack { cpu: 0, kind: "nmi".into(), range: IRQ + 0x10000..IRQ + 0x12000 },
        ],
    };
    let u = OrcUnwinder::new(kernel_table(), None);
    for cpus in [vec![Some(0)], vec![None]] {
        let vcpus = [v.clone()];
        let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &cpus, tasks: &tasks };
        let (c, sum) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(X, 0x80, "irq_x")).unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].task_id, c[0].kind), (Some(77), "stack"));
        assert_eq!((sum.unwound, sum.scanned, sum.idle_cpu_stacks), (1, 0, 1), "{sum:?}");
        // The interrupted instruction and the vCPU's own RIP count too; the stale word does not.
        let (c, _) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(D, 0x100, "do_d")).unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
        let (c, _) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(H, 0x80, "handler")).unwrap();
        assert!(c.iter().any(|c| c.kind == "rip" && c.vcpu == Some(0)), "{c:?}");
        let (c, _) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(TARGET, 0x40, "target")).unwrap();
        assert!(c.is_empty(), "{c:?}");
        // The scan sees the stale word.
        let (c, _) = check(CheckMode::Conservative, Some(&u), &mut g, &syms(), input, &range(TARGET, 0x40, "target")).unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
    }
    // A vCPU in user mode: its task's kernel stack is not live.
    let user = VcpuState { index: 0, rip: 0x40_1000, cs: 0x33, ..VcpuState::default() };
    let vcpus = [user.clone()];
    let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &[Some(0)], tasks: &tasks };
    let (c, sum) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(TARGET, 0x40, "target")).unwrap();
    assert!(c.is_empty() && sum.scanned == 0 && sum.unwound == 0, "{c:?} {sum:?}");
    // In kernel mode on the user stack (syscall entry before the stack
    // switch): nothing live on kernel stacks, no fallback; its RIP counts.
    let entry = VcpuState { index: 0, rip: H, cs: 0x10, gprs: { let mut r = [0; 16]; r[VcpuState::RSP] = 0x7ffe_0000; r }, ..VcpuState::default() };
    let vcpus = [entry];
    let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &[Some(0)], tasks: &tasks };
    let (c, sum) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(TARGET, 0x40, "target")).unwrap();
    assert!(c.is_empty() && sum.scanned == 0 && sum.fallbacks.is_empty(), "{c:?} {sum:?}");
    let (c, _) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(H, 0x80, "handler")).unwrap();
    assert!(c.iter().any(|c| c.kind == "rip" && c.vcpu == Some(0)), "{c:?}");
    let vcpus = [user];
    // The same task described as "in user mode, only its pt_regs on the stack".
    let mut t2 = tasks.clone();
    t2.tasks[0].on_cpu = false;
    t2.tasks[0].saved_sp = Some(S + SIZE - PT_REGS_SIZE);
    let input = CheckInput { vcpus: &vcpus, vcpu_cpus: &[None], tasks: &t2 };
    let (c, sum) = check(CheckMode::Orc, Some(&u), &mut g, &syms(), input, &range(TARGET, 0x40, "target")).unwrap();
    assert!(c.is_empty() && sum.scanned == 0 && sum.unwound == 1 && sum.fallbacks.is_empty(), "{c:?} {sum:?}");
}

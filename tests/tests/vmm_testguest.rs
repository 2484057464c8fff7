//! The VMM against the purpose-built test guest under KVM: boot with 1 and 4
//! vCPUs, 1,000 pause/resume cycles, memory writes while paused, power-off
//! and triple fault, through the library API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vsplice_patcher::model::backend::Backend;
use vsplice_tests::livepatch::boot;
use vsplice_tests::testguest::{self, Capture};
use vsplice_vmm::vstate::vcpu::GuestExit;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until every task of every vCPU has printed at least `iters` lines.
fn wait_all_tasks(out: &Capture, vcpus: u64, tasks: u64, iters: u64) {
    let ok = out.wait_for(BOOT_TIMEOUT, |text| {
        let lines = testguest::parse_all(text).unwrap_or_default();
        let p = testguest::progress(&lines);
        (0..vcpus).all(|c| p.iter().filter(|((cpu, _), it)| *cpu == c && **it >= iters).count() as u64 >= tasks)
    });
    assert!(ok, "not every task progressed to {iters}; console:\n{}", out.text());
    testguest::parse_all(&out.text()).unwrap();
}

fn boots_and_every_task_prints(vcpus: u64) {
    let _g = testguest::vm_lock();
    if !testguest::ready(&format!("boot_{vcpus}_vcpus")) {
        return;
    }
    let (mut vmm, out) = boot(vcpus as usize, "tg.tasks=3");
    wait_all_tasks(&out, vcpus, 3, 2);
    let text = out.text();
    assert!(text.contains(&format!("cpus={vcpus}")), "guest did not find {vcpus} CPUs:\n{text}");
    assert!(vmm.exit_status().is_none(), "guest ended early: {:?}", vmm.exit_status());
    vmm.shutdown();
}

#[test]
fn boots_with_one_vcpu_and_every_task_prints() {
    boots_and_every_task_prints(1);
}

#[test]
fn boots_with_four_vcpus_and_every_task_prints() {
    boots_and_every_task_prints(4);
}

#[test]
fn thousand_pause_resume_cycles_lose_no_line_and_every_task_progresses() {
    let _g = testguest::vm_lock();
    if !testguest::ready("pause_resume_1000") {
        return;
    }
    let (mut vmm, out) = boot(2, "tg.tasks=2");
    wait_all_tasks(&out, 2, 2, 1);
    let before = testguest::progress(&testguest::parse_all(&out.text()).unwrap());
    let mut rips = std::collections::BTreeSet::new();
    let mark = out.text().len();
    for i in 0..1000 {
        let regs = vmm.pause().unwrap_or_else(|e| panic!("pause {i} failed: {e}"));
        assert_eq!(regs.len(), 2);
        assert!(regs.iter().all(|r| r.long_mode()), "vCPU not in long mode at pause {i}: {regs:?}");
        rips.extend(regs.iter().map(|r| (r.index, r.rip)));
        vmm.resume().unwrap();
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // The guest ran while being cycled: vCPUs were caught at more than one
    // place, and every task printed lines between the first pause and the last resume.
    assert!(rips.len() > 2, "vCPUs were parked at only {} distinct RIPs", rips.len());
    let during = testguest::progress(&testguest::parse_all(&out.text()[mark..]).unwrap());
    assert_eq!(during.len(), before.len(), "some task printed nothing while being paused and resumed");
    // Every task must move on past where it was before the cycles.
    let ok = out.wait_for(BOOT_TIMEOUT, |text| {
        let now = testguest::progress(&testguest::parse_all(text).unwrap_or_default());
        before.iter().all(|(k, it)| now.get(k).is_some_and(|n| n > it))
    });
    assert!(ok, "a task stopped progressing; console:\n{}", out.text());
    let lines = testguest::parse_all(&out.text()).expect("no torn or garbled line");
    // No line lost: each task's iterations are consecutive.
    let mut last = std::collections::BTreeMap::new();
    for l in &lines {
        if let Some(prev) = last.insert((l.cpu, l.task), l.iter) {
            assert_eq!(l.iter, prev + 1, "line lost for cpu {} task {}", l.cpu, l.task);
        }
    }
    assert!(vmm.exit_status().is_none());
    vmm.shutdown();
}

#[test]
fn memory_written_while_paused_shows_after_resume() {
    let _g = testguest::vm_lock();
    if !testguest::ready("memory_write_while_paused") {
        return;
    }
    let (_, magic_phys) = testguest::symbol("tg_magic").unwrap();
    let (mut vmm, out) = boot(2, "tg.tasks=2");
    wait_all_tasks(&out, 2, 2, 1);
    let new_magic: u64 = 0x5eed_f00d_cafe_0042;
    Backend::stop(&mut vmm).unwrap();
    let mut old = [0u8; 8];
    vmm.read_phys(magic_phys, &mut old).unwrap();
    assert_ne!(u64::from_le_bytes(old), new_magic);
    vmm.write_phys(magic_phys, &new_magic.to_le_bytes()).unwrap();
    let mark = out.text().len();
    Backend::resume(&mut vmm).unwrap();
    let ok = out.wait_for(BOOT_TIMEOUT, |text| {
        let lines = testguest::parse_all(&text[mark..]).unwrap_or_default();
        let seen: std::collections::BTreeSet<u64> = lines.iter().filter(|l| l.magic == new_magic).map(|l| l.cpu).collect();
        seen.len() == 2
    });
    assert!(ok, "new magic not printed by both vCPUs:\n{}", &out.text()[mark..]);
    // Out-of-range accesses are refused, not a crash.
    let mut b = [0u8; 8];
    assert_eq!(vmm.read_phys(1 << 40, &mut b).unwrap_err().cause(), "bad_address");
    // Through a page walk (a guest pointer beyond guest memory, here the
    // root table itself), the VMM's refusal is the same `not_ram` the
    // gdbstub path's filter gives for device memory and holes.
    {
        use vsplice_patcher::arch::x86::vmem::VirtMem;
        use vsplice_patcher::model::KernelMemory;
        let mut vm = VirtMem::new(&mut vmm, 1 << 40, 0);
        assert_eq!(vm.read_u64(0xffff_ffff_8100_0000).unwrap_err().cause(), "not_ram");
    }
    vmm.shutdown();
}

#[test]
fn pausing_twice_resuming_a_running_vm_and_pausing_after_shutdown_are_defined() {
    let _g = testguest::vm_lock();
    if !testguest::ready("pause_edge_cases") {
        return;
    }
    let (mut vmm, out) = boot(2, "tg.tasks=1");
    wait_all_tasks(&out, 2, 1, 1);
    vmm.resume().expect("resume while running is a no-op");
    let first = vmm.pause().unwrap();
    let second = vmm.pause().expect("pause while paused returns the same snapshot");
    assert_eq!(first, second);
    assert!(vmm.is_paused());
    vmm.resume().unwrap();
    vmm.resume().unwrap();
    assert!(!vmm.is_paused());
    vmm.shutdown();
    assert_eq!(vmm.pause().unwrap_err().cause(), "guest_gone");
}

#[test]
fn guest_poweroff_is_a_clean_exit() {
    let _g = testguest::vm_lock();
    if !testguest::ready("poweroff") {
        return;
    }
    let (mut vmm, out) = boot(2, "tg.tasks=2 tg.iters=2");
    let exit = vmm.wait_for_exit(Some(BOOT_TIMEOUT)).unwrap();
    assert_eq!(exit, Some(GuestExit::PowerOff), "ACPI S5 power-off expected\n{}", out.text());
    assert!(out.text().contains("TG poweroff"));
    assert_eq!(vmm.pause().unwrap_err().cause(), "guest_gone");
}

#[test]
fn triple_fault_is_reported_with_rip() {
    let _g = testguest::vm_lock();
    if !testguest::ready("triple_fault") {
        return;
    }
    let (mut vmm, out) = boot(1, "tg.triple_fault");
    let exit = vmm.wait_for_exit(Some(BOOT_TIMEOUT)).unwrap();
    match exit {
        Some(GuestExit::TripleFault { vcpu: 0, rip: Some(rip), insn }) => {
            assert!(rip >= 0xffff_ffff_8000_0000, "RIP {rip:#x} not in the kernel half");
            assert!(!insn.is_empty(), "no code bytes read at RIP {rip:#x}");
        }
        other => panic!("expected a triple fault, got {other:?}\n{}", out.text()),
    }
}

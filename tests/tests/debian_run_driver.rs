//! The live-patch driver of `vsplice run` (`vsplice_vmm::livepatch`) on
//! stock Debian kernels under QEMU (TCG). This host has no VMX/SVM, so no
//! stock kernel boots under vsplice's own KVM VMM in useful time; QEMU's
//! gdbstub stands in for the VMM behind the same `LiveGuest` seam (stop,
//! registers, physical memory, resume, arena, doorbell). What runs is the
//! driver `vsplice run` runs, turn by turn, from the first instruction of
//! the boot:
//!
//! - the kernel is identified while it boots (attempts fail or succeed
//!   early), identified again once `system_state` is RUNNING, and the
//!   desired patch (`cmdline_marker`) is applied then: the guest's
//!   /proc/cmdline shows it; a revert through the same target takes it back;
//! - a kernel with 5-level paging (`-cpu max`, LA57 checked in the guest)
//!   is identified and patched the same way through the driver (its target
//!   in 5-level mode), /proc/cmdline shows it, and a revert takes it back.
//!
//! What is not covered here: the KVM backend itself under a stock kernel
//! (`cli_run::debian_kernel_is_live_patched_under_vsplice_run`, which needs
//! VMX/SVM).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vsplice_patcher::arch::x86::guest::AutoStop;
use vsplice_patcher::arch::x86::paging::PagingMode;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::model::ArenaRange;
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::txn::{Cause, Patcher, TxnConfig, TxnReport};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, QemuConfig};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::skip::skip;
use vsplice_tests::testguest::vm_lock;
use vsplice_vmm::livepatch::{ArenaGuest, BootTarget, LivePatches, Unavailable};

/// Longest a TCG boot may take until the driver has applied (or refused).
const BOOT_BUDGET: Duration = Duration::from_secs(400);

/// QEMU's gdbstub as the driver's guest.
type GdbLive = ArenaGuest<AutoStop<GdbBackend>>;

/// Spawns a Debian guest and attaches to its gdbstub at once, so the driver
/// sees the whole boot; `None` after a loud skip when QEMU or the images are
/// missing.
fn spawn(label: &str, cpu: Option<&str>) -> Option<(Guest, GdbLive)> {
    let mut cfg = QemuConfig::debian_or_skip(Flavour::Amd64, label)?;
    cfg.cpu = cpu.map(str::to_owned);
    cfg.boot_timeout = BOOT_BUDGET;
    let arena = cfg.arena.map(|a| ArenaRange::new(a.base, a.size).unwrap()).unwrap();
    let g = Guest::spawn_or_skip(cfg)?;
    let opts = GdbOptions { timeout: Duration::from_secs(30), ..GdbOptions::default() };
    let mut be = GdbBackend::connect(g.gdb_addr().unwrap(), opts).unwrap();
    assert!(be.has_phys_access(), "QEMU's gdbstub offers no physical memory mode");
    be.resume().unwrap();
    Some((g, ArenaGuest { backend: AutoStop(be), arena, doorbell: None }))
}

/// The desired list: the cmdline_marker example for the flavour's kernel.
fn cmdline_marker(dir: &std::path::Path) -> (LivePatches, String) {
    let img = debian_images(Flavour::Amd64).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let file: PathBuf = dir.join("cmdline_marker.vsp");
    std::fs::write(&file, patch.to_bytes().unwrap()).unwrap();
    let lp = LivePatches::open(&img.vmlinuz, &[file], TaskSource::Auto).unwrap();
    (lp, patch.manifest.id.clone())
}

/// Turns the driver every 100 ms until it applied (or refused) the patches.
fn drive(lp: &LivePatches, boot: &mut BootTarget, live: &mut GdbLive, g: &Guest) -> Vec<TxnReport> {
    let started = Instant::now();
    let mut reports = Vec::new();
    while !boot.applied() {
        assert!(started.elapsed() < BOOT_BUDGET, "not applied after {:?} ({} attempts):\n{}", started.elapsed(), boot.attempts(), g.console_tail(30));
        lp.turn(boot, live, &mut |r| reports.push(r.clone()));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("  driver: {} identification attempts, done after {:?}", boot.attempts(), started.elapsed());
    reports
}

/// The guest's /proc/cmdline shows the patch; a revert through the boot's
/// target takes it back; then detach.
fn patched_then_reverted(mut g: Guest, mut live: GdbLive, boot: &BootTarget, id: &str) {
    let cmdline = g.run_ok("cat /proc/cmdline").unwrap();
    assert!(cmdline.trim_end().ends_with(" vsplice.marker=cmdline"), "{cmdline}");
    let arena = live.arena;
    let r = Patcher::new(&mut live, boot.kernel().unwrap(), TxnConfig::new(arena)).revert(id);
    assert!(r.is_ok(), "{}", r.to_json());
    let back = g.run_ok("cat /proc/cmdline").unwrap();
    assert!(!back.contains("vsplice.marker"), "{back}");
    live.backend.0.detach().unwrap();
    g.check_console().unwrap();
}

#[test]
fn a_booting_debian_kernel_is_identified_and_patched_once_up_then_reverted() {
    let _l = vm_lock();
    let dir = tmp_dir("run-driver");
    let (lp, id) = cmdline_marker(&dir);
    let Some((mut g, mut live)) = spawn("run_driver", None) else { return };
    let mut boot = BootTarget::new(lp.source());
    assert!(matches!(boot.kernel(), Err(Unavailable::NotYet(_))));
    let reports = drive(&lp, &mut boot, &mut live, &g);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].cause, Cause::Ok, "{}", reports[0].to_json());
    assert!(boot.is_up());
    // Seen from the first instruction: at least one attempt before RUNNING
    // (failed, or succeeded and repeated at RUNNING) and one at RUNNING.
    assert!(boot.attempts() >= 2, "{} attempts", boot.attempts());
    let release = boot.kernel().unwrap().release().map(str::to_owned).unwrap();
    g.wait_ready().unwrap();
    assert_eq!(g.run_ok("uname -r").unwrap().trim(), release);
    patched_then_reverted(g, live, &boot, &id);
}

#[test]
fn a_five_level_paging_kernel_is_identified_and_patched() {
    let _l = vm_lock();
    let dir = tmp_dir("run-driver-la57");
    let (lp, id) = cmdline_marker(&dir);
    let Some((mut g, mut live)) = spawn("run_driver_la57", Some("max")) else { return };
    let mut boot = BootTarget::new(lp.source());
    let reports = drive(&lp, &mut boot, &mut live, &g);
    g.wait_ready().unwrap();
    let la57 = g.run_ok("grep -c -w la57 /proc/cpuinfo || true").unwrap();
    if la57.trim().parse::<u32>().unwrap_or(0) == 0 {
        skip("run_driver_la57", "QEMU's `-cpu max` has no LA57 here: the guest does not run with 5-level paging");
        live.backend.0.detach().unwrap();
        return;
    }
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].cause, Cause::Ok, "{}", reports[0].to_json());
    let kernel = boot.kernel().unwrap();
    assert_eq!(kernel.paging_mode(), PagingMode::FiveLevel);
    patched_then_reverted(g, live, &boot, &id);
}

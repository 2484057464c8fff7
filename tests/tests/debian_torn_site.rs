//! Issue 11, crash recovery: a jump site that crosses a 4 KiB page is
//! written in two writes, so a `vsplice patch apply` killed between them
//! leaves the site torn (its first bytes new, the rest old). Recovery used
//! to call that foreign (`text_changed`) while `status` saw no half-written
//! transaction; now the intent's before and after bytes are both halves, the
//! status says `partial` (and the guest stays stopped), and recovery rolls
//! the site back.
//!
//! On a stock Debian kernel under QEMU (TCG): functions are 16-byte aligned
//! and sites are at +0 or +5, so no site of a real kernel crosses a page.
//! The kill is real (`VSPLICE_FAULT_KILL_AFTER_WRITES`, at each write until
//! the intent is in the guest and no site is written yet); the tear at every
//! split of the first site is then put there through the gdbstub, as the
//! first of the two writes would have left it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use vsplice_patcher::arena::codec;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::cli::{text, vsplice_killed_after};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::RunOptions;
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

#[test]
fn a_torn_jump_site_left_by_a_killed_apply_is_recovered() {
    let _l = vm_lock();
    let Some(mut g) = linuxpatch::boot_agentless(Flavour::Amd64, "linux_torn_site") else { return };
    let img = debian_images(Flavour::Amd64).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build_text(&img, &image, "two_sites", linuxpatch::TWO_SITES, true).unwrap();
    let dir = tmp_dir("linux-torn");
    let vsp = dir.join("two.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let vsp = vsp.to_str().unwrap().to_owned();
    let (c0, e0) = (g.run_ok("cat /proc/cmdline").unwrap(), g.run_ok("cat /proc/execdomains").unwrap());
    let gdb = g.gdb_addr().unwrap().to_owned();
    let arena = linuxpatch::arena_arg(&g);
    let arena_phys = g.arena().unwrap().base;
    let run = |args: &[&str], kill: Option<usize>| {
        let mut a = vec!["patch"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--gdb", &gdb, "--target", "linux", "--arena", &arena]);
        vsplice_killed_after(&a, kill)
    };
    let mut tears = 0;
    for pick in 0..3 {
        // Kill the apply at each write in turn until the intent is in the
        // guest and its first site not written yet.
        let mut found = None;
        for kill_at in 0..40 {
            let o = run(&["apply", &vsp], Some(kill_at));
            assert_eq!(o.status.signal(), Some(9), "apply at {kill_at} was not killed before its first site write: {}", text(&o.stdout));
            let st = text(&run(&["status"], None).stdout);
            if st.contains("\"text\": \"not_started\"") {
                found = Some(kill_at);
                break;
            }
            assert!(st.contains("\"intent\": null"), "kill at {kill_at}: {st}");
        }
        let kill_at = found.expect("no kill point left the intent saved with no site written");
        let (mut be, target) = linuxpatch::attach(&g).unwrap();
        let w = {
            let mut p = linuxpatch::patcher(&g, &mut be, &target);
            let reg = codec::load(p.guest().backend(), arena_phys).unwrap().unwrap().registry;
            reg.intent.unwrap().writes[0].clone()
        };
        let split = [1, w.after.len() / 2, w.after.len() - 1][pick];
        eprintln!("kill at {kill_at}: intent saved; site {:#x}: {:02x?} -> {:02x?}; torn after {split} bytes", w.addr, w.before, w.after);
        let torn: Vec<u8> = w.after[..split].iter().chain(&w.before[split..]).copied().collect();
        {
            let mut p = linuxpatch::patcher(&g, &mut be, &target);
            p.guest().write_virt(w.addr, &torn).unwrap();
        }
        linuxpatch::detach(be).unwrap();
        let st = text(&run(&["status"], None).stdout);
        assert!(st.contains("\"text\": \"partial\""), "torn after {split} bytes: {st}");
        // A half-written text keeps the guest stopped.
        let r = g.run_with("echo running", RunOptions::new(Duration::from_secs(3)));
        assert!(r.is_err(), "the guest runs with a torn site");
        let o = run(&["status", "--recover"], None);
        let st = text(&o.stdout);
        assert!(o.status.success() && st.contains("\"intent\": null"), "recovery of a tear after {split} bytes: {st}\n{}", text(&o.stderr));
        assert!(!st.contains("two_sites"), "rolled back, not applied: {st}");
        assert_eq!((g.run_ok("cat /proc/cmdline").unwrap(), g.run_ok("cat /proc/execdomains").unwrap()), (c0.clone(), e0.clone()));
        tears += 1;
    }
    assert_eq!(tears, 3);
    // The guest takes the patch whole afterwards.
    let o = run(&["apply", &vsp], None);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} two\n", c0.trim_end()));
    let o = run(&["revert", "two_sites"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), c0);
    let _ = std::fs::remove_dir_all(&dir);
    g.check_console().unwrap();
}

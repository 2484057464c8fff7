//! Issue 10 A on stock Debian kernels under QEMU (TCG): every `vsplice
//! patch` and `vsplice inspect` that connects to the guest and then is
//! refused or fails lets the guest run on. After each case the guest must
//! answer a shell command on its command channel within a short time-out:
//!
//! - a kernel with 5-level paging (QEMU `-cpu max`, whose LA57 the Debian
//!   kernel turns on), which vsplice supports: `list` and `status` answer,
//!   and `apply` of a garbage file and `revert` of an unknown id are refused
//!   for what they are (never `five_level_paging` any more);
//! - a wrong arena (a range of guest RAM and a range beyond it): no
//!   registry is found there, so `status` and `list` answer "nothing
//!   applied" (vsplice cannot tell a wrong arena from an empty one);
//! - a patch for another kernel (a test-guest patch given to a Linux guest);
//! - a garbage patch file; an unknown patch id for `revert`;
//! - `inspect` failing after it attached (a symbol that does not exist).
//!
//! The deliberate exception, a half-written transaction that keeps the guest
//! stopped, is tested by `debian_livepatch`'s crash test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use vsplice_patcher::testing::{FakeKernel, FakePatch};
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::debian::Flavour;
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, QemuConfig, RunOptions};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::skip::skip;
use vsplice_tests::testguest::vm_lock;

/// Boots a Debian guest without the agent, optionally with another `-cpu`;
/// `None` after a loud skip when the images or QEMU are missing.
fn boot(label: &str, cpu: Option<&str>) -> Option<Guest> {
    let mut cfg = QemuConfig::debian_or_skip(Flavour::Amd64, label)?;
    cfg.cpu = cpu.map(str::to_owned);
    cfg.extra_append.push("vsplice.agent=0".into());
    Guest::boot_or_skip(cfg)
}

/// The guest answers a command within a short time: it runs.
fn assert_runs(g: &mut Guest, after: &str) {
    let r = g.run_with("echo alive", RunOptions::new(Duration::from_secs(30)));
    match r {
        Ok(o) if o.text().contains("alive") => eprintln!("  after {after}: the guest runs"),
        Ok(o) => panic!("after {after}: unexpected answer {:?}", o.text()),
        Err(e) => panic!("after {after}: the guest does not answer (left stopped?): {e}"),
    }
}

/// `vsplice patch <cmd> --gdb … --target linux --arena <arena>`.
fn patch_cmd(g: &Guest, cmd: &[&str], arena: &str) -> Output {
    let gdb = g.gdb_addr().unwrap().to_owned();
    let mut args = vec!["patch"];
    args.extend_from_slice(cmd);
    args.extend_from_slice(&["--gdb", &gdb, "--target", "linux", "--arena", arena]);
    vsplice(&args)
}

/// The command failed (non-zero exit) and its output names `cause`.
fn assert_fails_with(o: &Output, what: &str, cause: &str) {
    let all = format!("{}\n{}", text(&o.stdout), text(&o.stderr));
    assert!(!o.status.success(), "{what}: succeeded: {all}");
    assert!(all.contains(cause), "{what}: cause {cause} expected: {all}");
    eprintln!("  {what}: refused: {}", text(&o.stderr).trim());
}

#[test]
fn every_refusal_and_error_lets_the_guest_run_on() {
    let _l = vm_lock();
    let label = "refusals_resume";
    let Some(mut g) = boot(label, None) else { return };
    let arena = linuxpatch::arena_arg(&g);
    let dir = tmp_dir("refusals-resume");
    assert_runs(&mut g, "boot");

    // A wrong arena: guest RAM (no registry there: read-only commands only,
    // an apply would write into the guest's RAM), and beyond the guest's RAM.
    for wrong in ["0x1000000:4M", "0x400000000:4M"] {
        let o = patch_cmd(&g, &["status"], wrong);
        eprintln!("  status --arena {wrong}: exit {:?}: {}{}", o.status.code(), text(&o.stdout).trim(), text(&o.stderr).trim());
        assert!(o.status.success() && text(&o.stdout).contains("\"patches\": []"), "{}\n{}", text(&o.stdout), text(&o.stderr));
        assert_runs(&mut g, &format!("status with the wrong arena {wrong}"));
        let o = patch_cmd(&g, &["list"], wrong);
        eprintln!("  list --arena {wrong}: exit {:?}: {}{}", o.status.code(), text(&o.stdout).trim(), text(&o.stderr).trim());
        assert_runs(&mut g, &format!("list with the wrong arena {wrong}"));
    }

    // A garbage patch file.
    let garbage = dir.join("garbage.vsp");
    std::fs::write(&garbage, b"this is not a vsplice patch\x00\xff\x13\x37").unwrap();
    let o = patch_cmd(&g, &["apply", garbage.to_str().unwrap()], &arena);
    assert_fails_with(&o, "apply of a garbage file", "bad_patch");
    assert_runs(&mut g, "a garbage patch file");

    // A patch for another kernel (the fake test-guest kernel of patcher::testing).
    let kernel = FakeKernel::new();
    let other = FakePatch::new("for_another_kernel").replace("fake_a").build(&kernel).unwrap();
    let other_vsp = dir.join("other.vsp");
    std::fs::write(&other_vsp, other.to_bytes().unwrap()).unwrap();
    let o = patch_cmd(&g, &["apply", other_vsp.to_str().unwrap()], &arena);
    assert_fails_with(&o, "apply of a patch for another kernel", "no_match");
    assert_runs(&mut g, "a patch for another kernel");

    // An unknown patch id.
    let o = patch_cmd(&g, &["revert", "no_such_patch_0123"], &arena);
    assert_fails_with(&o, "revert of an unknown id", "\"cause\"");
    assert_runs(&mut g, "revert of an unknown patch id");

    // inspect: attached, then nothing found.
    let gdb = g.gdb_addr().unwrap().to_owned();
    let o = vsplice(&["inspect", "--gdb", &gdb, "symbol", "no_such_symbol_xyz"]);
    assert_fails_with(&o, "inspect of a missing symbol", "not_found");
    assert_runs(&mut g, "inspect of a missing symbol");

    // And the real arena still works after all of that.
    let o = patch_cmd(&g, &["list"], &arena);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_runs(&mut g, "a good list");
    let _ = std::fs::remove_dir_all(&dir);
    g.check_console().unwrap();
}

#[test]
fn five_level_paging_is_supported_and_the_guest_runs_on() {
    let _l = vm_lock();
    let label = "five_level_resume";
    let Some(mut g) = boot(label, Some("max")) else { return };
    let la57 = g.run_ok("grep -c ' la57' /proc/cpuinfo || true").unwrap();
    if la57.trim().parse::<u32>().unwrap_or(0) == 0 {
        skip(label, "QEMU's `-cpu max` has no LA57 here: the guest does not run with 5-level paging");
        return;
    }
    let arena = linuxpatch::arena_arg(&g);
    let dir = tmp_dir("five-level-resume");
    let garbage = dir.join("garbage.vsp");
    std::fs::write(&garbage, b"not a patch").unwrap();
    assert_runs(&mut g, "boot with 5-level paging");
    for cmd in [&["list"][..], &["status"][..]] {
        let o = patch_cmd(&g, cmd, &arena);
        assert!(o.status.success(), "{cmd:?} on 5-level paging: {}\n{}", text(&o.stdout), text(&o.stderr));
        assert!(!text(&o.stderr).contains("five_level_paging"), "{}", text(&o.stderr));
        assert_runs(&mut g, &format!("{cmd:?} on 5-level paging"));
    }
    for (cmd, cause) in [(&["revert", "x"][..], "\"cause\""), (&["apply", garbage.to_str().unwrap()][..], "bad_patch")] {
        let o = patch_cmd(&g, cmd, &arena);
        assert_fails_with(&o, &format!("{cmd:?} on 5-level paging"), cause);
        let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
        assert!(!all.contains("five_level_paging") && !all.contains("unsupported_target"), "{all}");
        assert_runs(&mut g, &format!("{cmd:?} refused on 5-level paging"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    g.check_console().unwrap();
}

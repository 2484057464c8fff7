//! Issue 13, item 2: a live patch of a kernel module, built from a real
//! Debian fix alone and applied to the module loaded in the guest.
//!
//! The corpus entry comes from `images/debian-fix-source.sh --from 56 --to
//! 57 amd64`: Debian 12's generic 6.1.0-56 kernel, its source, and
//! `fix.patch`, the nfsd fix of 6.1.0-57 (`fs/nfsd/nfs4state.c`: SEQUENCE
//! checks the reply size against the slot before encoding). nfsd is a
//! module in the generic flavour; its `.ko` and those of its dependencies
//! come from the image package (`dl/linux-image-*.deb`, unpacked once into
//! `image-modules/`; `vsplice_tests::modcorpus`).
//!
//! - Without `--modules` the build is refused `module_ko_missing`. The
//!   patch is built with `--modules` (run-pre against `nfsd.ko`): its
//!   replacements name their object, `nfsd`, and the names it binds to are
//!   nfsd's, sunrpc's (by `Module.symvers`) or vmlinux's.
//! - The guest boots with the modules in its initramfs but not loaded:
//!   applying is refused `module_not_loaded`, nothing written.
//! - The modules are loaded, nfsd serves NFSv4.1 on 127.0.0.1:2049 (a
//!   listener through `/proc/fs/nfsd/portlist`, one thread, the client's
//!   address put into the `auth.unix.ip` cache by hand since there is no
//!   mountd), and a hand-written COMPOUND whose first op is SEQUENCE with an
//!   unknown session is sent: the server answers NFS4ERR_BADSESSION from
//!   `nfsd4_sequence`, the replaced function. That reply is checked before
//!   the patch, with it (the function's entry jumps into the arena) and
//!   after the revert (entry bytes restored).
//! - Applied again, then nfsd unloaded: the revert is refused
//!   `module_changed` (`module_unloaded`) without writing, and the patch is
//!   gone from the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use vsplice_tests::cli::text;
use vsplice_tests::nfsd::{sequence, BADSESSION, ENTRIES, MODULES, SERVE};
use vsplice_tests::modcorpus::{assert_jumps, assert_restored, corpus_or_skip, initramfs_with, insmod_all, module_entries, replaced_names, PatchCli};
use vsplice_tests::qemu::Guest;
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

/// The functions the fix replaces (the cold part of `nfsd4_sequence` too).
const REPLACED: [&str; 3] = ["client_info_show", "nfsd4_sequence", "nfsd4_sequence.cold"];

#[test]
fn the_debian_nfsd_fix_is_applied_to_the_loaded_module() {
    let _l = vm_lock();
    let label = "module_nfsd_generic";
    let Some(fix) = corpus_or_skip(label, "6.1.0-56-amd64", "images/debian-fix-source.sh --from 56 --to 57 amd64", &MODULES) else { return };
    let dir = tmp_dir(label);
    let vsp = dir.join("nfsd-fix.vsp");
    let modules = fix.modules().to_string_lossy().into_owned();
    // Without the module tree: refused by name, nothing written.
    let o = fix.build_fix(&vsp, &[]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.lines().last().unwrap_or_default().starts_with("vsplice: error [module_ko_missing]"), "{err}");
    assert!(!vsp.exists(), "written despite the refusal");
    let t = Instant::now();
    let o = fix.build_fix(&vsp, &["--modules", &modules]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    eprintln!("  built from the diff in {:.1} s:\n{}", t.elapsed().as_secs_f64(), text(&o.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(replaced_names(&manifest), REPLACED, "{manifest}");
    let reps = manifest["replacements"].as_array().unwrap();
    assert!(reps.iter().all(|r| r["object"] == "nfsd"), "every replacement names its module: {manifest}");
    let syms = manifest["symbols"].as_array().unwrap();
    let bound = |o: &str| syms.iter().any(|a| a["object"] == o);
    assert!(bound("nfsd") && bound("sunrpc"), "names bound to nfsd and to sunrpc: {manifest}");

    let initrd = initramfs_with(&fix, &MODULES, "nfsd", &dir).unwrap();
    let Some(mut g) = fix.boot(label, initrd) else { return };
    let patch_cli = PatchCli::new(&g).unwrap();
    let cli = |cmd: &[&str]| patch_cli.run(cmd);
    // Not loaded: refused by name, nothing written.
    let entries = |g: &Guest| Some(module_entries(g, "nfsd", &ENTRIES).unwrap()).filter(|e| !e.is_empty());
    assert!(entries(&g).is_none(), "nfsd is loaded before the test loads it");
    let o = cli(&["apply", vsp.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(!o.status.success() && out.contains("\"cause\":\"module_not_loaded\""), "{out}\n{}", text(&o.stderr));
    eprintln!("  not loaded: {}", out.lines().next().unwrap_or_default());
    let listed = text(&cli(&["list"]).stdout);
    assert!(!listed.contains(manifest["id"].as_str().unwrap()), "a refused patch is listed: {listed}");

    g.run_ok(&format!("{}; grep -c '^nfsd ' /proc/modules", insmod_all(&MODULES, "nfsd"))).unwrap();
    let served = g.run_ok(SERVE).unwrap();
    eprintln!("  nfsd serving: {}", served.replace('\n', " | "));
    assert_eq!(sequence(&mut g), BADSESSION, "SEQUENCE with an unknown session before the patch");
    let old = entries(&g).expect("nfsd loaded");

    let o = cli(&["apply", vsp.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(o.status.success() && out.contains("\"cause\":\"ok\""), "{out}\n{}", text(&o.stderr));
    eprintln!("  applied: {}", out.lines().next().unwrap_or_default());
    assert_jumps(&old, &entries(&g).unwrap());
    let status = text(&cli(&["status"]).stdout);
    assert!(status.contains("\"module\"") && status.contains("\"nfsd\""), "the registry records the module: {status}");
    assert_eq!(sequence(&mut g), BADSESSION, "SEQUENCE through the patched nfsd4_sequence");
    assert_eq!(sequence(&mut g), BADSESSION, "and again");
    let problems = g.console_problems();
    assert!(problems.is_empty(), "console after the patched run: {problems:?}");

    let o = cli(&["revert", manifest["name"].as_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_restored(&old, &entries(&g).unwrap());
    assert_eq!(sequence(&mut g), BADSESSION, "SEQUENCE after the revert");

    // Applied again, then the module goes: the revert writes nothing and drops the record.
    let o = cli(&["apply", vsp.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    g.run_ok("set -e; echo 0 > /proc/fs/nfsd/threads; umount /proc/fs/nfsd; rmmod nfsd; ! grep -q '^nfsd ' /proc/modules").unwrap();
    let o = cli(&["revert", manifest["name"].as_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(!o.status.success() && out.contains("\"cause\":\"module_changed\"") && out.contains("module_unloaded"), "{out}\n{}", text(&o.stderr));
    eprintln!("  unloaded: {}", out.lines().next().unwrap_or_default());
    let listed = text(&cli(&["list"]).stdout);
    assert!(!listed.contains(manifest["id"].as_str().unwrap()), "the dropped patch is still listed: {listed}");
    g.check_console().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

//! Issue 13, item 1: a live patch built from a real Debian fix alone
//! (`vsplice patch build --target linux --diff`), applied live to the
//! kernel it was built for, exercised, reverted.
//!
//! The corpus entry comes from `images/debian-fix-source.sh` (run by
//! tests/run-all.sh): Debian 12's 6.1.0-55 cloud kernel (ext4 built in), its
//! source package prepared with its .config, and `fix.patch`, the
//! difference to the 6.1.0-56 source (the ext4 mballoc fix: the NULL checks
//! of `__filemap_get_folio` restored in `ext4_mb_init_cache`'s helper,
//! inlined into `ext4_mb_init_group`, and in `ext4_mb_load_buddy_gfp`).
//!
//! - Bad input first (no guest): the diff reversed (does not apply), a diff
//!   of a header only, the source against another kernel (run-pre:
//!   `source_mismatch`); each a one-line error with its cause and no
//!   output file.
//! - Then the patch is built from the diff (timed, on stderr), the -55
//!   cloud kernel boots under QEMU, an ext4 file system on a loop device
//!   gets written, the patch is applied through the CLI (its BUG sites
//!   kept as `ud2`, its WARN sites compiled as calls of `__warn()`, none
//!   dropped), the replaced
//!   functions' entries are read back (a jump out of the kernel's text),
//!   the fixed path runs (fresh mount: every group's buddy loaded and
//!   initialised through the replaced functions, `mb_groups` read, files
//!   written and read back), the console is free of oopses and warnings,
//!   and the patch is reverted (entries restored, the file system still
//!   works).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use vsplice_patcher::arch::x86::guest::Guest as GuestMem;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::mem::KernelMemory;
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::linuxpatch;
use vsplice_tests::modcorpus::{assert_refused, corpus_or_skip, ModCorpus};
use vsplice_tests::qemu::{Guest, QemuConfig};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::skip::skip;
use vsplice_tests::testguest::{vm_lock, workspace_root};

/// The replaced functions the fix must produce.
const REPLACED: [&str; 2] = ["ext4_mb_init_group", "ext4_mb_load_buddy_gfp"];

fn fix_or_skip(label: &str) -> Option<ModCorpus> {
    corpus_or_skip(label, "6.1.0-55-cloud-amd64", "images/debian-fix-source.sh", &[])
}

#[test]
fn bad_input_is_refused_with_its_cause_and_nothing_written() {
    let label = "diff_bad_input";
    let Some(fix) = fix_or_skip(label) else { return };
    let dir = tmp_dir(label);
    let out = dir.join("bad.vsp");
    // The fix reversed: its '-' lines are not in SRC.
    let diff = std::fs::read_to_string(fix.dir.join("fix.patch")).unwrap();
    let reversed: String = diff
        .lines()
        .map(|l| match l.as_bytes().first() {
            Some(b'+') if !l.starts_with("+++") => format!("-{}", &l[1..]),
            Some(b'-') if !l.starts_with("---") => format!("+{}", &l[1..]),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let rev = dir.join("reversed.patch");
    std::fs::write(&rev, reversed).unwrap();
    assert_refused(&fix.build_diff(&rev, &out, &[]), "diff_does_not_apply", "", &out);
    // A header only.
    let hdr = dir.join("header.patch");
    std::fs::write(&hdr, "--- a/fs/ext4/ext4.h\n+++ b/fs/ext4/ext4.h\n@@ -1,1 +1,1 @@\n-// SPDX-License-Identifier: GPL-2.0\n+// SPDX-License-Identifier: GPL-2.0 \n").unwrap();
    assert_refused(&fix.build_diff(&hdr, &out, &[]), "headers_only", "fs/ext4/ext4.h", &out);
    // This source against the current kernel, which already has the fix.
    let current = workspace_root().join("target/images/debian-cloud-amd64/vmlinuz");
    if current.is_file() {
        assert_refused(&fix.build_against(&fix.dir.join("fix.patch"), &current, &out, &[]), "source_mismatch", "", &out);
    } else {
        skip(label, "no current cloud kernel image: the source_mismatch case is not run");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first bytes of each replaced function in the guest, read through the gdbstub.
fn entries(g: &Guest) -> Vec<(String, u64, [u8; 10])> {
    let (mut be, target) = linuxpatch::attach(g).unwrap();
    let mut out = Vec::new();
    {
        let mut mem = GuestMem::new(&mut be, target.page_table_root(), target.paging_mode().cr4_bits());
        for n in REPLACED {
            let a = target.kallsyms().first_addr(n).unwrap_or_else(|| panic!("{n} not in kallsyms"));
            let mut b = [0u8; 10];
            mem.read(a, &mut b).unwrap();
            out.push((n.to_owned(), a, b));
        }
    }
    linuxpatch::detach(be).unwrap();
    out
}

/// Mounts the loop device again (buddy caches start cold), reads every
/// group's buddy through `mb_groups`, writes and reads back a file.
const EXERCISE: &str = "set -e; umount /mnt; echo umounted; mount -t ext4 /dev/loop0 /mnt; echo mounted; \
    cat /proc/fs/ext4/loop0/mb_groups >/tmp/groups; echo listed; n=$(grep -c '^#[0-9]' /tmp/groups); \
    dd if=/dev/urandom of=/tmp/data bs=64k count=160 2>/dev/null; cp /tmp/data /mnt/f1; sync; echo written; \
    umount /mnt; mount -t ext4 /dev/loop0 /mnt; cmp /tmp/data /mnt/f1; rm /mnt/f1 /tmp/data; echo groups=$n ok";

/// Runs the exercise; the guest's last kernel messages when it fails.
fn exercise(g: &mut Guest) -> String {
    let o = g.run(EXERCISE).unwrap();
    if o.status != 0 {
        let dmesg = g.run("dmesg | tail -n 40").map(|o| o.text()).unwrap_or_default();
        panic!("exercise failed ({}): {}\n{dmesg}", o.status, o.text());
    }
    o.text().lines().last().unwrap_or_default().to_owned()
}

#[test]
fn the_debian_ext4_fix_is_built_from_its_diff_and_applied_live() {
    let _l = vm_lock();
    let label = "diff_ext4_cloud";
    let Some(fix) = fix_or_skip(label) else { return };
    let dir = tmp_dir(label);
    let vsp = dir.join("ext4-fix.vsp");
    let t = Instant::now();
    let o = fix.build_fix(&vsp, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Its WARN sites are kept as calls of the kernel's __warn(), none dropped.
    assert!(text(&o.stderr).contains("WARN site(s) compiled as calls to the kernel's __warn()"), "{}", text(&o.stderr));
    eprintln!("  built from the diff in {:.1} s:\n{}", t.elapsed().as_secs_f64(), text(&o.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let reps = manifest["replacements"].as_array().unwrap();
    let mut names: Vec<&str> = reps.iter().map(|r| r["old"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, REPLACED, "{manifest}");
    assert!(reps.iter().all(|r| r["why"].as_str().is_some_and(|w| w.contains("differs"))), "{manifest}");

    let mut cfg = QemuConfig::new(label, fix.dir.join("vmlinuz"), Some(fix.dir.join("initramfs.cpio.gz")));
    cfg.extra_append.push("vsplice.agent=0".into());
    let Some(mut g) = Guest::boot_or_skip(cfg) else { return };
    assert_eq!(g.run_ok("uname -r").unwrap().trim(), fix.release);
    let setup = "insmod /modules/extra/loop.ko; dd if=/dev/zero of=/tmp/fs.img bs=1M count=64 2>/dev/null && \
        losetup /dev/loop0 /tmp/fs.img && mke2fs -q -b 1024 /dev/loop0 >/dev/null && mkdir -p /mnt && \
        mount -t ext4 /dev/loop0 /mnt && grep -c ' /mnt ext4 ' /proc/mounts";
    assert_eq!(g.run_ok(setup).unwrap().trim(), "1");
    let before = exercise(&mut g);
    assert!(before.trim_end().ends_with("ok"), "{before}");
    let old = entries(&g);

    let (gdb, arena) = (g.gdb_addr().unwrap().to_owned(), linuxpatch::arena_arg(&g));
    let cli = |cmd: &[&str]| {
        let mut args = vec!["patch"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--gdb", gdb.as_str(), "--target", "linux", "--arena", arena.as_str(), "--tasks", "agentless"]);
        vsplice(&args)
    };
    let o = cli(&["apply", vsp.to_str().unwrap()]);
    assert!(o.status.success() && text(&o.stdout).contains("\"cause\":\"ok\""), "{}\n{}", text(&o.stdout), text(&o.stderr));
    eprintln!("  applied: {}", text(&o.stdout).lines().next().unwrap_or_default());
    assert!(!text(&o.stdout).contains("dropped"), "no WARN site may be dropped: {}", text(&o.stdout));
    assert!(text(&o.stdout).contains("BUG site(s) kept as ud2"), "{}", text(&o.stdout));
    let new = entries(&g);
    for ((n, a, was), (_, _, now)) in old.iter().zip(&new) {
        // The jump goes right after the ftrace NOP (ftrace keeps the old entry).
        let at = if now[..5] == [0x0f, 0x1f, 0x44, 0x00, 0x00] { 5 } else { 0 };
        assert_eq!(now[at], 0xe9, "{n} has no jump at its entry after apply: {now:02x?}");
        let site = a + at as u64;
        let to = site.wrapping_add(5).wrapping_add(i32::from_le_bytes([now[at + 1], now[at + 2], now[at + 3], now[at + 4]]) as i64 as u64);
        assert!(to < *a || to >= a + 0x1000, "{n} jumps inside itself ({to:#x})");
        assert_ne!(was, now);
        eprintln!("  {n} @ {a:#x}: {was:02x?} -> jmp {to:#x}");
    }
    let after = exercise(&mut g);
    assert!(after.trim_end().ends_with("ok"), "{after}");
    assert_eq!(after.trim(), before.trim(), "the same groups before and after the patch");
    let problems = g.console_problems();
    assert!(problems.is_empty(), "console after the patched run: {problems:?}");
    let dmesg = g.run_ok("dmesg | grep -E 'EXT4-fs (error|warning)|WARNING:|BUG|Oops' || true").unwrap();
    assert!(dmesg.trim().is_empty(), "{dmesg}");

    let o = cli(&["revert", manifest["name"].as_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    let back = entries(&g);
    for ((n, _, was), (_, _, now)) in old.iter().zip(&back) {
        assert_eq!(was, now, "{n} not restored by revert");
    }
    let reverted = exercise(&mut g);
    assert!(reverted.trim_end().ends_with("ok"), "{reverted}");
    g.check_console().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

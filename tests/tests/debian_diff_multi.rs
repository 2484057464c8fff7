//! Issue 13, item 1: several C files in one diff become one patch
//! (`vsplice patch build --diff`, one object, one manifest), a refusal in
//! one file refuses the patch naming the file unless `--skip-refused`
//! leaves it out (listed in the manifest), and a cumulative multi-file
//! patch atomically replaces an earlier one.
//!
//! On the CI corpus entry of `images/debian-fix-source.sh` (6.1.0-55
//! cloud and its ext4 fix): the real fix (`fs/ext4/mballoc.c`) with
//! small changes of other built-in files whose effect the guest can see:
//! `fs/proc/cmdline.c` (`/proc/cmdline` gains a word), `fs/ext4/sysfs.c`
//! (`/sys/fs/ext4/features/*` read `supported (multi)`), and a change of
//! `__init` code in `fs/proc/version.c` (refused `init_code`).
//!
//! - No guest: bad input of multi-file diffs (a second file that does not
//!   apply, two headers only, a header with C files) is one line with its
//!   cause and nothing written; the `init_code` file refuses the whole
//!   patch by file name, `--skip-refused` leaves it (and a header) out and
//!   the manifest lists them.
//! - Guest (-55 cloud under QEMU TCG): patch A (mballoc + cmdline) applied,
//!   both files' changes live; cumulative patch B (A's files + sysfs)
//!   applied over it: A is gone from the list, all three changes live;
//!   B reverted: everything as booted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::linuxpatch;
use vsplice_tests::modcorpus::{assert_refused as refused, corpus_or_skip, ModCorpus};
use vsplice_tests::qemu::{Guest, QemuConfig};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

fn fix_or_skip(label: &str) -> Option<ModCorpus> {
    corpus_or_skip(label, "6.1.0-55-cloud-amd64", "images/debian-fix-source.sh", &[])
}

fn edit(fix: &ModCorpus, file: &str, from: &str, to: &str) -> String {
    let path = fix.dir.join("src").join(file);
    let old = std::fs::read_to_string(&path).unwrap();
    assert!(old.contains(from), "{file} has no `{from}`");
    // One directory per edit: the tests of this file run in parallel in one
    // process, and `tmp_dir` names by process and label.
    static EDITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = EDITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = tmp_dir(&format!("diff_multi_edit{n}"));
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::write(&a, &old).unwrap();
    std::fs::write(&b, old.replacen(from, to, 1)).unwrap();
    let o = Command::new("diff").arg("-u").arg("--label").arg(format!("a/{file}")).arg("--label").arg(format!("b/{file}")).arg(&a).arg(&b).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "diff: {}", text(&o.stderr));
    text(&o.stdout)
}

const CMDLINE: (&str, &str, &str) = ("fs/proc/cmdline.c", "seq_putc(m, '\\n');", "seq_puts(m, \" vsplice-multi\\n\");");
const SYSFS: (&str, &str, &str) = ("fs/ext4/sysfs.c", "\"supported\\n\"", "\"supported (multi)\\n\"");
const INIT: (&str, &str, &str) = ("fs/proc/version.c", "proc_create_single(\"version\", 0,", "proc_create_single(\"version\", 0444,");

fn write(dir: &Path, name: &str, parts: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, parts.concat()).unwrap();
    p
}

fn replaced(o: &std::process::Output) -> (Vec<String>, serde_json::Value) {
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut v: Vec<String> = m["replacements"].as_array().unwrap().iter().map(|r| r["old"].as_str().unwrap().to_owned()).collect();
    v.sort();
    (v, m)
}

#[test]
fn multi_file_diffs_refuse_by_file_or_leave_files_out() {
    let label = "diff_multi_refusals";
    let Some(fix) = fix_or_skip(label) else { return };
    let dir = tmp_dir(label);
    let out = dir.join("p.vsp");
    let real = std::fs::read_to_string(fix.dir.join("fix.patch")).unwrap();
    let (cmd, init) = (edit(&fix, CMDLINE.0, CMDLINE.1, CMDLINE.2), edit(&fix, INIT.0, INIT.1, INIT.2));
    // A second file that does not apply: the whole diff is refused.
    let stale = cmd.replace("seq_puts(m, saved_command_line);", "seq_puts(m, no_such_line);");
    refused(&fix.build_diff(&write(&dir, "stale.patch", &[real.clone(), stale]), &out, &[]), "diff_does_not_apply", "", &out);
    // Two headers only.
    let h1 = "--- a/fs/ext4/ext4.h\n+++ b/fs/ext4/ext4.h\n@@ -1,1 +1,1 @@\n-// SPDX-License-Identifier: GPL-2.0\n+// SPDX-License-Identifier: GPL-2.0 \n".to_owned();
    let h2 = "--- a/fs/ext4/xattr.h\n+++ b/fs/ext4/xattr.h\n@@ -1,1 +1,1 @@\n-// SPDX-License-Identifier: GPL-2.0\n+// SPDX-License-Identifier: GPL-2.0 \n".to_owned();
    refused(&fix.build_diff(&write(&dir, "headers.patch", &[h1.clone(), h2]), &out, &[]), "headers_only", "ext4.h", &out);
    // A header with C files: refused, or left out with --skip-refused.
    refused(&fix.build_diff(&write(&dir, "with-header.patch", &[real.clone(), h1.clone()]), &out, &[]), "header_changed", "fs/ext4/ext4.h", &out);
    // __init code in one of three files: the patch is refused naming the file.
    let three = write(&dir, "three.patch", &[real.clone(), cmd.clone(), init, h1]);
    refused(&fix.build_diff(&three, &out, &[]), "header_changed", "fs/ext4/ext4.h", &out);
    let three_c = write(&dir, "three-c.patch", &[real, cmd, edit(&fix, INIT.0, INIT.1, INIT.2)]);
    refused(&fix.build_diff(&three_c, &out, &[]), "init_code", "fs/proc/version.c: proc_version_init", &out);
    // --skip-refused: built from the other two; the manifest lists what was left out.
    let o = fix.build_diff(&three, &out, &["--skip-refused"]);
    let (names, m) = replaced(&o);
    assert_eq!(names, ["cmdline_proc_show", "ext4_mb_init_group", "ext4_mb_load_buddy_gfp"], "{m}");
    let left: Vec<(String, String)> = m["build"]["left_out"].as_array().unwrap().iter().map(|l| (l["file"].as_str().unwrap().to_owned(), l["cause"].as_str().unwrap().to_owned())).collect();
    assert_eq!(left, [("fs/ext4/ext4.h".to_owned(), "header_changed".to_owned()), ("fs/proc/version.c".to_owned(), "init_code".to_owned())], "{m}");
    assert!(text(&o.stderr).contains("fs/proc/version.c left out [init_code]"), "{}", text(&o.stderr));
    assert!(out.is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

fn read(g: &mut Guest, what: &str) -> String {
    g.run_ok(what).unwrap().trim().to_owned()
}

#[test]
fn a_multi_file_patch_applies_and_a_cumulative_one_replaces_it() {
    let _l = vm_lock();
    let label = "diff_multi_cumulative";
    let Some(fix) = fix_or_skip(label) else { return };
    let dir = tmp_dir(label);
    let real = std::fs::read_to_string(fix.dir.join("fix.patch")).unwrap();
    let (cmd, sysfs) = (edit(&fix, CMDLINE.0, CMDLINE.1, CMDLINE.2), edit(&fix, SYSFS.0, SYSFS.1, SYSFS.2));
    let (a, b) = (dir.join("a.vsp"), dir.join("b.vsp"));
    let (na, _) = replaced(&fix.build_diff(&write(&dir, "a.patch", &[real.clone(), cmd.clone()]), &a, &["--name", "multi-a"]));
    assert_eq!(na, ["cmdline_proc_show", "ext4_mb_init_group", "ext4_mb_load_buddy_gfp"]);
    let (nb, mb) = replaced(&fix.build_diff(&write(&dir, "b.patch", &[real, cmd, sysfs]), &b, &["--name", "multi-b", "--cumulative"]));
    assert!(nb.contains(&"ext4_attr_show".to_owned()) && nb.len() == 4, "{mb}");
    assert_eq!(mb["cumulative"], true, "{mb}");

    let mut cfg = QemuConfig::new(label, fix.dir.join("vmlinuz"), Some(fix.dir.join("initramfs.cpio.gz")));
    cfg.extra_append.push("vsplice.agent=0".into());
    let Some(mut g) = Guest::boot_or_skip(cfg) else { return };
    let (cmdline0, feat0) = (read(&mut g, "cat /proc/cmdline"), read(&mut g, "cat /sys/fs/ext4/features/lazy_itable_init"));
    assert_eq!(feat0, "supported");
    let (gdb, arena) = (g.gdb_addr().unwrap().to_owned(), linuxpatch::arena_arg(&g));
    let cli = |cmd: &[&str]| {
        let mut args = vec!["patch"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--gdb", gdb.as_str(), "--target", "linux", "--arena", arena.as_str(), "--tasks", "agentless"]);
        let o = vsplice(&args);
        assert!(o.status.success(), "{cmd:?}: {}\n{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    };
    let o = cli(&["apply", a.to_str().unwrap()]);
    assert!(o.contains("\"cause\":\"ok\""), "{o}");
    assert_eq!(read(&mut g, "cat /proc/cmdline"), format!("{cmdline0} vsplice-multi"));
    assert_eq!(read(&mut g, "cat /sys/fs/ext4/features/lazy_itable_init"), "supported");
    let o = cli(&["apply", b.to_str().unwrap()]);
    assert!(o.contains("\"cause\":\"ok\""), "{o}");
    let list = cli(&["list"]);
    assert!(list.contains("multi-b") && !list.contains("multi-a"), "the cumulative patch replaces the earlier one: {list}");
    assert_eq!(read(&mut g, "cat /proc/cmdline"), format!("{cmdline0} vsplice-multi"));
    assert_eq!(read(&mut g, "cat /sys/fs/ext4/features/lazy_itable_init"), "supported (multi)");
    cli(&["revert", "multi-b"]);
    assert_eq!(read(&mut g, "cat /proc/cmdline"), cmdline0);
    assert_eq!(read(&mut g, "cat /sys/fs/ext4/features/lazy_itable_init"), "supported");
    g.check_console().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

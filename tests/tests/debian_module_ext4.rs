//! Issue 13, item 2: the same Debian fix as `debian_diff_patch.rs` (6.1.0-55
//! → -56, `fs/ext4/mballoc.c`), but on the generic flavour, where ext4 is a
//! module: the patch is built against `ext4.ko` (`--modules`) and applied to
//! the ext4 module loaded in the guest.
//!
//! The corpus entry comes from `images/debian-fix-source.sh --from 55 --to
//! 56 amd64`; ext4, its dependencies and `loop.ko` come from the image
//! package (`vsplice_tests::modcorpus`). The guest loads them, writes an
//! ext4 file system on a loop device, and the patch is refused
//! `module_not_loaded` before ext4 is loaded, then applied (entries jump to
//! the arena), the fixed path exercised (a fresh mount loads and
//! initialises every group's buddy through the replaced functions, files
//! are written and read back), and reverted (entries restored, the file
//! system still works).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use vsplice_tests::cli::text;
use vsplice_tests::modcorpus::{assert_jumps, assert_restored, corpus_or_skip, initramfs_with, insmod_all, module_entries, replaced_names, PatchCli};
use vsplice_tests::qemu::Guest;
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

/// The replaced functions.
const REPLACED: [&str; 2] = ["ext4_mb_init_group", "ext4_mb_load_buddy_gfp"];
/// ext4 and what it needs, and the loop driver, in load order.
const MODULES: [(&str, &str); 6] = [
    ("drivers/block", "loop"),
    ("lib", "crc16"),
    ("crypto", "crc32c_generic"),
    ("fs", "mbcache"),
    ("fs/jbd2", "jbd2"),
    ("fs/ext4", "ext4"),
];

/// Mounts the loop device again (buddy caches cold), reads every group's
/// buddy through `mb_groups`, writes and reads back a file.
const EXERCISE: &str = "set -e; umount /mnt; mount -t ext4 /dev/loop0 /mnt; \
    cat /proc/fs/ext4/loop0/mb_groups >/tmp/groups; n=$(grep -c '^#[0-9]' /tmp/groups); \
    dd if=/dev/urandom of=/tmp/data bs=64k count=160 2>/dev/null; cp /tmp/data /mnt/f1; sync; \
    umount /mnt; mount -t ext4 /dev/loop0 /mnt; cmp /tmp/data /mnt/f1; rm /mnt/f1 /tmp/data; echo groups=$n ok";

fn exercise(g: &mut Guest) -> String {
    let o = g.run(EXERCISE).unwrap();
    if o.status != 0 {
        let dmesg = g.run("dmesg | tail -n 40").map(|o| o.text()).unwrap_or_default();
        panic!("exercise failed ({}): {}\n{dmesg}", o.status, o.text());
    }
    o.text().lines().last().unwrap_or_default().to_owned()
}

#[test]
fn the_debian_ext4_fix_is_applied_to_the_ext4_module() {
    let _l = vm_lock();
    let label = "module_ext4_generic";
    let Some(fix) = corpus_or_skip(label, "6.1.0-55-amd64", "images/debian-fix-source.sh --from 55 --to 56 amd64", &MODULES) else { return };
    let dir = tmp_dir(label);
    let vsp = dir.join("ext4-fix.vsp");
    let modules = fix.modules().to_string_lossy().into_owned();
    let t = Instant::now();
    let o = fix.build_fix(&vsp, &["--modules", &modules]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    eprintln!("  built from the diff in {:.1} s:\n{}", t.elapsed().as_secs_f64(), text(&o.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(replaced_names(&manifest), REPLACED, "{manifest}");
    let reps = manifest["replacements"].as_array().unwrap();
    assert!(reps.iter().all(|r| r["object"] == "ext4"), "every replacement names ext4: {manifest}");

    let initrd = initramfs_with(&fix, &MODULES, "ext4", &dir).unwrap();
    let Some(mut g) = fix.boot(label, initrd) else { return };
    let patch_cli = PatchCli::new(&g).unwrap();
    let cli = |cmd: &[&str]| patch_cli.run(cmd);
    let entries = |g: &Guest| Some(module_entries(g, "ext4", &REPLACED).unwrap()).filter(|e| !e.is_empty());
    assert!(entries(&g).is_none(), "ext4 is loaded before the test loads it");
    let o = cli(&["apply", vsp.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(!o.status.success() && out.contains("\"cause\":\"module_not_loaded\""), "{out}\n{}", text(&o.stderr));

    let setup = format!(
        "{}; dd if=/dev/zero of=/tmp/fs.img bs=1M count=64 2>/dev/null && losetup /dev/loop0 /tmp/fs.img && mke2fs -q -b 1024 /dev/loop0 >/dev/null && \
        mkdir -p /mnt && mount -t ext4 /dev/loop0 /mnt && grep -c ' /mnt ext4 ' /proc/mounts",
        insmod_all(&MODULES, "ext4")
    );
    assert_eq!(g.run_ok(&setup).unwrap().trim(), "1");
    let before = exercise(&mut g);
    assert!(before.ends_with("ok"), "{before}");
    let old = entries(&g).expect("ext4 loaded");

    let o = cli(&["apply", vsp.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(o.status.success() && out.contains("\"cause\":\"ok\""), "{out}\n{}", text(&o.stderr));
    eprintln!("  applied: {}", out.lines().next().unwrap_or_default());
    assert_jumps(&old, &entries(&g).unwrap());
    let after = exercise(&mut g);
    assert_eq!(after, before, "the same groups before and after the patch");
    let problems = g.console_problems();
    assert!(problems.is_empty(), "console after the patched run: {problems:?}");
    let dmesg = g.run_ok("dmesg | grep -E 'EXT4-fs (error|warning)|WARNING:|BUG|Oops' || true").unwrap();
    assert!(dmesg.trim().is_empty(), "{dmesg}");

    let o = cli(&["revert", manifest["name"].as_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_restored(&old, &entries(&g).unwrap());
    assert!(exercise(&mut g).ends_with("ok"));
    g.check_console().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

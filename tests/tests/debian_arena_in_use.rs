//! Issue 11: the arena must never be guest RAM. The user's case on a stock
//! Debian kernel under QEMU (TCG): a 512 MiB guest booted with
//! `memmap=4M$0x1c000000`, and `vsplice patch apply --arena 0x10000000:4M`
//! (RAM Linux owns). The kernel's own memory map (`e820_table`, the
//! `iomem_resource` tree) says so, and the apply is refused `arena_in_use`
//! (`arena_in_ram`) with nothing written: the guest answers, its
//! `/proc/cmdline` is unchanged, and no registry is found at the wrong
//! arena. An arena beyond the guest's RAM (a hole, not reserved) is refused
//! `arena_not_reserved`; `vsplice attach` with the wrong arena refuses to
//! start. The reserved arena still applies and reverts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Arena, Guest};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

const RESERVED: Arena = Arena { base: 0x1c00_0000, size: 4 << 20 };

fn boot(label: &str) -> Option<Guest> {
    let mut cfg = linuxpatch::config_with_headers(Flavour::Amd64, label)?;
    cfg.mem_mib = 512;
    cfg.arena = Some(RESERVED);
    cfg.extra_append.push("vsplice.agent=0".into());
    Guest::boot_or_skip(cfg)
}

fn patch_cmd(g: &Guest, cmd: &[&str], arena: &str) -> Output {
    let gdb = g.gdb_addr().unwrap().to_owned();
    let mut args = vec!["patch"];
    args.extend_from_slice(cmd);
    args.extend_from_slice(&["--gdb", &gdb, "--target", "linux", "--arena", arena]);
    let o = vsplice(&args);
    eprintln!("  {} --arena {arena}: exit {:?}\n    {}\n    {}", cmd[0], o.status.code(), text(&o.stdout).trim(), text(&o.stderr).trim());
    o
}

/// The JSON report of a refused apply names `arena_in_use` and `reason`.
fn assert_arena_in_use(o: &Output, reason: &str) {
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "refused exit code expected: {out}\n{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["cause"], "arena_in_use", "{out}");
    assert_eq!(v["reason"], reason, "{out}");
}

#[test]
fn an_arena_in_guest_ram_is_refused_and_nothing_is_written() {
    let _l = vm_lock();
    let label = "arena_in_use";
    let Some(mut g) = boot(label) else { return };
    let img = debian_images(Flavour::Amd64).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let dir = tmp_dir("arena-in-use");
    let vsp = dir.join("cmdline.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let vsp = vsp.to_str().unwrap();
    let cmdline = g.run_ok("cat /proc/cmdline").unwrap();
    assert!(cmdline.contains("memmap=0x400000$0x1c000000"), "{cmdline}");
    eprintln!("{}", g.run_ok("grep -i -e 'system ram' -e reserved /proc/iomem").unwrap());

    // The user's mistake: RAM the kernel owns.
    let o = patch_cmd(&g, &["apply", vsp], "0x10000000:4M");
    assert_arena_in_use(&o, "arena_in_ram");
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), cmdline, "nothing applied");
    let o = patch_cmd(&g, &["status"], "0x10000000:4M");
    assert!(o.status.success() && text(&o.stdout).contains("\"patches\": []"), "no registry written there");
    // The last 2 MiB of RAM below the reserved range and its first 2 MiB.
    let o = patch_cmd(&g, &["apply", vsp], "0x1be00000:4M");
    assert_arena_in_use(&o, "arena_in_ram");
    // Beyond the guest's RAM: a hole, not reserved.
    let o = patch_cmd(&g, &["apply", vsp], "0x40000000:4M");
    assert_arena_in_use(&o, "arena_not_reserved");
    // revert checks too (before its recovery could write).
    let o = patch_cmd(&g, &["revert", &patch.manifest.id], "0x10000000:4M");
    assert_arena_in_use(&o, "arena_in_ram");
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), cmdline);

    // `vsplice attach` refuses to start on the wrong arena.
    let gdb = g.gdb_addr().unwrap().to_owned();
    let sock = dir.join("api.sock");
    let o = vsplice(&["attach", "--gdb", &gdb, "--target", "linux", "--arena", "0x10000000:4M", "--api-sock", sock.to_str().unwrap()]);
    eprintln!("  attach: exit {:?}: {}", o.status.code(), text(&o.stderr).trim());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("arena_in_use") && text(&o.stderr).contains("arena_in_ram"), "{}", text(&o.stderr));
    assert_eq!(g.run_ok("echo alive").unwrap().trim(), "alive");

    // The reserved arena applies, and reverts.
    let arena = linuxpatch::arena_arg(&g);
    let o = patch_cmd(&g, &["apply", vsp], &arena);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} vsplice.marker=cmdline\n", cmdline.trim_end()));
    let o = patch_cmd(&g, &["revert", &patch.manifest.id], &arena);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), cmdline);
    let _ = std::fs::remove_dir_all(&dir);
    g.check_console().unwrap();
}

//! Issue 4 on stock Debian kernels under QEMU (TCG), patched from outside
//! over the gdbstub:
//!
//! - run-pre masks: every byte of the live kernel text equals the image's
//!   except where the image's boot-rewrite tables say the kernel rewrote it;
//! - the example patches (`examples/patches/linux/`), built with Kbuild and
//!   applied: /proc/cmdline before, after apply, after revert; new global
//!   data (a read counter); a call to a static function of the target's
//!   file; an ambiguous static name resolved with its `pos:N` qualifier;
//!   the same through the `vsplice patch` CLI;
//! - (more in the other tests of this file).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use vsplice_patcher::mem::KernelMemory;
use vsplice_patcher::patch::linux::LinuxImage;
use vsplice_patcher::target::access::Guest as GuestMem;
use vsplice_patcher::target::TargetKernel;
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, QemuConfig};
use vsplice_tests::skip::skip;
use vsplice_tests::testguest::{vm_lock, vsplice_bin};

fn boot(flavour: Flavour, label: &str) -> Option<Guest> {
    let cfg = match QemuConfig::debian(flavour, label) {
        Ok(c) => c,
        Err(e) => {
            skip(label, &e.to_string());
            return None;
        }
    };
    Some(Guest::boot(cfg).expect("guest boots"))
}

/// Every byte of the live kernel text equals the image's, except where the
/// image's boot-rewrite tables say the kernel rewrote it.
#[test]
fn live_text_equals_the_image_under_the_masks() {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(g) = boot(flavour, "runpre_masks") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    eprintln!("rewrite sites: {:?}", image.rewrites().counts);
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    let slide = target.slide().unwrap().virt;
    let k = image.kallsyms();
    let (t0, t1) = (k.first_addr("_text").unwrap(), k.first_addr("_etext").unwrap());
    let want = image.bytes_at(t0, t1 - t0).unwrap().to_vec();
    let mut mem = GuestMem::new(&mut be, target.page_table_root(), 0);
    let live = mem.read_vec(t0.wrapping_add(slide), (t1 - t0) as usize).unwrap();
    let masks = image.masks(t0, t1 - t0);
    let mut masked = vec![false; want.len()];
    for m in &masks {
        masked[m.offset as usize..(m.offset + m.len) as usize].fill(true);
    }
    let mut by_sym: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..want.len() {
        if want[i] != live[i] && !masked[i] {
            let name = image.symbols().describe(t0 + i as u64);
            let base = name.split('+').next().unwrap_or("?").to_owned();
            *by_sym.entry(base).or_default() += 1;
        }
    }
    eprintln!("{} unmasked differing bytes in {} symbols: {:?}", by_sym.values().sum::<usize>(), by_sym.len(), by_sym.iter().take(60).collect::<Vec<_>>());
    assert!(by_sym.is_empty());
}


fn vsplice(args: &[&str]) -> Output {
    let bin = vsplice_bin();
    assert!(bin.is_file(), "{} missing: run `cargo build --release -p vsplice-vmm` first", bin.display());
    Command::new(bin).args(args).stdin(Stdio::null()).output().expect("vsplice runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The position qualifier of the `name` nearest to `anchor` in the image's
/// kallsyms (the symbols of one file are contiguous there).
fn pos_near(image: &LinuxImage, name: &str, anchor: &str) -> String {
    let a = image.symbols().resolve(anchor, None).unwrap().addr;
    let s = image.symbols().all(name).into_iter().min_by_key(|s| s.addr.abs_diff(a)).unwrap();
    format!("pos:{}", s.position)
}

const TNEXT_PATCH: &str = r#"
#include <linux/seq_file.h>
#include <linux/tty.h>
#include <linux/tty_driver.h>
#include "vsplice.h"

/* static in fs/proc/proc_tty.c; other files have their own t_next */
void *t_next(struct seq_file *m, void *v, loff_t *pos);
VSPLICE_LOCAL(t_next, QUAL);

static int show_tty_driver_tnext(struct seq_file *m, void *v)
{
	struct tty_driver *p = list_entry(v, struct tty_driver, tty_drivers);
	loff_t pos = 0;

	seq_printf(m, "%s %s\n", p->driver_name, t_next(m, v, &pos) ? "more" : "last");
	return 0;
}
VSPLICE_REPLACE(show_tty_driver, show_tty_driver_tnext);
"#;

#[test]
fn example_patches_apply_and_revert() {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(mut g) = boot(flavour, "linux_examples") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let build = |name: &str| linuxpatch::build(&img, &image, &linuxpatch::example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (cmdline, counter, tty) = (build("cmdline_marker.c"), build("execdomains_counter.c"), build("tty_drivers_marker.c"));
    let qual = pos_near(&image, "t_next", "show_tty_driver");
    let tnext_src = TNEXT_PATCH.replace("QUAL", &format!("{qual:?}"));
    let tnext = linuxpatch::build_text(&img, &image, "tty_tnext", &tnext_src, true).unwrap();
    // Without the qualifier the build refuses to guess.
    let e = linuxpatch::build_text(&img, &image, "tty_tnext_unqualified", &tnext_src.replace("VSPLICE_LOCAL(t_next, ", "// "), true).unwrap_err();
    assert!(e.to_string().contains("ambiguous") || format!("{:?}", e).contains("Ambiguous"), "{e:?}");

    let cmdline_before = g.run_ok("cat /proc/cmdline").unwrap();
    let exec_before = g.run_ok("cat /proc/execdomains").unwrap();
    let tty_before = g.run_ok("cat /proc/tty/drivers").unwrap();
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        for patch in [&cmdline, &counter, &tty] {
            let r = p.apply(patch);
            eprintln!("{}", r.to_json());
            assert!(r.is_ok(), "{}", r.to_json());
            // Kbuild objects end in `jmp __x86_return_thunk`: aimed at the guest's thunk.
            assert!(r.notes.iter().any(|n| n.contains("x86_return_thunk")), "{:?}", r.notes);
        }
        assert_eq!(p.status().unwrap().patches.len(), 3);
    }
    // 1: the marker after the command line.
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} vsplice.marker=cmdline\n", cmdline_before.trim_end()));
    // 3: new data: the counter counts every read.
    for n in 1..=3 {
        assert_eq!(g.run_ok("cat /proc/execdomains").unwrap(), format!("{exec_before}vsplice reads={n}\n"));
    }
    // 4: the static show_tty_range of proc_tty.c does the lines, then the marker.
    assert_eq!(g.run_ok("cat /proc/tty/drivers").unwrap(), format!("{tty_before}vsplice: /proc/tty/drivers patched\n"));
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        // Stacked on the same function: the qualified t_next patch wins while applied.
        let r = p.apply(&tnext);
        assert!(r.is_ok(), "{}", r.to_json());
    }
    let lines: Vec<String> = g.run_ok("cat /proc/tty/drivers").unwrap().lines().map(str::to_owned).collect();
    assert!(lines.len() >= 2 && lines.last().unwrap().ends_with(" last"), "{lines:?}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l.ends_with(" more")), "{lines:?}");
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.revert(&tty.manifest.id);
        assert_eq!(r.cause.name(), "out_of_order", "{}", r.to_json());
        for patch in [&tnext, &tty, &counter, &cmdline] {
            let r = p.revert(&patch.manifest.id);
            assert!(r.is_ok(), "{}", r.to_json());
        }
        assert!(p.status().unwrap().patches.is_empty());
    }
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), cmdline_before);
    assert_eq!(g.run_ok("cat /proc/execdomains").unwrap(), exec_before);
    assert_eq!(g.run_ok("cat /proc/tty/drivers").unwrap(), tty_before);

    // The same through the CLI (which identifies the kernel itself).
    linuxpatch::detach(be).unwrap();
    let dir = std::env::temp_dir().join(format!("vsplice-linux-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vsp = dir.join("cmdline.vsp");
    let src = linuxpatch::example("cmdline_marker.c");
    let o = vsplice(&[
        "patch", "build", "--target", "linux", "--kernel", path(&img.vmlinuz), "--headers", path(&img.headers), "-o", path(&vsp), path(&src),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let gdb = g.gdb_addr().unwrap().to_owned();
    let arena = linuxpatch::arena_arg(&g);
    let attach = ["--gdb", gdb.as_str(), "--target", "linux", "--arena", arena.as_str()];
    let cli = |cmd: &[&str]| {
        let mut args = vec!["patch"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&attach);
        vsplice(&args)
    };
    let o = cli(&["apply", path(&vsp)]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("\"cause\":\"ok\""), "{}", text(&o.stdout));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} vsplice.marker=cmdline\n", cmdline_before.trim_end()));
    let o = cli(&["list"]);
    assert!(o.status.success() && text(&o.stdout).contains("cmdline_marker") && text(&o.stdout).contains("cmdline_proc_show->cmdline_proc_show_marked"), "{}", text(&o.stdout));
    let o = cli(&["status"]);
    assert!(o.status.success() && text(&o.stdout).contains("\"active\": true"), "{}", text(&o.stdout));
    let o = cli(&["revert", "cmdline_marker"]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), cmdline_before);
    let _ = std::fs::remove_dir_all(&dir);
    g.check_console().unwrap();
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

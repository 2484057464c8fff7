//! Issue 4 on stock Debian kernels under QEMU (TCG, KASLR on), patched from
//! outside over the gdbstub, agentless, with the harness's `memmap=` arena:
//!
//! - run-pre masks (both flavours): every byte of the live kernel text
//!   equals the image's except where the image's boot-rewrite tables say the
//!   kernel rewrote it, and such bytes exist;
//! - the example patches (`examples/patches/linux/`), built with Kbuild and
//!   applied: /proc/cmdline before, after apply, after revert; new global
//!   data (a read counter); a call to a static function of the target's
//!   file; an ambiguous static name resolved with its `pos:N` qualifier
//!   (refused without); out-of-order revert refused; a Kbuild object with
//!   alternatives, jump labels and a WARN; the same through the CLI; the
//!   cloud kernel's examples 1 and 2;
//! - stress: readers of /proc/version through 200 apply/revert cycles of
//!   example 2 see only the old or the new text; clean console;
//! - refusals with the text untouched: code_busy naming a task asleep in the
//!   target (then the apply once it left), no_match (previous Debian ABI;
//!   modified image), bad patch files each with its cause;
//! - crash safety: the CLI killed at each write of an apply, and at each
//!   write of a revert, recovered from the guest's registry (all old or all
//!   new text, as the registry says); the run no kill reaches ends `ok`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vsplice_patcher::model::mem::KernelMemory;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::arch::x86::guest::Guest as GuestMem;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_tests::cli::{text, vsplice, vsplice_killed_after};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::Guest;
use vsplice_tests::scratch::{tmp, tmp_dir};
use vsplice_tests::skip::skip;
use vsplice_tests::testguest::vm_lock;

/// Boots a Debian guest without the vsplice agent (the agentless path).
fn boot(flavour: Flavour, label: &str) -> Option<Guest> {
    linuxpatch::boot_agentless(flavour, label)
}

/// Every byte of the live kernel text equals the image's, except where the
/// image's boot-rewrite tables say the kernel rewrote it; and the masks
/// really cover rewritten bytes (KASLR moved the kernel).
fn check_masks(g: &Guest, img: &vsplice_tests::debian::DebianImages, image: &LinuxImage) -> Result<(), String> {
    eprintln!("{}: rewrite sites {:?}", img.release, image.rewrites().counts);
    let (mut be, target) = linuxpatch::attach(g)?;
    let slide = target.slide().ok_or("no slide")?.virt;
    let k = image.kallsyms();
    let (t0, t1) = (k.first_addr("_text").ok_or("_text")?, k.first_addr("_etext").ok_or("_etext")?);
    let want = image.bytes_at(t0, t1 - t0).ok_or("text not in the image")?.to_vec();
    let live = GuestMem::new(&mut be, target.page_table_root(), target.paging_mode().cr4_bits()).read_vec(t0.wrapping_add(slide), (t1 - t0) as usize).map_err(|e| e.to_string())?;
    linuxpatch::detach(be)?;
    let mut masked = vec![false; want.len()];
    for m in image.masks(t0, t1 - t0) {
        masked[m.offset as usize..(m.offset + m.len) as usize].fill(true);
    }
    let mut by_sym: BTreeMap<String, usize> = BTreeMap::new();
    let (mut hidden, mut n_masked) = (0usize, 0usize);
    for i in 0..want.len() {
        n_masked += usize::from(masked[i]);
        if want[i] != live[i] {
            if masked[i] {
                hidden += 1;
            } else {
                let name = image.symbols().describe(t0 + i as u64);
                *by_sym.entry(name.split('+').next().unwrap_or("?").to_owned()).or_default() += 1;
            }
        }
    }
    eprintln!(
        "{}: {} text bytes, {n_masked} masked ({:.1}%), {hidden} rewritten at boot (all masked), slide {slide:#x}",
        img.release,
        want.len(),
        100.0 * n_masked as f64 / want.len() as f64
    );
    if !by_sym.is_empty() {
        return Err(format!("{} unmasked differing bytes in {} symbols: {:?}", by_sym.values().sum::<usize>(), by_sym.len(), by_sym.iter().take(40).collect::<Vec<_>>()));
    }
    if slide == 0 || hidden == 0 {
        return Err(format!("nothing was rewritten (slide {slide:#x}): the test proves nothing"));
    }
    Ok(())
}

#[test]
fn live_text_equals_the_image_under_the_masks() {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(g) = boot(flavour, "runpre_masks") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    check_masks(&g, &img, &image).unwrap();
}

/// The cloud kernel: its text under the masks, and examples 1 and 2 applied
/// and reverted.
#[test]
fn cloud_kernel_masks_and_examples() {
    let _l = vm_lock();
    let flavour = Flavour::CloudAmd64;
    let Some(mut g) = boot(flavour, "cloud_examples") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    check_masks(&g, &img, &image).unwrap();
    let cmdline = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let version = linuxpatch::build(&img, &image, &linuxpatch::example("version_marker.c")).unwrap();
    let (c0, v0) = (g.run_ok("cat /proc/cmdline").unwrap(), g.run_ok("cat /proc/version").unwrap());
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        for patch in [&cmdline, &version] {
            let r = p.apply(patch);
            assert!(r.is_ok(), "{}", r.to_json());
        }
    }
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} vsplice.marker=cmdline\n", c0.trim_end()));
    assert_eq!(g.run_ok("cat /proc/version").unwrap(), format!("{} [vsplice]\n", v0.trim_end()));
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        for patch in [&cmdline, &version] {
            let r = p.revert(&patch.manifest.id);
            assert!(r.is_ok(), "{}", r.to_json());
        }
    }
    linuxpatch::detach(be).unwrap();
    assert_eq!((g.run_ok("cat /proc/cmdline").unwrap(), g.run_ok("cat /proc/version").unwrap()), (c0, v0));
    g.check_console().unwrap();
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
    let e = linuxpatch::build_text(&img, &image, "tty_tnext_unqualified", &tnext_src.replace("VSPLICE_LOCAL(t_next, ", "// "), true).map(|_| ()).unwrap_err();
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

    // Alternatives for the guest's CPU, jump labels frozen, a WARN dropped.
    let specials = linuxpatch::build(&img, &image, &fixture("specials.c")).unwrap();
    let flags = g.run_ok("grep -m1 '^flags' /proc/cpuinfo").unwrap();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.apply(&specials);
        assert!(r.is_ok(), "{}", r.to_json());
        eprintln!("notes: {:#?}", r.notes);
        for want in [
            "alternatives:",
            "frozen to no jump (static key cpusets_enabled_key is disabled",
            "frozen to no jump (static key vsplice_key is enabled",
            "1 WARN site(s) dropped",
        ] {
            assert!(r.notes.iter().any(|n| n.contains(want)), "no note {want:?} in {:?}", r.notes);
        }
    }
    let want = format!(
        "{} {} no-cpusets key-on\n",
        if has("hypervisor") { "hypervisor" } else { "no-hypervisor" },
        if has("sse4_2") { "sse4_2" } else { "no-sse4_2" }
    );
    assert_eq!(g.run_ok("cat /proc/execdomains").unwrap(), want);
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.revert(&specials.manifest.id);
        assert!(r.is_ok(), "{}", r.to_json());
    }
    assert_eq!(g.run_ok("cat /proc/execdomains").unwrap(), exec_before);

    // ftrace on the target's entry while the patch goes in and out: the
    // jump goes after the ftrace site, so tracing the old entry keeps working
    // and ftrace can take its call back out afterwards.
    let tr = "/sys/kernel/debug/tracing";
    g.run_ok(&format!("echo cmdline_proc_show >{tr}/set_ftrace_filter && echo function >{tr}/current_tracer && echo >{tr}/trace")).unwrap();
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.apply(&cmdline);
        assert!(r.is_ok(), "with the entry traced: {}", r.to_json());
    }
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} vsplice.marker=cmdline\n", cmdline_before.trim_end()));
    let traced = g.run_ok(&format!("grep -c 'cmdline_proc_show <-' {tr}/trace || true")).unwrap();
    assert!(traced.trim().parse::<u32>().unwrap_or(0) >= 1, "the old entry is still traced: {traced}");
    g.run_ok(&format!("echo nop >{tr}/current_tracer && echo >{tr}/set_ftrace_filter")).unwrap();
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), format!("{} vsplice.marker=cmdline\n", cmdline_before.trim_end()));
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.revert(&cmdline.manifest.id);
        assert!(r.is_ok(), "{}", r.to_json());
    }
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), cmdline_before);

    // The same through the CLI (which identifies the kernel itself).
    linuxpatch::detach(be).unwrap();
    let dir = tmp_dir("linux-cli");
    let vsp = linuxpatch::cli_build_example(&img, "cmdline_marker.c", &dir).unwrap();
    // `--gdb` (and `--mem-path --qmp` when the harness gave the guest shared RAM).
    let gdb = linuxpatch::gdb_args(&g);
    let arena = linuxpatch::arena_arg(&g);
    let attach: Vec<&str> = gdb.iter().map(String::as_str).chain(["--target", "linux", "--arena", arena.as_str()]).collect();
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

/// `tests/tests/linux_patches/<name>`: patches that exist for tests.
fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/linux_patches").join(name)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

const READER: &str = r#"#!/bin/sh
# One reader: /proc/version until /tmp/stop exists, every read on its own line.
while [ ! -e /tmp/stop ]; do cat /proc/version; done >"/tmp/reader.$1" 2>&1
touch "/tmp/reader.$1.done"
"#;

/// Several guest processes read /proc/version in a loop while the host
/// applies and reverts example 2 (version_proc_show, a hot path) 200
/// times: every line read is the old text or the new one, the console
/// stays clean, and the guest still answers. With the agent loaded: the
/// readers fork a `cat` per line, so pauses catch forks and exits half-way
/// (a disagreement retried, never `agent_mismatch`), and every
/// transaction's task list comes from the agent and the walk, agreeing.
#[test]
fn stress_readers_see_old_or_new_text_through_200_cycles() {
    const CYCLES: usize = 200;
    const READERS: usize = 3;
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(g) = linuxpatch::boot_with_agent(flavour, "linux_stress") else { return };
    let mut g = g.unwrap();
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("version_marker.c")).unwrap();
    let old = g.run_ok("cat /proc/version").unwrap().trim_end().to_owned();
    let new = format!("{old} [vsplice]");
    g.run_ok(&format!("rm -f /tmp/stop /tmp/reader.*; cat >/tmp/reader.sh <<'EOF'\n{READER}EOF")).unwrap();
    for i in 0..READERS {
        g.run_ok(&format!("sh /tmp/reader.sh {i} </dev/null >/dev/null 2>&1 &")).unwrap();
    }
    g.run_ok("sleep 1; test -s /tmp/reader.0").unwrap();
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    let t0 = std::time::Instant::now();
    let (mut attempts, mut max_down, mut downs) = (0u32, 0u64, Vec::new());
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        for i in 0..CYCLES {
            let r = p.apply(&patch);
            assert!(r.is_ok(), "apply {i}: {}", r.to_json());
            let v = p.revert(&patch.manifest.id);
            assert!(v.is_ok(), "revert {i}: {}", v.to_json());
            for x in [&r, &v] {
                let source = x.check.as_ref().map(|c| c.task_source.as_str());
                assert_eq!(source, Some("agent+agentless"), "{} {i}: the agent must be used: {}", x.op, x.to_json());
            }
            for t in [r.timings, v.timings] {
                attempts += t.attempts;
                max_down = max_down.max(t.downtime_us);
                downs.push(t.downtime_us);
            }
        }
    }
    downs.sort_unstable();
    eprintln!(
        "{CYCLES} apply/revert cycles in {:?}: {attempts} pauses for {} transactions, downtime p50 {} us, max {max_down} us",
        t0.elapsed(),
        2 * CYCLES,
        downs[downs.len() / 2]
    );
    linuxpatch::detach(be).unwrap();
    g.run_ok(&format!("touch /tmp/stop; n=0; while [ $(ls /tmp/reader.*.done 2>/dev/null | wc -l) -lt {READERS} ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done; ls /tmp/reader.*.done")).unwrap();
    let out = g.run_with("cat /tmp/reader.0 /tmp/reader.1 /tmp/reader.2", vsplice_tests::qemu::RunOptions::new(std::time::Duration::from_secs(120)).gz()).unwrap();
    let all = out.text();
    let (mut n_old, mut n_new) = (0usize, 0usize);
    for (i, l) in all.lines().enumerate() {
        if l == old {
            n_old += 1;
        } else if l == new {
            n_new += 1;
        } else {
            panic!("line {i} is neither the old nor the new text: {l:?}");
        }
    }
    eprintln!("readers: {n_old} old lines, {n_new} new lines");
    assert!(n_old > 0 && n_new > 0, "the readers must have seen both texts ({n_old} old, {n_new} new)");
    assert_eq!(g.run_ok("cat /proc/version").unwrap().trim_end(), old);
    assert_eq!(g.run_ok("echo alive").unwrap(), "alive\n");
    g.check_console().unwrap();
}

const UNKNOWN_SYMBOL: &str = r#"
#include <linux/seq_file.h>
#include "vsplice.h"
void vsplice_no_such_function(struct seq_file *m);
static int cmdline_unknown(struct seq_file *m, void *v) { vsplice_no_such_function(m); return 0; }
VSPLICE_REPLACE(cmdline_proc_show, cmdline_unknown);
"#;

const AMBIGUOUS: &str = r#"
#include <linux/seq_file.h>
#include "vsplice.h"
void *t_next(struct seq_file *m, void *v, loff_t *pos);   /* 6+ statics of that name */
static int cmdline_ambiguous(struct seq_file *m, void *v) { loff_t p = 0; return t_next(m, v, &p) ? 1 : 0; }
VSPLICE_REPLACE(cmdline_proc_show, cmdline_ambiguous);
"#;

const EX_TABLE: &str = r#"
#include <linux/seq_file.h>
#include <linux/uaccess.h>
#include "vsplice.h"
static int cmdline_user(struct seq_file *m, void *v)
{
	int x = 0;
	/* An access that may fault: its fixup lives in __ex_table. */
	__get_kernel_nofault(&x, (int *)v, int, fault);
	return x;
fault:
	return -EFAULT;
}
VSPLICE_REPLACE(cmdline_proc_show, cmdline_user);
"#;

const TOO_SMALL: &str = r#"
#include <linux/kernel.h>
#include <asm/processor.h>
#include "vsplice.h"
static void abort_v2(void) { for (;;) cpu_relax(); }
/* abort() is a 5-byte fentry NOP and a 2-byte ud2: no room for a jump. */
VSPLICE_REPLACE(abort, abort_v2);
"#;

/// The image's payload with one byte of `func` changed (after its fentry
/// NOP, outside every mask), as a vmlinux file with its relocation table:
/// what a patch built for a slightly different kernel of the same build-id
/// would expect.
fn modified_image(img: &vsplice_tests::debian::DebianImages, image: &LinuxImage, func: &str) -> std::path::PathBuf {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let bz = std::fs::read(&img.vmlinuz).unwrap();
    let mut payload = vsplice_patcher::os::linux::image::bzimage_payload(&bz).unwrap();
    let addr = image.symbols().resolve(func, None).unwrap().addr + 5;
    let off = {
        let elf = ElfFile64::<object::Endianness>::parse(&*payload).unwrap();
        let e = elf.endian();
        let ph = elf.elf_program_headers().iter().find(|p| p.p_vaddr(e) <= addr && addr < p.p_vaddr(e) + p.p_filesz(e)).unwrap();
        (ph.p_offset(e) + addr - ph.p_vaddr(e)) as usize
    };
    payload[off] ^= 0x01;
    let out = tmp("modified-vmlinux");
    std::fs::write(&out, payload).unwrap();
    out
}

/// Refusals on a live Debian guest, each with its own cause and the guest
/// untouched: a task sleeping inside the target gives `code_busy` naming it
/// (then the apply succeeds once it left); a patch built for the previous
/// Debian ABI and one whose expected bytes differ give `no_match`; bad patch
/// files give `bad_patch`, `failed_to_find` or `unsupported_section` with
/// their reasons.
#[test]
fn refusals_leave_the_guest_untouched() {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(mut g) = boot(flavour, "linux_refusals") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let nsleep = linuxpatch::build(&img, &image, &fixture("common_nsleep_copy.c")).unwrap();
    let cmdline = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let build_text = |name: &str, c: &str| linuxpatch::build_text(&img, &image, name, c, false).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cmdline_before = g.run_ok("cat /proc/cmdline").unwrap();

    // code_busy: `sleep` blocks in clock_nanosleep -> common_nsleep -> hrtimer_nanosleep.
    let pid: u64 = g.run_ok("sleep 3600 </dev/null >/dev/null 2>&1 & echo $!").unwrap().trim().parse().unwrap();
    g.run_ok(&format!("n=0; until grep -q '^State:.*S' /proc/{pid}/status && [ \"$(cat /proc/{pid}/wchan)\" != 0 ]; do sleep 0.1; n=$((n+1)); [ $n -lt 50 ] || exit 1; done")).unwrap();
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    let text_of = |be: &mut linuxpatch::Attached, name: &str| {
        let s = target.symbols().resolve(name, None).unwrap().clone();
        GuestMem::new(be, target.page_table_root(), target.paging_mode().cr4_bits()).read_vec(s.addr, s.size as usize).unwrap()
    };
    let watched = ["common_nsleep", "cmdline_proc_show", "abort"];
    let before: Vec<Vec<u8>> = watched.iter().map(|n| text_of(&mut be, n)).collect();
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        p.config_mut().max_attempts = 3;
        let r = p.apply(&nsleep);
        eprintln!("{}", r.to_json());
        assert_eq!(r.cause.name(), "code_busy", "{}", r.to_json());
        assert_eq!(r.timings.attempts, 3);
        let c = r.conflicts.iter().find(|c| c.task_id == Some(pid)).unwrap_or_else(|| panic!("no conflict names pid {pid}: {}", r.to_json()));
        assert_eq!(c.task.as_deref(), Some("sleep"));
        assert!(c.function.starts_with("common_nsleep+"), "{c:?}");
        assert!(p.status().unwrap().patches.is_empty());
    }
    assert_eq!(text_of(&mut be, "common_nsleep"), before[0], "the guest's text changed");
    assert_eq!(g.run_ok("echo fine").unwrap(), "fine\n");
    g.run_ok(&format!("kill {pid}; n=0; while [ -e /proc/{pid} ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done; [ ! -e /proc/{pid} ]")).unwrap();
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.apply(&nsleep);
        assert!(r.is_ok(), "once the task left: {}", r.to_json());
    }
    assert_eq!(g.run_ok("sleep 0.2; echo slept").unwrap(), "slept\n", "sleeping through the patched common_nsleep");
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.revert(&nsleep.manifest.id);
        assert!(r.is_ok(), "{}", r.to_json());
    }

    // no_match: built for the previous Debian ABI; then same build-id, different bytes.
    let mut refusals: Vec<(String, Vec<u8>, &str, &str)> = Vec::new();
    match vsplice_tests::debian::debian_prev_images(flavour) {
        Ok(prev) => {
            let old = LinuxImage::open(&prev.vmlinuz).unwrap();
            assert_ne!(old.build_id(), image.build_id(), "{} and {} share a build-id", prev.release, img.release);
            let p = linuxpatch::build(&img, &old, &linuxpatch::example("cmdline_marker.c")).unwrap();
            refusals.push((format!("built for {}", prev.release), p.to_bytes().unwrap(), "no_match", "build_id"));
        }
        Err(e) => skip("linux_no_match_prev_abi", &e.to_string()),
    }
    let modified = LinuxImage::open(&modified_image(&img, &image, "cmdline_proc_show")).unwrap();
    assert_eq!(modified.build_id(), image.build_id());
    let p = linuxpatch::build(&img, &modified, &linuxpatch::example("cmdline_marker.c")).unwrap();
    refusals.push(("expects other bytes".into(), p.to_bytes().unwrap(), "no_match", "run_pre"));
    // Bad patch files.
    let good = cmdline.to_bytes().unwrap();
    refusals.push(("truncated".into(), good[..good.len() - 100].to_vec(), "bad_patch", "truncated"));
    let mut not_elf = cmdline.clone();
    not_elf.object = b"#!/bin/sh\necho this is not an ELF object, though long enough to look like one\n".to_vec();
    // The id is the name's and the object's (the writer checks it as the reader does).
    not_elf.manifest.id = vsplice_patcher::patch::manifest::patch_id(&not_elf.manifest.name, &not_elf.object);
    refusals.push(("not ELF".into(), not_elf.to_bytes().unwrap(), "bad_patch", "not_elf"));
    refusals.push(("unknown symbol".into(), build_text("unknown", UNKNOWN_SYMBOL).to_bytes().unwrap(), "failed_to_find", "unknown_symbol"));
    refusals.push(("ambiguous local".into(), build_text("ambiguous", AMBIGUOUS).to_bytes().unwrap(), "bad_patch", "ambiguous_symbol"));
    let e = linuxpatch::build_text(&img, &image, "ex_table_checked", EX_TABLE, true).map(|_| ()).unwrap_err();
    assert_eq!(e.cause(), "unsupported_section", "the build refuses __ex_table too: {e}");
    refusals.push(("__ex_table".into(), build_text("ex_table", EX_TABLE).to_bytes().unwrap(), "unsupported_section", "ex_table"));
    refusals.push(("target too small".into(), build_text("too_small", TOO_SMALL).to_bytes().unwrap(), "bad_patch", "target_too_small"));
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        for (what, bytes, cause, reason) in &refusals {
            let r = p.apply_bytes(bytes);
            eprintln!("{what}: {} / {:?}: {}", r.cause.name(), r.reason, r.message);
            assert_eq!((r.cause.name(), r.reason.as_deref()), (*cause, Some(*reason)), "{what}: {}", r.to_json());
            assert!(!r.message.is_empty());
        }
        assert!(p.status().unwrap().patches.is_empty());
    }
    let after: Vec<Vec<u8>> = watched.iter().map(|n| text_of(&mut be, n)).collect();
    assert_eq!(after, before, "the guest's text changed");
    linuxpatch::detach(be).unwrap();
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), cmdline_before);
    g.check_console().unwrap();
}

/// `vsplice patch …` against the attached guest (its gdbstub and arena),
/// optionally SIGKILLed instead of its `n+1`-th guest-memory write.
struct Cli {
    /// `--gdb ADDR` (and `--mem-path --qmp` with shared RAM).
    gdb: Vec<String>,
    arena: String,
}

impl Cli {
    fn new(g: &Guest) -> Self {
        Self { gdb: linuxpatch::gdb_args(g), arena: linuxpatch::arena_arg(g) }
    }

    fn run(&self, args: &[&str], kill: Option<usize>) -> std::process::Output {
        let mut a = vec!["patch"];
        a.extend_from_slice(args);
        a.extend(self.gdb.iter().map(String::as_str));
        a.extend_from_slice(&["--target", "linux", "--arena", &self.arena]);
        vsplice_killed_after(&a, kill)
    }

    /// True when the registry lists `id` as applied.
    fn listed(&self, id: &str) -> bool {
        text(&self.run(&["list"], None).stdout).contains(id)
    }

    /// After a kill at write `kill_at` of `op`: `status` names the text's
    /// state (recorded in `seen`), the guest does not run while the text
    /// is half-written, and `status --recover` leaves no intent.
    fn recover_after_kill(&self, g: &mut Guest, op: &str, kill_at: usize, seen: &mut std::collections::BTreeSet<&'static str>) {
        let st = text(&self.run(&["status"], None).stdout);
        for state in ["not_started", "partial", "complete"] {
            if st.contains(&format!("\"text\": \"{state}\"")) {
                seen.insert(state);
                if state == "partial" {
                    let r = g.run_with("echo running", vsplice_tests::qemu::RunOptions::new(std::time::Duration::from_secs(3)));
                    assert!(r.is_err(), "the guest runs half-patched after a kill at write {kill_at} of {op}");
                }
            }
        }
        let o = self.run(&["status", "--recover"], None);
        let st = text(&o.stdout);
        assert!(o.status.success() && st.contains("\"intent\": null"), "recovery after a kill at write {kill_at} of {op}: {st}\n{}", text(&o.stderr));
    }
}

/// The guest's two patched files: (/proc/cmdline, /proc/execdomains).
fn two_texts(g: &mut Guest) -> (String, String) {
    (g.run_ok("cat /proc/cmdline").unwrap(), g.run_ok("cat /proc/execdomains").unwrap())
}

/// A crash test's guest: Debian amd64 booted agentless, the two-function
/// patch written to `dir/two.vsp`, and /proc/cmdline and /proc/execdomains
/// before it (`c0`, `e0`) and /proc/cmdline with it (`c1`).
struct Crash {
    g: Guest,
    dir: PathBuf,
    vsp: PathBuf,
    c0: String,
    e0: String,
    c1: String,
}

/// Boots and builds a [`Crash`]; `None` after a loud skip.
fn crash_guest(label: &str, dir_name: &str) -> Option<Crash> {
    let flavour = Flavour::Amd64;
    let mut g = boot(flavour, label)?;
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build_text(&img, &image, "two_sites", linuxpatch::TWO_SITES, true).unwrap();
    let dir = tmp_dir(dir_name);
    let vsp = dir.join("two.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let (c0, e0) = two_texts(&mut g);
    let c1 = format!("{} two\n", c0.trim_end());
    Some(Crash { g, dir, vsp, c0, e0, c1 })
}

/// Crash safety in attached mode on Linux: `vsplice patch apply` of a
/// two-function patch SIGKILLed at each of its guest-memory writes in turn.
/// After each kill, `vsplice patch status` reports what the guest's registry
/// and text say (intent not started / partial / complete), the guest stays
/// stopped while the text is half-written, `status --recover` completes or
/// rolls back, and then both functions are patched or neither is, as the
/// registry says. The first run the kill does not reach ends `ok` with the
/// patch working in the guest.
#[test]
fn killed_cli_apply_is_recovered_from_the_guests_registry() {
    use std::os::unix::process::ExitStatusExt;
    let _l = vm_lock();
    let Some(Crash { mut g, dir, vsp, c0, e0, c1 }) = crash_guest("linux_crash", "linux-crash") else { return };
    let cli = Cli::new(&g);
    let mut seen = std::collections::BTreeSet::new();
    let mut completed = None;
    for kill_at in 0..40 {
        let o = cli.run(&["apply", path(&vsp)], Some(kill_at));
        let killed = o.status.signal() == Some(9);
        assert!(killed || o.status.success(), "apply at {kill_at}: {}\n{}", text(&o.stdout), text(&o.stderr));
        if killed {
            cli.recover_after_kill(&mut g, "apply", kill_at, &mut seen);
        }
        let applied = cli.listed("two_sites");
        let (c, e) = two_texts(&mut g);
        if !killed {
            // Nothing stopped it: the apply itself must have gone through.
            assert!(text(&o.stdout).contains("\"cause\":\"ok\""), "the un-killed apply (kill at {kill_at} not reached): {}\n{}", text(&o.stdout), text(&o.stderr));
            assert!(applied, "the un-killed apply is not in the registry");
        }
        if applied {
            assert_eq!((c, e), (c1.clone(), "two\n".to_owned()), "registry says applied (kill at {kill_at})");
            let o = cli.run(&["revert", "two_sites"], None);
            assert!(o.status.success(), "{}", text(&o.stderr));
        } else {
            assert_eq!((c, e), (c0.clone(), e0.clone()), "registry says not applied (kill at {kill_at})");
        }
        if !killed {
            eprintln!("apply completes without a kill after {kill_at} writes; intent states seen: {seen:?}");
            completed = Some(kill_at);
            break;
        }
    }
    assert!(completed.is_some(), "every apply up to 40 writes was killed: the un-killed apply never ran");
    assert!(seen.contains("not_started") && seen.contains("partial") && seen.contains("complete"), "{seen:?}");
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), c0);
    let _ = std::fs::remove_dir_all(&dir);
    g.check_console().unwrap();
}

/// The same for `vsplice patch revert`: the two-function patch applied,
/// then its revert SIGKILLed at each of its guest-memory writes in turn.
/// After each kill and `status --recover`, the guest's text is all old (and
/// the registry no longer lists the patch) or all new (and it still does);
/// the first revert the kill does not reach ends `ok`, the text old.
#[test]
fn killed_cli_revert_is_recovered_from_the_guests_registry() {
    use std::os::unix::process::ExitStatusExt;
    let _l = vm_lock();
    let Some(Crash { mut g, dir, vsp, c0, e0, c1 }) = crash_guest("linux_crash_revert", "linux-crash-revert") else { return };
    let cli = Cli::new(&g);
    let mut seen = std::collections::BTreeSet::new();
    let mut completed = None;
    for kill_at in 0..40 {
        if !cli.listed("two_sites") {
            let o = cli.run(&["apply", path(&vsp)], None);
            assert!(o.status.success() && text(&o.stdout).contains("\"cause\":\"ok\""), "apply before revert {kill_at}: {}\n{}", text(&o.stdout), text(&o.stderr));
        }
        assert_eq!(two_texts(&mut g), (c1.clone(), "two\n".to_owned()), "applied before the revert killed at {kill_at}");
        let o = cli.run(&["revert", "two_sites"], Some(kill_at));
        let killed = o.status.signal() == Some(9);
        assert!(killed || o.status.success(), "revert at {kill_at}: {}\n{}", text(&o.stdout), text(&o.stderr));
        if killed {
            cli.recover_after_kill(&mut g, "revert", kill_at, &mut seen);
        } else {
            assert!(text(&o.stdout).contains("\"cause\":\"ok\""), "the un-killed revert (kill at {kill_at} not reached): {}\n{}", text(&o.stdout), text(&o.stderr));
        }
        let applied = cli.listed("two_sites");
        let now = two_texts(&mut g);
        if applied {
            assert!(killed, "the un-killed revert left the patch in the registry");
            assert_eq!(now, (c1.clone(), "two\n".to_owned()), "registry says still applied (revert killed at {kill_at}): all new");
        } else {
            assert_eq!(now, (c0.clone(), e0.clone()), "registry says reverted (revert killed at {kill_at}): all old");
        }
        let st = text(&cli.run(&["status"], None).stdout);
        assert!(st.contains("\"intent\": null"), "status after the revert killed at {kill_at}: {st}");
        if !killed {
            eprintln!("revert completes without a kill after {kill_at} writes; intent states seen: {seen:?}");
            completed = Some(kill_at);
            break;
        }
    }
    assert!(completed.is_some(), "every revert up to 40 writes was killed: the un-killed revert never ran");
    assert!(seen.contains("not_started") && seen.contains("partial") && seen.contains("complete"), "{seen:?}");
    assert_eq!(two_texts(&mut g), (c0, e0));
    let _ = std::fs::remove_dir_all(&dir);
    g.check_console().unwrap();
}

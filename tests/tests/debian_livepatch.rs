//! Issue 4 on stock Debian kernels under QEMU (TCG), patched from outside
//! over the gdbstub.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use vsplice_patcher::mem::KernelMemory;
use vsplice_patcher::patch::linux::LinuxImage;
use vsplice_patcher::target::access::Guest as GuestMem;
use vsplice_patcher::target::TargetKernel;
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, QemuConfig};
use vsplice_tests::skip::skip;
use vsplice_tests::testguest::vm_lock;

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

#[test]
fn cmdline_marker_applies_and_reverts() {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(mut g) = boot(flavour, "cmdline_marker") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let before = g.run_ok("cat /proc/cmdline").unwrap();
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    let mut p = linuxpatch::patcher(&g, &mut be, &target);
    let r = p.apply(&patch);
    eprintln!("{}", r.to_json());
    assert!(r.is_ok());
    drop(p);
    let after = g.run_ok("cat /proc/cmdline").unwrap();
    eprintln!("before {before:?} after {after:?}");
    assert_eq!(after, format!("{} vsplice.marker=cmdline\n", before.trim_end()));
    let mut p = linuxpatch::patcher(&g, &mut be, &target);
    let r = p.revert(&patch.manifest.id);
    eprintln!("{}", r.to_json());
    assert!(r.is_ok());
    drop(p);
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), before);
    g.check_console().unwrap();
}

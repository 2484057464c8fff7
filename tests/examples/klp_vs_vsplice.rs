//! Numbers for issue 4: vsplice versus the kernel's own livepatch (klp) on
//! the same QEMU (TCG) Debian guest and the same replacement function
//! (`execdomains_proc_show_counted` of examples/patches/linux/execdomains_counter.c;
//! the klp module, tests/examples/klp/execdomains_counter_klp.c, includes
//! that file and is built with Kbuild against the same headers, loaded with
//! insmod).
//!
//! For each method and round:
//! - request -> fully patched: vsplice: `Patcher::apply` on an attached
//!   guest (host clock; the one-time attach + identification and a whole
//!   `vsplice patch apply` CLI run are printed apart); klp: `insmod` until
//!   `/sys/kernel/livepatch/<name>/transition` reads 0 (guest clock, by
//!   `stallprobe exec`), with the guest otherwise idle;
//! - the largest stall guest-side probes see: one `stallprobe probe`
//!   spinning on clock_gettime per vCPU while the patch goes in (a second
//!   application of the same method), against a baseline with nothing
//!   happening. QEMU stops the guest's clocks while vsplice has the vCPUs
//!   stopped, so the probes cannot see that pause: vsplice's host-side
//!   downtime (vCPUs out of the guest) is printed next to it.
//!
//! `cargo run --release -p vsplice-tests --example klp_vs_vsplice -- [amd64|cloud-amd64] [ROUNDS]`
//! (default: amd64 5; needs images/debian-kernels.sh first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::debian::{debian_images, DebianImages, Flavour};
use vsplice_tests::guestcmd::base64_encode;
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, QemuConfig};
use vsplice_tests::scratch::{tmp, tmp_dir};
use vsplice_tests::testguest::workspace_root;

const KLP: &str = "execdomains_counter_klp";
const PROBE_S: f64 = 4.0;

/// Builds the klp module with Kbuild and strips its debug info; returns the .ko bytes.
fn build_klp(img: &DebianImages) -> Vec<u8> {
    let dir = tmp_dir("klp");
    let root = workspace_root();
    for (src, name) in [
        (root.join("tests/examples/klp/execdomains_counter_klp.c"), "execdomains_counter_klp.c"),
        (root.join("examples/patches/linux/execdomains_counter.c"), "execdomains_counter.c"),
        (root.join("patcher/include/vsplice.h"), "vsplice.h"),
    ] {
        std::fs::copy(&src, dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("Kbuild"), format!("obj-m := {KLP}.o\n")).unwrap();
    let o = Command::new("make").arg("-s").arg("-C").arg(&img.headers).arg(format!("M={}", dir.display())).arg("modules").output().unwrap();
    assert!(o.status.success(), "klp module build failed:\n{}{}", text(&o.stdout), text(&o.stderr));
    let ko = dir.join(format!("{KLP}.ko"));
    let stripped = dir.join("stripped.ko");
    let s = Command::new("strip").arg("--strip-debug").arg("-o").arg(&stripped).arg(&ko).status().unwrap();
    assert!(s.success());
    let bytes = std::fs::read(&stripped).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// The largest gap (µs) over the probes' lines.
fn max_gap(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("max_gap_us=")).and_then(|v| v.parse().ok()))
        .max()
        .unwrap_or_else(|| panic!("no probe output in {out:?}"))
}

fn start_probes(g: &mut Guest) {
    g.run_ok(&format!("rm -f /tmp/p0 /tmp/p1; (stallprobe probe {PROBE_S} 0 >/tmp/p0.t && mv /tmp/p0.t /tmp/p0) </dev/null >/dev/null 2>&1 & (stallprobe probe {PROBE_S} 1 >/tmp/p1.t && mv /tmp/p1.t /tmp/p1) </dev/null >/dev/null 2>&1 &")).unwrap();
}

fn probe_result(g: &mut Guest) -> u64 {
    let out = g.run_ok("n=0; while [ ! -s /tmp/p0 ] || [ ! -s /tmp/p1 ]; do sleep 0.2; n=$((n+1)); [ $n -lt 200 ] || exit 1; done; cat /tmp/p0 /tmp/p1").unwrap();
    max_gap(&out)
}

fn klp_apply(g: &mut Guest) -> u64 {
    let out = g
        .run_ok(&format!("stallprobe exec sh -c 'insmod /tmp/{KLP}.ko && while [ \"$(cat /sys/kernel/livepatch/{KLP}/transition)\" != 0 ]; do :; done'"))
        .unwrap();
    assert!(out.contains("status=0"), "{out}");
    out.split_whitespace().find_map(|w| w.strip_prefix("elapsed_us=")).and_then(|v| v.parse().ok()).unwrap()
}

fn klp_remove(g: &mut Guest) {
    g.run_ok(&format!(
        "d=/sys/kernel/livepatch/{KLP}; echo 0 >$d/enabled && while [ -e $d ] && [ \"$(cat $d/transition 2>/dev/null)\" = 1 ]; do sleep 0.05; done; n=0; until rmmod {KLP} 2>/dev/null; do sleep 0.1; n=$((n+1)); [ $n -lt 100 ] || exit 1; done"
    ))
    .unwrap();
}

/// Median and maximum of microsecond values, in milliseconds.
fn stats(v: &[u64]) -> String {
    let mut s = v.to_vec();
    s.sort_unstable();
    format!("median {:>8.1} ms   max {:>8.1} ms", s[s.len() / 2] as f64 / 1e3, s[s.len() - 1] as f64 / 1e3)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let flavour = match args.next().as_deref() {
        Some("cloud-amd64") => Flavour::CloudAmd64,
        _ => Flavour::Amd64,
    };
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("execdomains_counter.c")).unwrap();
    let ko = build_klp(&img);
    let mut cfg = QemuConfig::debian(flavour, "klp_vs_vsplice").unwrap();
    cfg.extra_append.push("vsplice.agent=0".into());
    let mut g = Guest::boot(cfg).unwrap();
    let base = g.run_ok("cat /proc/execdomains").unwrap();
    g.run_ok(&format!("echo {} | base64 -d >/tmp/{KLP}.ko", base64_encode(&ko))).unwrap();
    eprintln!("{} ({}), {} vCPUs, QEMU TCG; klp module {} bytes; {rounds} rounds", img.release, img.version, g.config().smp, ko.len());

    // Baseline: the probes with nothing happening.
    let mut baseline = Vec::new();
    for _ in 0..rounds.min(3) {
        start_probes(&mut g);
        baseline.push(probe_result(&mut g));
    }

    // vsplice, attached over the gdbstub.
    let t = Instant::now();
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    let attach_ms = t.elapsed().as_secs_f64() * 1e3;
    let (mut v_time, mut v_down, mut v_stall, mut v_check) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        for probed in [false, true] {
            if probed {
                start_probes(&mut g);
                std::thread::sleep(Duration::from_millis(1000));
            }
            let r = {
                let mut p = linuxpatch::patcher(&g, &mut be, &target);
                p.apply(&patch)
            };
            assert!(r.is_ok(), "{}", r.to_json());
            if probed {
                v_stall.push(probe_result(&mut g));
            } else {
                v_time.push(r.timings.total_us);
                v_down.push(r.timings.total_downtime_us);
                v_check.push(r.timings.check_us);
            }
            assert_eq!(g.run_ok("cat /proc/execdomains").unwrap(), format!("{base}vsplice reads=1\n"));
            let mut p = linuxpatch::patcher(&g, &mut be, &target);
            let r = p.revert(&patch.manifest.id);
            assert!(r.is_ok(), "{}", r.to_json());
        }
    }
    linuxpatch::detach(be).unwrap();
    // One whole CLI run: connect, identify the kernel, apply, detach.
    let vsp = tmp("klp-bench.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let arena = linuxpatch::arena_arg(&g);
    let gdb = g.gdb_addr().unwrap().to_owned();
    let cli = |cmd: &str, what: &Path| {
        let t = Instant::now();
        let o = vsplice(&["patch", cmd, "--gdb", &gdb, "--target", "linux", "--arena", &arena, what.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        t.elapsed().as_secs_f64() * 1e3
    };
    let cli_ms = cli("apply", &vsp);
    cli("revert", Path::new(&patch.manifest.id));
    let _ = std::fs::remove_file(&vsp);

    // klp.
    let (mut k_time, mut k_stall) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for probed in [false, true] {
            if probed {
                start_probes(&mut g);
                std::thread::sleep(Duration::from_millis(1000));
            }
            let us = klp_apply(&mut g);
            if probed {
                k_stall.push(probe_result(&mut g));
            } else {
                k_time.push(us);
            }
            assert_eq!(g.run_ok("cat /proc/execdomains").unwrap(), format!("{base}vsplice reads=1\n"));
            klp_remove(&mut g);
        }
    }
    g.check_console().unwrap();

    println!("same replacement function (execdomains_proc_show_counted), {} under QEMU TCG, {rounds} rounds", img.release);
    println!("request -> fully patched:");
    println!("  vsplice (attached, Patcher::apply)  {}", stats(&v_time));
    println!("  klp (insmod .. transition 0)        {}", stats(&k_time));
    println!("  vsplice one-time attach+identify    {attach_ms:.1} ms; whole `vsplice patch apply` CLI run {cli_ms:.1} ms");
    println!("largest stall seen by clock_gettime probes (one per vCPU):");
    println!("  baseline (nothing happening)        {}", stats(&baseline));
    println!("  vsplice apply                       {}", stats(&v_stall));
    println!("  klp insmod                          {}", stats(&k_stall));
    println!("vsplice downtime, vCPUs stopped (host clock; the guest's clocks stop too):");
    println!("  total downtime per apply            {}", stats(&v_down));
    println!("  of which the safety check           {}", stats(&v_check));
}

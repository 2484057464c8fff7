//! Numbers for issue 4: vsplice versus the kernel's own livepatch (klp) on
//! the same QEMU (TCG) Debian guest and the same replacement function
//! (`execdomains_proc_show_counted` of examples/patches/linux/execdomains_counter.c;
//! the klp module, tests/examples/klp/execdomains_counter_klp.c, includes
//! that file and is built with Kbuild against the same headers, loaded with
//! insmod).
//!
//! The guest's RAM is a shared file, so vsplice is measured twice on the
//! same guest in the same run (issue 12): through QEMU's gdbstub alone, and
//! with the shared-memory backend (the RAM file; stops and registers through
//! the gdbstub). For each method and round:
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

fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

/// Median and maximum of microsecond values, in microseconds.
fn stats_us(v: &[u64]) -> String {
    let mut s = v.to_vec();
    s.sort_unstable();
    format!("median {:>8} us   max {:>8} us", s[s.len() / 2], s[s.len() - 1])
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
    // RAM in a shared file: vsplice is measured through the gdbstub alone
    // and with the file, on this one guest.
    cfg.shared_ram = true;
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

    // vsplice, attached over the gdbstub alone, then with the RAM file
    // (same guest: it was booted with shared RAM).
    let (t0, mut be, target) = {
        let t = Instant::now();
        let (be, target) = linuxpatch::attach_stub_only(&g).unwrap();
        (t, be, target)
    };
    let stub = vsplice_rounds(&mut g, &mut be, &target, &patch, &base, rounds, t0.elapsed());
    linuxpatch::detach(be).unwrap();
    let t0 = Instant::now();
    let (mut be, target) = linuxpatch::attach(&g).unwrap();
    let shm = vsplice_rounds(&mut g, &mut be, &target, &patch, &base, rounds, t0.elapsed());
    linuxpatch::detach(be).unwrap();
    // One whole CLI run each way: connect, identify the kernel, apply, detach.
    let vsp = tmp("klp-bench.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let arena = linuxpatch::arena_arg(&g);
    let gdb = g.gdb_addr().unwrap().to_owned();
    let shm_args = linuxpatch::gdb_args(&g);
    let cli = |cmd: &str, what: &Path, with_file: bool| {
        let t = Instant::now();
        let mut args: Vec<&str> = vec!["patch", cmd, "--target", "linux", "--arena", &arena];
        if with_file {
            args.extend(shm_args.iter().map(String::as_str));
        } else {
            args.extend(["--gdb", gdb.as_str()]);
        }
        args.push(what.to_str().unwrap());
        let o = vsplice(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        t.elapsed().as_secs_f64() * 1e3
    };
    let cli_stub_ms = cli("apply", &vsp, false);
    cli("revert", Path::new(&patch.manifest.id), false);
    let cli_shm_ms = cli("apply", &vsp, true);
    cli("revert", Path::new(&patch.manifest.id), true);
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

    let ratio = |v: &[u64]| median(&k_time) as f64 / median(v).max(1) as f64;
    println!("same replacement function (execdomains_proc_show_counted), {} under QEMU TCG, {} vCPUs, shared RAM, {rounds} rounds, same guest, same run", img.release, g.config().smp);
    println!("request -> fully patched (attached; klp: insmod .. transition 0):");
    println!("  vsplice, gdbstub only               {}   klp/this {:>7.1}x", stats(&stub.time), ratio(&stub.time));
    println!("  vsplice, shared memory              {}   klp/this {:>7.1}x", stats(&shm.time), ratio(&shm.time));
    println!("  klp (insmod .. transition 0)        {}", stats(&k_time));
    println!("vsplice downtime, vCPUs stopped (host clock; the guest's clocks stop too):");
    println!("  gdbstub only                        {}", stats(&stub.down));
    println!("    of which the safety check         {}", stats(&stub.check));
    println!("    of which the resume               {}", stats_us(&stub.resume));
    println!("  shared memory                       {}", stats(&shm.down));
    println!("    of which the safety check         {}", stats(&shm.check));
    println!("    of which the resume               {}", stats_us(&shm.resume));
    println!("one-time attach+identify: gdbstub only {:.1} ms, shared memory {:.1} ms", stub.attach.as_secs_f64() * 1e3, shm.attach.as_secs_f64() * 1e3);
    println!("whole `vsplice patch apply` CLI run: gdbstub only {cli_stub_ms:.1} ms, shared memory {cli_shm_ms:.1} ms");
    println!("largest stall seen by clock_gettime probes (one per vCPU):");
    println!("  baseline (nothing happening)        {}", stats(&baseline));
    println!("  vsplice apply, gdbstub only         {}", stats(&stub.stall));
    println!("  vsplice apply, shared memory        {}", stats(&shm.stall));
    println!("  klp insmod                          {}", stats(&k_stall));
}

/// What one way of attaching measured.
struct Rounds {
    attach: Duration,
    time: Vec<u64>,
    down: Vec<u64>,
    check: Vec<u64>,
    resume: Vec<u64>,
    stall: Vec<u64>,
}

/// `rounds` × (apply, revert; apply with the probes running, revert) on an
/// attached guest; the unprobed applies' request -> patched, downtime and
/// check, the probed ones' largest stall.
fn vsplice_rounds(g: &mut Guest, be: &mut linuxpatch::Attached, target: &vsplice_patcher::kernels::stock_linux::LinuxTarget, patch: &vsplice_patcher::patch::PatchFile, base: &str, rounds: usize, attach: Duration) -> Rounds {
    let mut r = Rounds { attach, time: Vec::new(), down: Vec::new(), check: Vec::new(), resume: Vec::new(), stall: Vec::new() };
    for _ in 0..rounds {
        for probed in [false, true] {
            if probed {
                start_probes(g);
                std::thread::sleep(Duration::from_millis(1000));
            }
            let a = linuxpatch::patcher(g, be, target).apply(patch);
            assert!(a.is_ok(), "{}", a.to_json());
            if probed {
                r.stall.push(probe_result(g));
            } else {
                r.time.push(a.timings.total_us);
                r.down.push(a.timings.total_downtime_us);
                r.check.push(a.timings.check_us);
                r.resume.push(a.timings.resume_us);
            }
            assert_eq!(g.run_ok("cat /proc/execdomains").unwrap(), format!("{base}vsplice reads=1\n"));
            let v = linuxpatch::patcher(g, be, target).revert(&patch.manifest.id);
            assert!(v.is_ok(), "{}", v.to_json());
        }
    }
    r
}

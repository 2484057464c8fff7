//! Numbers for issue 10: applying a live patch to a stock Debian kernel
//! under QEMU (TCG) through the `vsplice attach` daemon's API versus the
//! one-shot CLI. `vsplice patch apply --gdb … --target linux` connects to
//! the gdbstub, identifies the kernel (kallsyms, KASLR slide, build-id,
//! BTF) and detaches on every call; the daemon does that once, then each
//! request only runs the transaction. The example patch
//! `examples/patches/linux/cmdline_marker.c` is applied and reverted N
//! times each way: wall time of each `vsplice` process (CLI), of each
//! `vsplice remote` process and of each raw HTTP request (daemon), and the
//! transaction's own `total_us` and `downtime_us` from its report.
//!
//! `cargo build --release -p vsplice-vmm && cargo run --release -p vsplice-tests --example api_vs_cli_debian -- [N] [amd64|cloud-amd64]`
//! (needs the Debian images: images/debian-kernels.sh). Nothing is asserted
//! beyond each transaction being `ok`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::attach::AttachDaemon;
use vsplice_tests::cli::{text, vsplice_bin};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::scratch::tmp_dir;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn line(what: &str, v: &mut [f64]) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    println!("{what:<58} p50 {:>9.1} ms   max {:>9.1} ms   min {:>9.1} ms   (n={})", pct(v, 0.5), pct(v, 1.0), min, v.len());
}

/// Wall ms of one command, and its JSON report's (total_us, downtime_us) in ms.
fn timed(cmd: &mut Command) -> (f64, f64, f64) {
    let t = Instant::now();
    let o = cmd.output().unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", text(&o.stdout), text(&o.stderr)));
    assert_eq!(r["cause"], "ok", "{r}");
    (ms, r["timings"]["total_us"].as_f64().unwrap() / 1e3, r["timings"]["downtime_us"].as_f64().unwrap() / 1e3)
}

#[derive(Default)]
struct Series {
    wall: Vec<f64>,
    total: Vec<f64>,
    downtime: Vec<f64>,
}

impl Series {
    fn push(&mut self, (wall, total, downtime): (f64, f64, f64)) {
        self.wall.push(wall);
        self.total.push(total);
        self.downtime.push(downtime);
    }

    fn print(&mut self, what: &str) {
        line(&format!("{what} (wall)"), &mut self.wall);
        line(&format!("{what}: transaction total_us"), &mut self.total);
        line(&format!("{what}: downtime_us"), &mut self.downtime);
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(5, |a| a.parse().unwrap());
    let flavour = match std::env::args().nth(2).as_deref() {
        Some("cloud-amd64") => Flavour::CloudAmd64,
        _ => Flavour::Amd64,
    };
    let Some(g) = linuxpatch::boot_agentless(flavour, "api_vs_cli") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let dir = tmp_dir("api-vs-cli");
    let vsp = dir.join("cmdline_marker.vsp");
    std::fs::write(&vsp, patch.to_bytes().unwrap()).unwrap();
    let (gdb, arena) = (g.gdb_addr().unwrap().to_owned(), linuxpatch::arena_arg(&g));

    // The CLI: attach, identify, transaction, detach, every time.
    let cli = |op: &str, what: &str| {
        let mut c = Command::new(vsplice_bin());
        c.args(["patch", op, "--gdb", &gdb, "--target", "linux", "--arena", &arena, what]);
        c
    };
    let (mut cli_apply, mut cli_revert) = (Series::default(), Series::default());
    for _ in 0..n {
        cli_apply.push(timed(&mut cli("apply", vsp.to_str().unwrap())));
        cli_revert.push(timed(&mut cli("revert", "cmdline_marker")));
    }

    // The daemon: attach and identify once.
    let t = Instant::now();
    let d = AttachDaemon::start(&dir, &gdb, &arena, &[], Duration::from_secs(600)).unwrap();
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    let remote = |args: &[&str]| {
        let mut c = Command::new(vsplice_bin());
        c.arg("remote").arg("--api-sock").arg(&d.sock).arg("--json").args(args);
        c
    };
    let (mut rem_apply, mut rem_revert) = (Series::default(), Series::default());
    let (mut http_apply, mut http_revert) = (Series::default(), Series::default());
    let bytes = std::fs::read(&vsp).unwrap();
    for _ in 0..n {
        rem_apply.push(timed(&mut remote(&["patch", "apply", vsp.to_str().unwrap()])));
        rem_revert.push(timed(&mut remote(&["patch", "revert", "cmdline_marker"])));
        for (method, path, ct, body, series) in [
            ("PUT", "/patches", Some("application/octet-stream"), &bytes[..], &mut http_apply),
            ("DELETE", "/patches/cmdline_marker", None, &[][..], &mut http_revert),
        ] {
            let t = Instant::now();
            let r = vsplice_vmm::api::client::request(&d.sock, method, path, ct, body, None).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            series.push((ms, v["timings"]["total_us"].as_f64().unwrap() / 1e3, v["timings"]["downtime_us"].as_f64().unwrap() / 1e3));
        }
    }
    println!("Debian {} under QEMU TCG ({} vCPUs), cmdline_marker.c, {n} apply/revert cycles each way", img.release, g.config().smp);
    println!("{:<58} {ready_ms:>13.1} ms", "vsplice attach: start to ready (attach+identify, once)");
    cli_apply.print("CLI vsplice patch apply --gdb");
    cli_revert.print("CLI vsplice patch revert --gdb");
    rem_apply.print("daemon: vsplice remote patch apply");
    rem_revert.print("daemon: vsplice remote patch revert");
    http_apply.print("daemon: HTTP PUT /patches");
    http_revert.print("daemon: HTTP DELETE /patches/{id}");
}

//! Live-patch downtime against the bare pause + resume round trip, in the
//! SAME run, on the test guest under the vsplice VMM, for 1, 2 and 4 vCPUs
//! (3 busy tasks per vCPU, `tg.tasks=3 tg.wait=1`).
//!
//! Per vCPU count, 100 rounds after one warm-up apply/revert; each round
//! takes a bare round trip through the transaction's own pause path
//! (`Patcher::guest().stop()` then `.resume()`: the same `Guest`/`Vmm`
//! stop that reads every vCPU's registers; no task list, no check, no
//! write), then applies `examples/patches/testguest/step_b_v2.c`, takes
//! another bare round trip and reverts. Printed: p50/p99 of the bare round
//! trip and of the apply and revert downtime (stop requested .. resumed),
//! the ratio of the p50s (the issue 12 goal: at most 1.5), and the split of
//! the downtime into pause / check / write / resume.
//!
//! Run: `cargo bench -p vsplice-benches --bench downtime_vs_pause`.
//! With `VSPLICE_BENCH_SLEEPERS=N` every guest also parks N sleeping tasks
//! (`tg.sleepers=N`, see `images/testguest/README.md`);
//! `VSPLICE_BENCH_VCPUS=2` (or `1,4`, …) runs only those vCPU counts;
//! `VSPLICE_BENCH_INCREMENTAL=on` (or `compare`) turns the incremental
//! check on (`TxnConfig::incremental`; default off: the full check).
//! Results and the exact command: `docs/runs/2026-12-06-inprocess-downtime.md`.
//!
//! Last run (2026-12-06, shared 2-core host, load ~7, full check): bare
//! p50 63 / 120 / 216 µs for 1 / 2 / 4 vCPUs, apply downtime p50 70 / 118 /
//! 231 µs: ratios 1.11 / 0.98 / 1.07 (revert 1.08 / 1.03 / 1.05); the check
//! is 3–6 µs and the write 1 µs p50, the rest is the stop and the resume.
//! A benchmark, not a test: it prints numbers and asserts only that the
//! transactions succeed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use vsplice_benches::percentile;
use vsplice_patcher::kernels::testguest::TestGuest;
use vsplice_patcher::model::Incremental;
use vsplice_patcher::patch::build::{build_patch, BuildOptions};
use vsplice_patcher::txn::{Patcher, Timings, TxnConfig};
use vsplice_vmm::builder;
use vsplice_vmm::config::{SerialConfig, VmConfig};

const ROUNDS: usize = 100;

fn pct(v: &[u64], q: f64) -> u64 {
    let mut d: Vec<Duration> = v.iter().copied().map(Duration::from_nanos).collect();
    percentile(&mut d, q).as_nanos() as u64
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn split(what: &str, t: &[Timings]) -> String {
    let col = |f: fn(&Timings) -> u64| {
        let v: Vec<u64> = t.iter().map(|t| f(t) * 1000).collect();
        format!("{}/{}", us(pct(&v, 50.0)), us(pct(&v, 99.0)))
    };
    let retries: u32 = t.iter().map(|t| t.attempts - 1).sum();
    format!(
        "{what}: pause {} check {} write {} resume {} (us p50/p99), retries={retries}",
        col(|t| t.pause_us),
        col(|t| t.check_us),
        col(|t| t.write_us),
        col(|t| t.resume_us)
    )
}

fn main() {
    let image = vsplice_benches::testguest_image();
    if !image.is_file() || std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("SKIPPED downtime_vs_pause: needs /dev/kvm and images/build-testguest.sh");
        return;
    }
    let sleepers: u64 = std::env::var("VSPLICE_BENCH_SLEEPERS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let incremental: Incremental = std::env::var("VSPLICE_BENCH_INCREMENTAL").ok().map(|s| s.parse().expect("off, on or compare")).unwrap_or_default();
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/patches/testguest/step_b_v2.c");
    let patch = build_patch(&BuildOptions::testguest(&image, src)).expect("patch builds");
    let target = TestGuest::open(&image).expect("test guest target");
    println!("downtime_vs_pause: {ROUNDS} rounds per vCPU count, sleepers={sleepers}, incremental={incremental}");
    let counts: Vec<usize> = match std::env::var("VSPLICE_BENCH_VCPUS") {
        Ok(s) => s.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2, 4],
    };
    for vcpus in counts {
        let mut config = VmConfig::new(&image);
        config.vcpus = vcpus;
        config.memory_mib = 256;
        config.cmdline = format!("tg.tasks=3 tg.wait=1 tg.quiet tg.sleepers={sleepers}");
        config.serial = SerialConfig::Null;
        let mut vmm = builder::build(config).expect("test guest boots");
        let arena = vmm.arena();
        let mut cfg = TxnConfig::new(arena);
        cfg.incremental = incremental;
        let mut p = Patcher::new(&mut vmm, &target, cfg);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !p.kernel_up() {
            assert!(Instant::now() < deadline, "guest never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        // Warm-up: the first apply maps the arena.
        assert!(p.apply(&patch).is_ok());
        assert!(p.revert(&patch.manifest.id).is_ok());
        let (mut bare, mut applies, mut reverts) = (Vec::new(), Vec::new(), Vec::new());
        let mut last_check = None;
        let round_trip = |p: &mut Patcher<'_, _>| {
            let t = Instant::now();
            p.guest().stop().expect("stop");
            p.guest().resume().expect("resume");
            t.elapsed().as_nanos() as u64
        };
        for _ in 0..ROUNDS {
            bare.push(round_trip(&mut p));
            let a = p.apply(&patch);
            assert!(a.is_ok(), "{}", a.to_json());
            applies.push(a.timings);
            last_check = a.check;
            bare.push(round_trip(&mut p));
            let r = p.revert(&patch.manifest.id);
            assert!(r.is_ok(), "{}", r.to_json());
            reverts.push(r.timings);
        }
        let down = |t: &[Timings]| t.iter().map(|t| t.downtime_us * 1000).collect::<Vec<u64>>();
        let (b50, b99) = (pct(&bare, 50.0), pct(&bare, 99.0));
        let (a, r) = (down(&applies), down(&reverts));
        let ratio = |x: u64| if b50 == 0 { f64::NAN } else { x as f64 / b50 as f64 };
        println!(
            "vcpus={vcpus}: bare pause+resume p50={}us p99={}us (n={}); apply downtime p50={}us p99={}us ratio={:.2}; revert downtime p50={}us p99={}us ratio={:.2}",
            us(b50),
            us(b99),
            bare.len(),
            us(pct(&a, 50.0)),
            us(pct(&a, 99.0)),
            ratio(pct(&a, 50.0)),
            us(pct(&r, 50.0)),
            us(pct(&r, 99.0)),
            ratio(pct(&r, 50.0)),
        );
        println!("vcpus={vcpus}:   {}", split("apply ", &applies));
        println!("vcpus={vcpus}:   {}", split("revert", &reverts));
        if let Some(s) = last_check {
            println!("vcpus={vcpus}:   last apply's check: {} stacks scanned, {} bytes read", s.scanned, s.bytes);
            if let Some(i) = s.incremental {
                println!(
                    "vcpus={vcpus}:   incremental: pre-check {}us (guest running), {} pre-checked, {} reused, {} checked under the pause{}",
                    i.pre_check_us,
                    i.pre_checked,
                    i.reused,
                    i.rechecked,
                    i.note.map(|n| format!("; {n}")).unwrap_or_default()
                );
            }
        }
        drop(p);
        vmm.shutdown();
    }
}

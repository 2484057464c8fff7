//! Live-patch downtime on the test guest under the vsplice VMM: 100 applies
//! (each followed by a revert) of `examples/patches/testguest/step_b_v2.c`
//! with 1, 2 and 4 vCPUs (3 busy tasks per vCPU), p50/p99 of the time the
//! vCPUs are out of the guest, split into pause / check / write / resume.
//! Run: `cargo bench -p vsplice-benches --bench livepatch_downtime`.
//! A benchmark, not a test: it prints numbers and asserts only that the
//! transactions succeed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use vsplice_patcher::patch::build::{build_patch, BuildOptions};
use vsplice_patcher::kernels::testguest::TestGuest;
use vsplice_patcher::txn::{Patcher, Timings, TxnConfig};
use vsplice_vmm::builder;
use vsplice_vmm::config::{SerialConfig, VmConfig};

fn pct(mut v: Vec<u64>, p: f64) -> u64 {
    let d: Vec<Duration> = v.drain(..).map(Duration::from_micros).collect();
    let mut d = d;
    vsplice_benches::percentile(&mut d, p).as_micros() as u64
}

fn summary(what: &str, vcpus: usize, t: &[Timings]) {
    let col = |f: fn(&Timings) -> u64| (pct(t.iter().map(f).collect(), 50.0), pct(t.iter().map(f).collect(), 99.0));
    let (p50, p99) = col(|t| t.pause_us);
    let (c50, c99) = col(|t| t.check_us);
    let (w50, w99) = col(|t| t.write_us);
    let (r50, r99) = col(|t| t.resume_us);
    let (d50, d99) = col(|t| t.downtime_us);
    let (td50, td99) = col(|t| t.total_downtime_us);
    let (pr50, pr99) = col(|t| t.prepare_us);
    let retries: u32 = t.iter().map(|t| t.attempts - 1).sum();
    println!(
        "{what} vcpus={vcpus} n={}: downtime p50={d50}us p99={d99}us (pause {p50}/{p99}, check {c50}/{c99}, write {w50}/{w99}, resume {r50}/{r99}); \
         all-attempts downtime p50={td50}us p99={td99}us; prepare p50={pr50}us p99={pr99}us; retries={retries}",
        t.len()
    );
}

fn main() {
    let image = vsplice_benches::testguest_image();
    if !image.is_file() || std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("SKIPPED livepatch_downtime: needs /dev/kvm and images/build-testguest.sh");
        return;
    }
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/patches/testguest/step_b_v2.c");
    let patch = build_patch(&BuildOptions::testguest(&image, src)).expect("patch builds");
    let target = TestGuest::open(&image).expect("test guest target");
    for vcpus in [1usize, 2, 4] {
        let mut config = VmConfig::new(&image);
        config.vcpus = vcpus;
        config.memory_mib = 128;
        config.cmdline = "tg.tasks=3 tg.wait=1 tg.quiet".to_owned();
        config.serial = SerialConfig::Null;
        let mut vmm = builder::build(config).expect("test guest boots");
        let arena = vmm.arena();
        let mut p = Patcher::new(&mut vmm, &target, TxnConfig::new(arena));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !p.kernel_up() {
            assert!(std::time::Instant::now() < deadline, "guest never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        let (mut applies, mut reverts) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let a = p.apply(&patch);
            assert!(a.is_ok(), "{}", a.to_json());
            applies.push(a.timings);
            let r = p.revert(&patch.manifest.id);
            assert!(r.is_ok(), "{}", r.to_json());
            reverts.push(r.timings);
        }
        summary("apply ", vcpus, &applies);
        summary("revert", vcpus, &reverts);
        drop(p);
        vmm.shutdown();
    }
}

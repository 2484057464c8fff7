//! Why the resume grows with the pause: the test guest (2 vCPUs, 10,000
//! sleepers, as in `downtime_sleepers`) is paused, held for a fixed time
//! while this thread spins (the way a safety check keeps it busy) or
//! sleeps, then resumed; the resume alone (release every vCPU thread and
//! wait until each has left its park, `Vmm::resume`) is timed. Holds of 0,
//! 50, 200, 1,000 and 5,000 µs, interleaved round by round so the host's
//! load falls on all alike; p50/p99 per hold and way.
//!
//! Run: `cargo bench -p vsplice-benches --bench resume_after_hold`
//! (`VSPLICE_BENCH_ROUNDS=N`, default 200). Results:
//! `docs/runs/2026-12-06-tasks-scaling.md`. Prints numbers, asserts nothing
//! but that the pauses succeed.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use vsplice_benches::percentile;
use vsplice_vmm::builder;
use vsplice_vmm::config::{SerialConfig, VmConfig};

const HOLDS_US: [u64; 5] = [0, 50, 200, 1_000, 5_000];

fn main() {
    let image = vsplice_benches::testguest_image();
    if !image.is_file() || std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("SKIPPED resume_after_hold: needs /dev/kvm and images/build-testguest.sh");
        return;
    }
    let rounds: usize = std::env::var("VSPLICE_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut config = VmConfig::new(&image);
    config.vcpus = 2;
    config.memory_mib = 256;
    config.cmdline = "tg.tasks=2 tg.wait=1 tg.quiet tg.sleepers=10000".into();
    config.serial = SerialConfig::Null;
    let mut vmm = builder::build(config).expect("test guest boots");
    std::thread::sleep(Duration::from_secs(3));
    // [spin, sleep] per hold: resume microseconds.
    let mut samples: Vec<[Vec<Duration>; 2]> = HOLDS_US.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for _ in 0..rounds {
        for (i, &hold) in HOLDS_US.iter().enumerate() {
            for (way, spin) in [true, false].into_iter().enumerate() {
                vmm.pause().expect("pause");
                let until = Instant::now() + Duration::from_micros(hold);
                if spin {
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                } else if hold > 0 {
                    std::thread::sleep(Duration::from_micros(hold));
                }
                let t = Instant::now();
                vmm.resume().expect("resume");
                samples[i][way].push(t.elapsed());
                // Let the guest run a little between rounds.
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    println!("resume_after_hold: 2 vCPUs, 10,000 sleepers, {rounds} rounds; resume p50 / p99 (us) after holding the pause");
    for (i, &hold) in HOLDS_US.iter().enumerate() {
        let [spin, sleep] = &mut samples[i];
        let us = |d: Duration| d.as_micros();
        println!(
            "hold {hold:>5} us: spinning {:>6} / {:>6}   sleeping {:>6} / {:>6}",
            us(percentile(spin, 50.0)),
            us(percentile(spin, 99.0)),
            us(percentile(sleep, 50.0)),
            us(percentile(sleep, 99.0))
        );
    }
    vmm.shutdown();
}

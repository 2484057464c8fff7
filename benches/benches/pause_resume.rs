//! Whole-VM pause + resume round trip on the test guest, for 1, 2 and 4 vCPUs:
//! criterion's estimate, plus p50/p99 over 1,000 samples printed per count.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use vsplice_benches::{boot_testguest, percentile, testguest_image};

fn pause_resume(c: &mut Criterion) {
    if !testguest_image().is_file() || std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("SKIPPED pause_resume: needs /dev/kvm and images/build-testguest.sh");
        return;
    }
    let mut group = c.benchmark_group("pause_resume");
    group.sample_size(50).measurement_time(Duration::from_secs(5));
    for vcpus in [1usize, 2, 4] {
        let mut vmm = boot_testguest(vcpus).expect("test guest boots");
        // Let the guest come up (APs started, tasks running) before measuring.
        std::thread::sleep(Duration::from_secs(3));
        let mut samples = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let t = Instant::now();
            vmm.pause().expect("pause");
            vmm.resume().expect("resume");
            samples.push(t.elapsed());
        }
        let (p50, p99) = (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0));
        println!("pause_resume vcpus={vcpus}: p50={p50:?} p99={p99:?} (1000 samples)");
        group.bench_function(format!("vcpus_{vcpus}"), |b| {
            b.iter(|| {
                vmm.pause().expect("pause");
                vmm.resume().expect("resume");
            })
        });
        vmm.shutdown();
    }
    group.finish();
}

criterion_group!(benches, pause_resume);
criterion_main!(benches);

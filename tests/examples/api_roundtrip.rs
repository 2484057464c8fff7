//! Numbers for issue 10: what the HTTP API adds to a live-patch transaction.
//! The test guest (2 vCPUs) is patched and unpatched N times in-process
//! (`Patcher::apply`/`revert` on the VMM, wall time of each call), and N
//! times through `vsplice run --api-sock` (`PUT /patches` with the `.vsp`
//! bytes, `DELETE /patches/{id}`; wall time from connect to the last byte of
//! the reply). The overhead is the API's wall time minus the transaction's
//! own `total_us` from the reply: socket, HTTP, the channel to the VMM
//! thread, the registry status read after the transaction.
//!
//! `cargo build --release -p vsplice-vmm && cargo run --release -p vsplice-tests --example api_roundtrip -- [N]`
//! (needs /dev/kvm and images/build-testguest.sh). Nothing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vsplice_tests::api::{build_example, ApiVm};
use vsplice_tests::livepatch;
use vsplice_tests::scratch::tmp_dir;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn line(what: &str, v: &mut [f64]) {
    println!("{what:<44} p50 {:>8.3} ms   p99 {:>8.3} ms   (n={})", pct(v, 0.5), pct(v, 0.99), v.len());
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(50, |a| a.parse().unwrap());
    let dir = tmp_dir("api-roundtrip");
    let vsp = build_example(&dir, "step_b_v2.c");
    let patch = vsplice_patcher::patch::PatchFile::read(&vsp).unwrap();

    // In-process.
    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=2 tg.wait=5");
    livepatch::wait_tasks(&out, 2, 2, 2);
    let (mut apply, mut revert) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut p = livepatch::patcher(&mut vmm, &target);
        let t = Instant::now();
        assert!(p.apply(&patch).is_ok());
        apply.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        assert!(p.revert(&patch.manifest.id).is_ok());
        revert.push(t.elapsed().as_secs_f64() * 1e3);
    }
    vmm.shutdown();
    drop(vmm);

    // Through the API.
    let vm = ApiVm::start("roundtrip", "tg.tasks=2 tg.wait=5", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let bytes = std::fs::read(&vsp).unwrap();
    let (mut api_apply, mut api_revert, mut over_apply, mut over_revert, mut get_vm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let path = format!("/patches/{}", patch.manifest.id);
    for _ in 0..n {
        for (method, p, ct, body, wall, over) in [
            ("PUT", "/patches", Some("application/octet-stream"), &bytes[..], &mut api_apply, &mut over_apply),
            ("DELETE", path.as_str(), None, &[][..], &mut api_revert, &mut over_revert),
        ] {
            let t = Instant::now();
            let r = vsplice_vmm::api::client::request(&vm.sock, method, p, ct, body, None).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(r.status, 200, "{}", r.text());
            wall.push(ms);
            over.push(ms - r.json()["timings"]["total_us"].as_f64().unwrap() / 1e3);
        }
        let t = Instant::now();
        vsplice_vmm::api::client::request(&vm.sock, "GET", "/vm", None, b"", None).unwrap();
        get_vm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("test guest, 2 vCPUs, 4 tasks; {n} apply/revert cycles each way");
    line("in-process apply (Patcher::apply)", &mut apply);
    line("in-process revert (Patcher::revert)", &mut revert);
    line("API PUT /patches (wall)", &mut api_apply);
    line("API DELETE /patches/{id} (wall)", &mut api_revert);
    line("API overhead on apply (wall - total_us)", &mut over_apply);
    line("API overhead on revert (wall - total_us)", &mut over_revert);
    line("API GET /vm (wall)", &mut get_vm);
}

//! Numbers for docs/runs (ignored by default; run with `--ignored`):
//! targets patched per second at parallelism 1, 4 and 16 over 16 test-guest
//! VMs (no canary, no soak: the apply and the gates themselves), the
//! journal's cost per record (the controller's own `JOURNAL.prom`), and
//! the time from a canary's failed console gate to the halt. Every run is
//! also checked (each target patched once, then rolled back); no timing is
//! asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use vsplice_tests::api::build_example;
use vsplice_tests::fleet::{count, fleet, said, steps, Fleet, QUIET};
use vsplice_tests::testguest;
use vsplice_vmm::fleet::journal::Op;

const N: usize = 16;

fn prom_value(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(f64::NAN)
}

#[test]
#[ignore = "measurement: cargo test … --test fleet_measure -- --ignored --nocapture"]
fn measure_throughput_journal_and_halt() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_measure") {
        return;
    }
    let f = Fleet::boot("measure", N, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let inv = f.inventory(&[]);
    for p in [1usize, 4, 16] {
        let plan = f.plan(&format!("p{p}"), &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "parallelism": p}));
        let journal = f.dir.join(format!("p{p}.redb"));
        let t = Instant::now();
        let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
        let wall = t.elapsed().as_secs_f64();
        assert!(o.status.success(), "{}", said(&o));
        let s = steps(&journal);
        for i in 0..N {
            assert_eq!(count(&s, &Fleet::name(i), Op::Apply, "ok"), 1);
        }
        let first = s.iter().find(|x| x.op == Op::Apply).unwrap().time_ms;
        let last = s.iter().rev().find(|x| x.op == Op::Outcome).unwrap().time_ms;
        let rollout = (last - first) as f64 / 1000.0;
        let prom = std::fs::read_to_string(format!("{}.prom", journal.display())).unwrap();
        let (sum, n) = (prom_value(&prom, "vsplice_fleet_journal_write_seconds_sum"), prom_value(&prom, "vsplice_fleet_journal_write_seconds_count"));
        eprintln!(
            "MEASURE parallelism {p:>2}: {N} targets, first apply to last outcome {rollout:.3} s = {:.1} targets/s; whole command {wall:.3} s = {:.1} targets/s; journal {n} records, {:.3} ms each (sum {:.3} s = {:.0}% of the rollout)",
            N as f64 / rollout,
            N as f64 / wall,
            sum * 1000.0 / n,
            sum,
            100.0 * sum / rollout
        );
        assert!(fleet(&journal, &["rollback"], None).status.success());
    }
    // The same at parallelism 1 and 4 with the journal in a 3-member etcd cluster on loopback.
    if let Some(bin) = vsplice_tests::etcd::etcd_or_skip("fleet_measure_etcd") {
        let cluster = vsplice_tests::etcd::Cluster::start(&bin, "measure", 3);
        for p in [1usize, 4] {
            let plan = f.plan(&format!("e{p}"), &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "parallelism": p}));
            let url = cluster.url(&format!("measure/p{p}"));
            let t = Instant::now();
            let o = fleet(std::path::Path::new(&url), &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
            let wall = t.elapsed().as_secs_f64();
            assert!(o.status.success(), "{}", said(&o));
            let journal = String::from_utf8_lossy(&o.stderr).lines().find(|l| l.contains("journal:")).unwrap_or("-").to_owned();
            eprintln!("MEASURE etcd parallelism {p:>2}: {N} targets, whole command {wall:.3} s = {:.1} targets/s; {journal}", N as f64 / wall);
            assert!(fleet(std::path::Path::new(&url), &["rollback"], None).status.success());
        }
    }
    // A canary whose console gate fails: from the gate's result to the halt.
    let bug = build_example(&f.dir, "compute_bug.c");
    for run in 0..3 {
        let plan = f.plan(&format!("bug{run}"), &serde_json::json!({"patches": [&bug], "allow_unsigned": true, "canary": {"count": 1, "soak_ms": 1000}, "parallelism": 4}));
        let journal = f.dir.join(format!("bug{run}.redb"));
        let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
        assert_eq!(o.status.code(), Some(3), "{}", said(&o));
        let s = steps(&journal);
        let gate = s.iter().find(|x| x.op == Op::Gate && x.result.as_deref() == Some("console")).unwrap();
        let halted = s.iter().find(|x| x.op == Op::State && x.result.as_deref() == Some("halted")).unwrap();
        assert!(s.iter().all(|x| x.target.is_empty() || x.target == "vm0"), "only the canary touched");
        eprintln!("MEASURE canary console gate failed -> halted: {} ms (revert of the canary included)", halted.time_ms - gate.time_ms);
        // The canary's console keeps its BUG count; a fresh patch name is not needed: the gate compares with the baseline.
    }
}

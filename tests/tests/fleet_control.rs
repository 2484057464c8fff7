//! Operators and a running `vsplice fleet` controller: `status` while it
//! runs (its snapshot), `pause` (it stops after the target in flight,
//! `resume` goes on and finishes, each target patched once), `abort` (it
//! stops, nothing reverted; `resume` keeps it aborted), `rollback`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vsplice_tests::api::build_example;
use vsplice_tests::fleet::{count, fleet, outcome, said, steps, Fleet, QUIET};
use vsplice_tests::{cli, testguest};
use vsplice_vmm::fleet::journal::Op;

fn spawn_start(journal: &std::path::Path, inv: &std::path::Path, plan: &std::path::Path) -> Child {
    Command::new(cli::vsplice_bin())
        .arg("fleet")
        .arg("--journal")
        .arg(journal)
        .arg("start")
        .arg("--inventory")
        .arg(inv)
        .arg("--plan")
        .arg(plan)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the running controller's snapshot shows `n` patched targets.
fn wait_patched(journal: &std::path::Path, n: u64) {
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        let o = fleet(journal, &["--json", "status"], None);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if v["counts"]["patched"].as_u64().unwrap_or(0) >= n {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never {n} patched");
}

#[test]
fn pause_resume_abort_and_rollback_reach_a_running_controller() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_control") {
        return;
    }
    let f = Fleet::boot("control", 4, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let inv = f.inventory(&[]);
    // One at a time with a long soak: time for the operator.
    let plan = f.plan("p", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "soak_ms": 1500, "parallelism": 1}));

    let journal = f.dir.join("pause.redb");
    let child = spawn_start(&journal, &inv, &plan);
    wait_patched(&journal, 1);
    let p = fleet(&journal, &["pause"], None);
    assert!(p.status.success() && String::from_utf8_lossy(&p.stderr).contains("asked to pause"), "{}", said(&p));
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "a paused rollout exits 0: {}", said(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rollout paused"), "{}", said(&o));
    let st: serde_json::Value = serde_json::from_slice(&fleet(&journal, &["--json", "status"], None).stdout).unwrap();
    assert_eq!(st["state"], "paused", "{st}");
    let pending = st["counts"]["pending"].as_u64().unwrap_or(0);
    assert!(pending >= 1, "paused before the end: {st}");
    let r = fleet(&journal, &["resume"], None);
    assert!(r.status.success(), "{}", said(&r));
    let s = steps(&journal);
    for i in 0..4 {
        let n = Fleet::name(i);
        assert_eq!((outcome(&s, &n), count(&s, &n, Op::Apply, "ok")), (Some("patched"), 1), "{n}");
        assert_eq!(f.registry(i), ["step_b_v2"]);
    }
    // rollback while no controller runs: at once.
    assert!(fleet(&journal, &["rollback"], None).status.success());
    assert!((0..4).all(|i| f.registry(i).is_empty()));

    // abort: stops after the target in flight; what was patched stays patched.
    let journal = f.dir.join("abort.redb");
    let child = spawn_start(&journal, &inv, &plan);
    wait_patched(&journal, 1);
    let a = fleet(&journal, &["abort"], None);
    assert!(a.status.success(), "{}", said(&a));
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "an aborted rollout exits 3: {}", said(&o));
    let s = steps(&journal);
    let patched: Vec<usize> = (0..4).filter(|i| outcome(&s, &Fleet::name(*i)) == Some("patched")).collect();
    assert!(!patched.is_empty() && patched.len() < 4, "{patched:?}");
    for i in 0..4 {
        assert_eq!(f.registry(i).len(), usize::from(patched.contains(&i)), "vm{i}");
    }
    assert_eq!(fleet(&journal, &["resume"], None).status.code(), Some(3), "aborted stays aborted");
    // rollback sent to a running controller is covered by the file; here none runs.
    assert!(fleet(&journal, &["rollback"], None).status.success());
    assert!((0..4).all(|i| f.registry(i).is_empty()));
    let s = steps(&journal);
    for i in patched {
        assert_eq!(count(&s, &Fleet::name(i), Op::Revert, "ok"), 1);
    }
}

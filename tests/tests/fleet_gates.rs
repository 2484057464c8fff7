//! `vsplice fleet` stops at the first sign of trouble:
//! - a canary held inside the patched function (`tg.hold`: `code_busy`
//!   until the attempts run out) halts the rollout, and nothing beyond the
//!   canary is touched;
//! - a patch that prints a kernel `BUG:` line (the deliberately broken
//!   example `compute_bug.c`) trips the console gate: that target is
//!   reported and reverted, the wave reverted, the rollout halted;
//! - a probe command that fails for one target reverts that target only,
//!   within the failure budget, and the rollout goes on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vsplice_tests::api::{build_example, build_patch};
use vsplice_tests::fleet::{count, fleet, outcome, said, steps, Fleet, QUIET};
use vsplice_tests::{livepatch, testguest};
use vsplice_vmm::fleet::journal::Op;

#[test]
fn a_busy_canary_halts_the_rollout_before_any_other_target() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_canary_busy") {
        return;
    }
    let f = Fleet::boot("canary", 4, |i| if i == 0 { format!("{QUIET} tg.hold") } else { QUIET.to_owned() });
    assert!(f.vms[0].wait_serial(Duration::from_secs(60), |s| s.contains("TG hold task=1 in tg_hold")));
    let hold = build_patch(&f.dir, "hold", livepatch::HOLD_PATCH);
    let inv = f.inventory(&[]);
    let plan = f.plan("p", &serde_json::json!({"patches": [hold], "allow_unsigned": true, "canary": {"count": 1}, "attempts": 3, "parallelism": 3, "failure_budget": 5}));
    let journal = f.dir.join("j.redb");
    let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(3), "halted: {}", said(&o));
    let steps = steps(&journal);
    let apply = steps.iter().find(|s| s.target == "vm0" && s.op == Op::Apply && s.phase == "done").unwrap();
    assert_eq!(apply.result.as_deref(), Some("code_busy"), "{apply:?}");
    assert_eq!(outcome(&steps, "vm0"), Some("failed"));
    for i in 1..4 {
        assert!(steps.iter().all(|s| s.target != Fleet::name(i)), "vm{i} untouched");
    }
    for i in 0..4 {
        assert!(f.registry(i).is_empty(), "vm{i} not patched");
    }
    assert!(steps.iter().any(|s| s.op == Op::State && s.result.as_deref() == Some("halted")));
    let st: serde_json::Value = serde_json::from_slice(&fleet(&journal, &["--json", "status"], None).stdout).unwrap();
    assert_eq!((st["state"].as_str(), st["counts"]["pending"].as_u64(), st["counts"]["failed"].as_u64()), (Some("halted"), Some(3), Some(1)), "{st}");
    // A halted rollout stays halted on resume: nothing more is touched.
    let o = fleet(&journal, &["resume"], None);
    assert_eq!(o.status.code(), Some(3), "{}", said(&o));
    assert!(vsplice_tests::fleet::steps(&journal).iter().all(|s| !s.target.starts_with("vm") || s.target == "vm0"));
}

#[test]
fn a_patch_that_prints_a_bug_trips_the_console_gate_and_the_wave_is_reverted() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_console_gate") {
        return;
    }
    let f = Fleet::boot("console", 4, |_| QUIET.to_owned());
    let bug = build_example(&f.dir, "compute_bug.c");
    let inv = f.inventory(&[]);
    // No canary: one wave of 4, two at a time; the budget allows no failure.
    let plan = f.plan("p", &serde_json::json!({"patches": [bug], "allow_unsigned": true, "soak_ms": 1500, "parallelism": 2, "failure_budget": 0}));
    let journal = f.dir.join("j.redb");
    let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(3), "halted: {}", said(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("failed the console gate"), "{}", said(&o));
    let steps = steps(&journal);
    let tripped: Vec<String> = (0..4).map(Fleet::name).filter(|n| steps.iter().any(|s| &s.target == n && s.op == Op::Gate && s.result.as_deref() == Some("console"))).collect();
    assert!(!tripped.is_empty(), "a console gate failed");
    for n in &tripped {
        assert_eq!(outcome(&steps, n), Some("reverted"), "{n}");
    }
    for i in 0..4 {
        let n = Fleet::name(i);
        assert!(f.registry(i).is_empty(), "{n}: the wave is reverted");
        assert!(count(&steps, &n, Op::Apply, "ok") <= 1, "{n} applied at most once");
        assert_eq!(count(&steps, &n, Op::Apply, "ok"), count(&steps, &n, Op::Revert, "ok"), "{n}: every apply reverted");
        if count(&steps, &n, Op::Apply, "ok") == 1 {
            assert!(f.vms[i].get_json("/vm")["console"]["bug"].as_u64().unwrap() >= 1, "{n}'s console counted the BUG line");
        }
    }
    // Two at a time with no budget: the other two never started.
    assert!((0..4).filter(|i| steps.iter().any(|s| s.target == Fleet::name(*i))).count() <= 2 + 1, "halted before the rest");
    let halting = steps.iter().find(|s| s.op == Op::State && s.result.as_deref().is_some_and(|r| r.starts_with("halting"))).unwrap();
    let halted = steps.iter().find(|s| s.op == Op::State && s.result.as_deref() == Some("halted")).unwrap();
    let gate = steps.iter().find(|s| s.op == Op::Gate && s.result.as_deref() == Some("console")).unwrap();
    eprintln!("fleet_console_gate: failed gate to halted in {} ms (halting recorded after {} ms)", halted.time_ms - gate.time_ms, halting.time_ms - gate.time_ms);
}

#[test]
fn a_failed_probe_reverts_one_target_within_the_budget() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_probe_gate") {
        return;
    }
    let f = Fleet::boot("probe", 3, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let inv = f.inventory(&[]);
    let probe = ["sh", "-c", r#"test "$VSPLICE_TARGET" != vm2 && test -S "$VSPLICE_API_SOCK""#];
    let plan = f.plan("p", &serde_json::json!({"patches": [patch], "allow_unsigned": true, "canary": {"count": 1}, "parallelism": 2, "failure_budget": 1, "gates": {"probe": probe}}));
    let journal = f.dir.join("j.redb");
    let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    let steps = steps(&journal);
    assert_eq!((outcome(&steps, "vm0"), outcome(&steps, "vm1"), outcome(&steps, "vm2")), (Some("patched"), Some("patched"), Some("reverted")));
    assert_eq!((f.registry(0), f.registry(1), f.registry(2)), (vec!["step_b_v2".to_owned()], vec!["step_b_v2".to_owned()], vec![]));
    assert_eq!(count(&steps, "vm2", Op::Gate, "probe"), 1);
}

//! `vsplice fleet` killed (SIGKILL) right after each of its journal records
//! in turn, then `resume`: every time, each target ends exactly once
//! patched, or (the one whose probe gate fails) applied once and reverted
//! once; the journal has no open step and agrees with every registry.
//! The controller kills itself through the test-only
//! `VSPLICE_FLEET_KILL_AT_STEP` (built with `fault-injection`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;

use vsplice_tests::api::build_example;
use vsplice_tests::fleet::{count, fleet, outcome, said, steps, Fleet, QUIET};
use vsplice_tests::testguest;
use vsplice_vmm::fleet::journal::{open_intents, Op};

#[test]
fn killed_at_every_journal_step_then_resumed_each_target_ends_once() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_resume") {
        return;
    }
    let f = Fleet::boot("resume", 3, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let (inv, plan) = f.resume_plan(&patch);
    let mut kills = 0;
    for k in 1.. {
        assert!(k < 200, "the rollout never ran to its end");
        let journal = f.dir.join(format!("j{k}.redb"));
        let o = fleet(&journal, &["start", "--inventory", &inv, "--plan", &plan], Some(k));
        let killed = o.status.signal() == Some(libc::SIGKILL);
        if killed {
            kills += 1;
            let r = fleet(&journal, &["resume"], None);
            assert!(r.status.success(), "resume after a kill at step {k}: {}", said(&r));
        } else {
            assert!(o.status.success(), "{}", said(&o));
        }
        let steps = steps(&journal);
        assert!(open_intents(&steps).is_empty(), "k={k}: open steps {:?}", open_intents(&steps));
        f.check_resumed(&steps, k);
        // Clean slate for the next kill point.
        let r = fleet(&journal, &["rollback"], None);
        assert!(r.status.success(), "{}", said(&r));
        assert!((0..3).all(|i| f.registry(i).is_empty()));
        if !killed {
            break;
        }
    }
    eprintln!("fleet_resume: killed at each of {kills} journal steps, resumed each time");
    assert!(kills >= 15, "a kill at every step: {kills}");
}

#[test]
fn killed_at_every_step_of_a_halt_then_resumed_the_wave_is_reverted() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_resume_halt") {
        return;
    }
    let f = Fleet::boot("resume-halt", 3, |_| QUIET.to_owned());
    let bug = build_example(&f.dir, "compute_bug.c");
    let inv = f.inventory(&[]);
    // One wave, one at a time, no failure allowed: vm0's BUG line halts the rollout.
    let plan = f.plan("p", &serde_json::json!({"patches": [bug], "allow_unsigned": true, "soak_ms": 1000, "parallelism": 1, "failure_budget": 0}));
    let (inv, plan) = (inv.to_str().unwrap().to_owned(), plan.to_str().unwrap().to_owned());
    let mut kills = 0;
    for k in 1.. {
        assert!(k < 100, "the rollout never ran to its end");
        let journal = f.dir.join(format!("h{k}.redb"));
        let o = fleet(&journal, &["start", "--inventory", &inv, "--plan", &plan], Some(k));
        let killed = o.status.signal() == Some(libc::SIGKILL);
        if killed {
            kills += 1;
            let r = fleet(&journal, &["resume"], None);
            assert_eq!(r.status.code(), Some(3), "resume after a kill at step {k} ends halted: {}", said(&r));
        } else {
            assert_eq!(o.status.code(), Some(3), "{}", said(&o));
        }
        let steps = steps(&journal);
        assert!(open_intents(&steps).is_empty(), "k={k}: open steps");
        assert_eq!(steps.iter().rev().find(|s| s.op == Op::State).and_then(|s| s.result.as_deref()), Some("halted"), "k={k}");
        assert_eq!((count(&steps, "vm0", Op::Apply, "ok"), count(&steps, "vm0", Op::Revert, "ok")), (1, 1), "k={k}: vm0 applied once, reverted once");
        assert_eq!(outcome(&steps, "vm0"), Some("reverted"), "k={k}");
        assert!(steps.iter().all(|s| s.target != "vm1" && s.target != "vm2"), "k={k}: the rest untouched");
        assert!((0..3).all(|i| f.registry(i).is_empty()), "k={k}: nothing left patched");
        if !killed {
            break;
        }
    }
    eprintln!("fleet_resume_halt: killed at each of {kills} journal steps of a halting rollout, resumed each time");
    assert!(kills >= 8, "a kill at every step: {kills}");
}

//! The safety check inside the transaction: a task or a vCPU in the code
//! being replaced makes every pause back off, then `code_busy` with the
//! conflicts named; a task that leaves lets a later pause through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testutil::{config, jump_target, patch, registry, text};
use super::{Cause, Patcher, Stage};
use crate::model::CheckMode;
use crate::testing::FakeKernel;

#[test]
fn a_task_in_the_function_on_every_pause_is_code_busy_naming_it() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let worker = k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_a")]);
    let idle = k.sleeping_task(&mut g, 1, 301, "idle", &[k.ret_into("fake_c")]);
    k.set_tasks(vec![worker, idle]);
    let r = Patcher::new(&mut g, &k, config(3)).apply(&patch("p1", &["fake_a"]));
    assert_eq!((r.cause, r.stage, r.timings.attempts), (Cause::CodeBusy, Stage::Check, 3), "{}", r.to_json());
    assert_eq!(r.conflicts.len(), 1, "{:?}", r.conflicts);
    let c = &r.conflicts[0];
    assert_eq!((c.task.as_deref(), c.task_id, c.kind), (Some("worker"), Some(300), "stack"));
    assert!(c.function.starts_with("fake_a+"), "{}", c.function);
    assert!(r.message.contains("worker in fake_a+"), "{}", r.message);
    // Proven by unwinding, not by scanning.
    let check = r.check.as_ref().unwrap();
    assert_eq!((check.unwound, check.scanned, check.fallbacks.len()), (2, 0, 0), "{check:?}");
    assert_eq!((g.stops, g.resumes, k.task_reads()), (3, 3, 3));
    // Nothing written, nothing recorded.
    assert_eq!(text(&g, &k, "fake_a", 0x40), k.pristine("fake_a"));
    let reg = registry(&mut g).unwrap();
    assert!(reg.patches.is_empty() && reg.intent.is_none(), "{reg:?}");
}

#[test]
fn a_vcpu_running_the_function_is_code_busy_too() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let busy = k.kernel_vcpu(&g, k.addr("fake_b") + 0x8);
    g.vcpus = vec![busy];
    let r = Patcher::new(&mut g, &k, config(2)).apply(&patch("p1", &["fake_b"]));
    assert_eq!(r.cause, Cause::CodeBusy, "{}", r.to_json());
    let c = &r.conflicts[0];
    assert_eq!((c.kind, c.vcpu, c.function.as_str()), ("rip", Some(0), "fake_b+0x8"));
}

#[test]
fn the_conservative_check_finds_the_same_task() {
    let k = FakeKernel::new().without_unwinder();
    let mut g = k.guest();
    let worker = k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_a")]);
    k.set_tasks(vec![worker]);
    let mut cfg = config(2);
    cfg.check = CheckMode::Conservative;
    let r = Patcher::new(&mut g, &k, cfg).apply(&patch("p1", &["fake_a"]));
    assert_eq!(r.cause, Cause::CodeBusy, "{}", r.to_json());
    assert_eq!((r.conflicts[0].task_id, r.check.as_ref().unwrap().scanned), (Some(300), 1));
}

#[test]
fn a_task_that_leaves_the_function_lets_a_later_pause_through() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let inside = k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_a")]);
    let outside = k.sleeping_task(&mut g, 1, 300, "worker", &[k.ret_into("fake_c")]);
    k.script_tasks(vec![vec![inside.clone()], vec![inside], vec![outside]]);
    let r = Patcher::new(&mut g, &k, config(5)).apply(&patch("p1", &["fake_a"]));
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!((r.timings.attempts, g.stops, g.resumes), (3, 3, 3));
    assert!(r.conflicts.is_empty());
    let reg = registry(&mut g).unwrap();
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(reg.patches[0].funcs[0].new_addr));
}

/// A task list whose sources disagree the way a fork or exit in flight
/// does (the agent's table vs the walk) is retried: once a later pause
/// agrees, the patch goes in; nothing is written while they disagree.
#[test]
fn a_dispute_that_clears_is_retried_then_applied() {
    use crate::model::DISPUTE_PAUSES;
    let k = FakeKernel::new();
    let mut g = k.guest();
    let forking = vec![0xffff_8880_0100_0000];
    let mut script = vec![Some(forking); DISPUTE_PAUSES as usize - 1];
    script.push(None);
    k.script_disputes(script);
    let r = Patcher::new(&mut g, &k, config(20)).apply(&patch("p1", &["fake_a"]));
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!((r.timings.attempts, g.stops, g.resumes), (DISPUTE_PAUSES, DISPUTE_PAUSES as usize, DISPUTE_PAUSES as usize));
    let reg = registry(&mut g).unwrap();
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(reg.patches[0].funcs[0].new_addr));
}

/// The same task disputed at every pause is no fork in flight: refused
/// with the target's cause (`agent_mismatch`) after DISPUTE_PAUSES
/// pauses, however many attempts are left; the text untouched.
#[test]
fn the_same_task_disputed_at_every_pause_is_refused_agent_mismatch() {
    use crate::model::DISPUTE_PAUSES;
    let k = FakeKernel::new();
    let mut g = k.guest();
    k.script_disputes(vec![Some(vec![0x1000, 0x2000]); 40]);
    let r = Patcher::new(&mut g, &k, config(20)).apply(&patch("p1", &["fake_a"]));
    assert_eq!((r.cause, r.reason.as_deref(), r.stage), (Cause::Unexpected, Some("agent_mismatch"), Stage::Check), "{}", r.to_json());
    assert_eq!((r.timings.attempts, g.stops, g.resumes), (DISPUTE_PAUSES, DISPUTE_PAUSES as usize, DISPUTE_PAUSES as usize));
    assert!(r.message.contains("disputed at"), "{}", r.message);
    assert_eq!(text(&g, &k, "fake_a", 0x40), k.pristine("fake_a"));
    let reg = registry(&mut g).unwrap();
    assert!(reg.patches.is_empty() && reg.intent.is_none(), "{reg:?}");
}

/// A different task in flight at every pause (a fork storm) never makes a
/// persistent dispute: the attempts run out as `code_busy`
/// (`tasks_inconsistent`), not `agent_mismatch`.
#[test]
fn a_fork_storm_runs_out_of_attempts_as_code_busy() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    k.script_disputes((0..30u64).map(|i| Some(vec![0x1000 + i])).collect());
    let r = Patcher::new(&mut g, &k, config(8)).apply(&patch("p1", &["fake_a"]));
    assert_eq!((r.cause, r.reason.as_deref(), r.timings.attempts), (Cause::CodeBusy, Some("tasks_inconsistent"), 8), "{}", r.to_json());
    assert_eq!(text(&g, &k, "fake_a", 0x40), k.pristine("fake_a"));
}

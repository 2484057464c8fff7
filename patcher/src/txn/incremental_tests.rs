//! The incremental check inside the transaction: tasks run between the
//! pre-check (guest running) and the pause, one into the function being
//! replaced; the incremental check must reach the full check's verdict, and
//! `compare` must refuse when the two differ.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testutil::{config, patch, registry, text};
use super::{Cause, Patcher, Stage, TxnConfig, TxnReport};
use crate::model::{CheckMode, Incremental, TaskEvidence, TaskInfo};
use crate::testing::kernel::START_KERNEL_MAP;
use crate::testing::{FakeKernel, RamGuest};

/// `t` with the scheduler's evidence: `switches` voluntary switches so far.
fn seen(t: TaskInfo, switches: u64) -> TaskInfo {
    let sp = t.saved_sp.unwrap();
    let evidence = TaskEvidence { addr: 0xffff_8880_0400_0000 + t.id * 0x1000, start_time: 1000 + t.id, nvcsw: switches, nivcsw: 3, sp };
    TaskInfo { evidence: Some(evidence), ..t }
}

/// The stack bytes of `t` as the guest holds them now.
fn stack_of(g: &RamGuest, t: &TaskInfo) -> Vec<u8> {
    g.bytes(t.stack.start - START_KERNEL_MAP, (t.stack.end - t.stack.start) as usize)
}

fn cfg(attempts: u32, mode: Incremental) -> TxnConfig {
    let mut c = config(attempts);
    c.incremental = mode;
    c
}

/// The worker (slot 0) sleeps in `fake_c` at the pre-check; in the window
/// before the stop it runs into `fake_a` and sleeps there (its stack
/// rewritten, one more switch, a new saved SP). `idle` (slot 1) sleeps in
/// `fake_c` throughout. Returns the report and the guest.
fn worker_enters_fake_a(mode: Incremental, attempts: u32, honest: bool) -> (TxnReport, RamGuest) {
    worker_enters_fake_a_on(FakeKernel::new(), CheckMode::default(), mode, attempts, honest)
}

/// [`worker_enters_fake_a`] on kernel `k` with the safety check `check`.
fn worker_enters_fake_a_on(k: FakeKernel, check: CheckMode, mode: Incremental, attempts: u32, honest: bool) -> (TxnReport, RamGuest) {
    let mut g = k.guest();
    // The state after the window first, to copy its stack bytes.
    let inside = k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_a"), k.ret_into("fake_b")]);
    let inside_bytes = stack_of(&g, &inside);
    let before = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_c")]), 7);
    let idle = seen(k.sleeping_task(&mut g, 1, 301, "idle", &[k.ret_into("fake_c")]), 2);
    // Honest: the scheduler counted the switch. Dishonest: the evidence
    // says the worker did not run although its stack changed (no real
    // kernel does this; `compare` is there to catch any such gap).
    let after = if honest { seen(inside, 8) } else { TaskInfo { saved_sp: before.saved_sp, evidence: before.evidence, ..inside } };
    let base = before.stack.start - START_KERNEL_MAP;
    // Pre-check read, then every read after (pauses and pre-checks) sees `after`.
    k.script_tasks(vec![vec![before, idle.clone()], vec![after, idle]]);
    let mut c = cfg(attempts, mode);
    c.check = check;
    let mut p = Patcher::new(&mut g, &k, c);
    p.set_window(move |attempt| if attempt == 1 { vec![(base, inside_bytes.clone())] } else { Vec::new() });
    let r = p.apply(&patch("p1", &["fake_a"]));
    drop(p);
    (r, g)
}

/// For `on` and `compare`: the run `enter(mode)` (the worker entering
/// `fake_a` in the window, 3 attempts) is refused `code_busy` with the full
/// check's conflicts (the worker in `fake_a`); the worker, which ran (a
/// switch more), is checked again and `idle` reused; no byte written.
fn refused_like_the_full_check(full: &TxnReport, enter: impl Fn(Incremental) -> (TxnReport, RamGuest)) {
    for mode in [Incremental::On, Incremental::Compare] {
        let (r, g) = enter(mode);
        assert_eq!((r.cause, r.stage, r.timings.attempts), (Cause::CodeBusy, Stage::Check, 3), "{mode}: {}", r.to_json());
        assert_eq!(r.conflicts, full.conflicts, "{mode}");
        assert!(r.conflicts.iter().any(|c| c.task_id == Some(300) && c.function.starts_with("fake_a+")), "{:?}", r.conflicts);
        let inc = r.check.as_ref().unwrap().incremental.clone().unwrap();
        assert_eq!((inc.mode, inc.reused, inc.rechecked), (mode, 1, 1), "{inc:?}");
        assert_eq!(text(&g, &FakeKernel::new(), "fake_a", 0x40), FakeKernel::new().pristine("fake_a"));
    }
}

#[test]
fn a_task_entering_the_function_between_pre_check_and_pause_is_code_busy_as_in_the_full_check() {
    let (full, _) = worker_enters_fake_a(Incremental::Off, 3, true);
    assert_eq!((full.cause, full.stage), (Cause::CodeBusy, Stage::Check), "{}", full.to_json());
    assert!(full.check.as_ref().unwrap().incremental.is_none());
    refused_like_the_full_check(&full, |mode| worker_enters_fake_a(mode, 3, true));
}

#[test]
fn tasks_that_did_not_run_keep_their_verdict_and_the_patch_goes_in() {
    for mode in [Incremental::On, Incremental::Compare] {
        let k = FakeKernel::new();
        let mut g = k.guest();
        let a = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_c")]), 7);
        let b = seen(k.sleeping_task(&mut g, 1, 301, "idle", &[k.ret_into("fake_b")]), 2);
        k.set_tasks(vec![a, b]);
        let r = Patcher::new(&mut g, &k, cfg(2, mode)).apply(&patch("p1", &["fake_a"]));
        assert!(r.is_ok(), "{mode}: {}", r.to_json());
        let inc = r.check.as_ref().unwrap().incremental.clone().unwrap();
        assert_eq!((inc.pre_checked, inc.reused, inc.rechecked, inc.note), (2, 2, 0, None), "{mode}");
        assert_eq!(k.task_reads(), 2, "one pre-check read, one pause read");
        assert!(registry(&mut g).unwrap().patches.len() == 1);
    }
}

/// A task in the function at the pre-check keeps no verdict: it is checked
/// under the pause, and once it has left (ran, a switch more), the patch
/// goes in; while it stays, code_busy.
#[test]
fn a_task_in_the_function_at_the_pre_check_is_always_checked_again() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let w = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_a")]), 7);
    k.set_tasks(vec![w]);
    let r = Patcher::new(&mut g, &k, cfg(2, Incremental::On)).apply(&patch("p1", &["fake_a"]));
    assert_eq!(r.cause, Cause::CodeBusy, "{}", r.to_json());
    let inc = r.check.as_ref().unwrap().incremental.clone().unwrap();
    assert_eq!((inc.pre_checked, inc.reused, inc.rechecked), (0, 0, 1), "{inc:?}");
}

/// A kernel-mode vCPU whose RSP is on a task's stack runs that task,
/// whatever the evidence says: never reused.
#[test]
fn a_task_a_vcpu_is_on_is_checked_under_the_pause() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let clean = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_c")]), 7);
    // The pre-check sees the worker clean; under the pause a vCPU is on its stack, in fake_a.
    let sp = clean.saved_sp.unwrap();
    let mut v = k.kernel_vcpu(&g, k.addr("fake_a") + 0x8);
    v.gprs[crate::model::backend::VcpuState::RSP] = sp;
    g.vcpus = vec![v];
    k.set_tasks(vec![clean]);
    let r = Patcher::new(&mut g, &k, cfg(2, Incremental::Compare)).apply(&patch("p1", &["fake_a"]));
    assert_eq!(r.cause, Cause::CodeBusy, "{}", r.to_json());
    assert!(r.conflicts.iter().any(|c| c.kind == "rip" && c.function.starts_with("fake_a+")), "{:?}", r.conflicts);
    let inc = r.check.as_ref().unwrap().incremental.clone().unwrap();
    assert_eq!((inc.pre_checked, inc.reused, inc.rechecked), (1, 0, 1), "{inc:?}");
}

/// The reuse rests on the scheduler's evidence alone: evidence that hides
/// a run (impossible in Linux; the test forges it) makes `on` miss the
/// task, and `compare` is what refuses it, `incremental_mismatch`, with
/// nothing written.
#[test]
fn compare_refuses_when_the_evidence_hides_a_run() {
    let (on, _) = worker_enters_fake_a(Incremental::On, 3, false);
    assert!(on.is_ok(), "forged evidence fools `on`: {}", on.to_json());
    let (r, g) = worker_enters_fake_a(Incremental::Compare, 3, false);
    assert_eq!((r.cause, r.reason.as_deref(), r.stage), (Cause::Unexpected, Some("incremental_mismatch"), Stage::Check), "{}", r.to_json());
    assert!(r.message.contains("only the full check found"), "{}", r.message);
    assert!(r.conflicts.iter().any(|c| c.task_id == Some(300)), "{:?}", r.conflicts);
    assert_eq!(text(&g, &FakeKernel::new(), "fake_a", 0x40), FakeKernel::new().pristine("fake_a"));
    assert_eq!((g.stops, g.resumes), (1, 1));
}

/// No pre-check (the list read with the guest running failed): that pause
/// checks every task and the summary says why.
#[test]
fn no_pre_check_means_the_full_check() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let w = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_c")]), 7);
    k.set_tasks(vec![w]);
    k.script_disputes(vec![Some(vec![0x1000])]);
    let r = Patcher::new(&mut g, &k, cfg(2, Incremental::On)).apply(&patch("p1", &["fake_a"]));
    assert!(r.is_ok(), "{}", r.to_json());
    let inc = r.check.as_ref().unwrap().incremental.clone().unwrap();
    assert_eq!((inc.reused, inc.rechecked), (0, 1), "{inc:?}");
    assert!(inc.note.as_deref().is_some_and(|n| n.contains("no pre-check")), "{inc:?}");
}

/// The test guest's kind of kernel: stacks written by their owners only,
/// the word scan as the check. The scan's verdicts are kept with the guest
/// running, and a task entering the function between the pre-check and
/// the pause is still refused, exactly as the full check refuses it.
#[test]
fn owner_only_stacks_keep_scan_verdicts_and_a_task_entering_the_function_is_still_refused() {
    let owner_only = || FakeKernel::new().without_unwinder().with_owner_only_stacks();
    let (full, _) = worker_enters_fake_a_on(owner_only(), CheckMode::Conservative, Incremental::Off, 3, true);
    assert_eq!((full.cause, full.stage), (Cause::CodeBusy, Stage::Check), "{}", full.to_json());
    refused_like_the_full_check(&full, |mode| worker_enters_fake_a_on(owner_only(), CheckMode::Conservative, mode, 3, true));
    // Forged evidence (a run the counters hide) fools `on` here too; `compare` refuses.
    let (r, _) = worker_enters_fake_a_on(owner_only(), CheckMode::Conservative, Incremental::Compare, 3, false);
    assert_eq!(r.reason.as_deref(), Some("incremental_mismatch"), "{}", r.to_json());
}

/// Scan verdicts are kept only where the kernel says its stacks are its
/// tasks' own: the same guest without that keeps none.
#[test]
fn scan_verdicts_are_kept_only_on_owner_only_stacks() {
    for (owner_only, kept) in [(true, 2), (false, 0)] {
        let k = if owner_only { FakeKernel::new().with_owner_only_stacks() } else { FakeKernel::new() }.without_unwinder();
        let mut g = k.guest();
        let a = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_c")]), 7);
        let b = seen(k.sleeping_task(&mut g, 1, 301, "idle", &[k.ret_into("fake_b")]), 2);
        k.set_tasks(vec![a, b]);
        let mut c = cfg(2, Incremental::Compare);
        c.check = CheckMode::Conservative;
        let r = Patcher::new(&mut g, &k, c).apply(&patch("p1", &["fake_a"]));
        assert!(r.is_ok(), "{}", r.to_json());
        let inc = r.check.as_ref().unwrap().incremental.clone().unwrap();
        assert_eq!((inc.pre_checked, inc.reused, inc.rechecked), (kept, kept, 2 - kept), "owner_only={owner_only}");
    }
}

/// A kind that says which positions changed since the pre-check's read
/// (the test guest's change ring): told the truth, the pause reads and
/// checks only those and reaches the full check's verdict; the worker that
/// entered `fake_a` in the window is refused as before.
#[test]
fn a_kind_naming_what_changed_reaches_the_full_checks_verdict() {
    let (full, _) = worker_enters_fake_a(Incremental::Off, 3, true);
    let named = |mode| {
        let k = FakeKernel::new();
        // Every pause's read names the worker (position 0) changed.
        k.script_changed(vec![Some(vec![0]); 3]);
        worker_enters_fake_a_on(k, CheckMode::default(), mode, 3, true)
    };
    refused_like_the_full_check(&full, named);
    let (r, _) = named(Incremental::On);
    assert_eq!(r.check.unwrap().incremental.unwrap().records_read, Some(1));
}

/// A ring that hides a change: the list built from it still holds the
/// worker as the pre-check read it, clean in `fake_c`, while the guest has
/// it in `fake_a`. `on` trusts the kind (fooled, like forged evidence);
/// `compare` reads the whole list too, finds it differs and refuses
/// `incremental_mismatch`, nothing written.
#[test]
fn compare_refuses_a_ring_that_hides_a_change() {
    let run = |mode| {
        let k = FakeKernel::new();
        let mut g = k.guest();
        let inside = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_a"), k.ret_into("fake_b")]), 8);
        let inside_bytes = stack_of(&g, &inside);
        let before = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_c")]), 7);
        let base = before.stack.start - START_KERNEL_MAP;
        // Pre-check, the pause's ring-built list (stale: nothing named), then every whole read.
        k.script_tasks(vec![vec![before.clone()], vec![before], vec![inside]]);
        k.script_changed(vec![Some(Vec::new())]);
        let mut p = Patcher::new(&mut g, &k, cfg(1, mode));
        p.set_window(move |attempt| if attempt == 1 { vec![(base, inside_bytes.clone())] } else { Vec::new() });
        let r = p.apply(&patch("p1", &["fake_a"]));
        drop(p);
        (r, g)
    };
    let (on, _) = run(Incremental::On);
    assert!(on.is_ok(), "a lying ring fools `on`: {}", on.to_json());
    let (r, g) = run(Incremental::Compare);
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::Unexpected, Some("incremental_mismatch")), "{}", r.to_json());
    assert!(r.message.contains("differs from a whole read"), "{}", r.message);
    assert_eq!(text(&g, &FakeKernel::new(), "fake_a", 0x40), FakeKernel::new().pristine("fake_a"));
}

/// With `on`, a kind that cannot take its cheap re-read may send the guest
/// back to run while attempts remain (`retry`), and must read everything on
/// the last; `compare` never lets it (both paths stay compared).
#[test]
fn a_busy_guest_is_resumed_and_retried_with_on_and_read_whole_on_the_last_attempt() {
    for (mode, want) in [(Incremental::On, vec![true, true, false]), (Incremental::Compare, vec![false])] {
        let k = FakeKernel::new();
        let mut g = k.guest();
        let a = seen(k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_c")]), 7);
        k.set_tasks(vec![a]);
        k.busy_when_retry();
        let r = Patcher::new(&mut g, &k, cfg(3, mode)).apply(&patch("p1", &["fake_a"]));
        assert!(r.is_ok(), "{mode}: {}", r.to_json());
        assert_eq!(k.retries(), want, "{mode}");
        assert_eq!(r.timings.attempts as usize, want.len(), "{mode}: {}", r.to_json());
    }
}

//! Live patching the test guest under the vsplice VMM (KVM), end to end:
//! apply/revert under timer preemption, 1,000 cycles, code_busy, no_match,
//! bad patches (each with its own cause), stacking and out-of-order revert,
//! cumulative replace, new global data, calls to a static target function,
//! and crash safety of the registry/intent logic (a "process" that dies after
//! each write, then recovery by a fresh patcher).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use vsplice_patcher::txn::Cause;
use vsplice_tests::livepatch::{self, value_orig, value_step_b_v2};
use vsplice_tests::testguest::{self, Capture, TgLine};

const WAIT: Duration = Duration::from_secs(120);

/// Per task: lines in order; checks no line lost and that each value is
/// either `old(iter)` or `new(iter)`, switching at most once (old -> new).
fn check_switch(lines: &[TgLine], old: impl Fn(u64) -> u64, new: impl Fn(u64) -> u64) -> BTreeMap<(u64, u64), Option<u64>> {
    let mut per: BTreeMap<(u64, u64), Vec<&TgLine>> = BTreeMap::new();
    for l in lines {
        per.entry((l.cpu, l.task)).or_default().push(l);
    }
    let mut switched = BTreeMap::new();
    for (k, ls) in per {
        let mut first_new = None;
        for w in ls.windows(2) {
            assert_eq!(w[1].iter, w[0].iter + 1, "task {k:?}: line lost or repeated: {:?} then {:?}", w[0], w[1]);
        }
        for l in ls {
            let is_old = l.value == old(l.iter);
            let is_new = l.value == new(l.iter);
            assert!(is_old || is_new, "task {k:?}: value {:#x} at iter {} is neither old nor new", l.value, l.iter);
            if is_new && first_new.is_none() {
                first_new = Some(l.iter);
            }
            if first_new.is_some() {
                assert!(is_new, "task {k:?}: old value after the switch at iter {}", l.iter);
            }
        }
        switched.insert(k, first_new);
    }
    switched
}

/// Waits until every task printed a line after `mark` that satisfies `pred`.
fn wait_every_task(out: &Capture, mark: usize, tasks: usize, pred: impl Fn(&TgLine) -> bool) {
    let ok = out.wait_for(WAIT, |text| {
        let lines = testguest::parse_all(&text[mark.min(text.len())..]).unwrap_or_default();
        let seen: std::collections::BTreeSet<(u64, u64)> = lines.iter().filter(|l| pred(l)).map(|l| (l.cpu, l.task)).collect();
        seen.len() >= tasks
    });
    assert!(ok, "not every task printed the expected value:\n{}", &out.text()[mark.min(out.text().len())..]);
}

#[test]
fn apply_under_preemption_switches_every_task_and_revert_switches_back() {
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_apply_revert") {
        return;
    }
    let patch = livepatch::build_example("step_b_v2.c");
    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=3 tg.wait=1 tg.work=20");
    livepatch::wait_tasks(&out, 2, 3, 2);
    let mut p = livepatch::patcher(&mut vmm, &target);
    let r = p.apply(&patch);
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!(r.timings.attempts.max(1), r.timings.attempts);
    assert!(r.timings.downtime_us > 0 && r.timings.downtime_us >= r.timings.write_us);
    let mark = out.text().len();
    wait_every_task(&out, mark, 6, |l| l.value == value_step_b_v2(l.iter));
    let status = p.status().unwrap();
    assert_eq!(status.patches.len(), 1);
    assert!(status.patches[0].funcs.iter().all(|f| f.active));
    let before_revert = out.text().len();
    let r = p.revert(&patch.manifest.id);
    assert!(r.is_ok(), "{}", r.to_json());
    let mark2 = out.text().len();
    wait_every_task(&out, mark2, 6, |l| l.value == value_orig(l.iter));
    let lines = testguest::parse_all(&out.text()).expect("no torn line");
    // Up to the revert: old then new, never anything else, no line lost.
    let upto = testguest::parse_all(&out.text()[..before_revert]).unwrap();
    let switched = check_switch(&upto, value_orig, value_step_b_v2);
    assert!(switched.values().all(Option::is_some), "a task never switched: {switched:?}");
    assert!(lines.len() > upto.len());
    assert!(p.status().unwrap().patches.is_empty());
    drop(p);
    assert!(vmm.exit_status().is_none(), "guest died: {:?}\n{}", vmm.exit_status(), out.text());
    assert!(!out.text().contains("TG panic"), "{}", out.text());
    vmm.shutdown();
}

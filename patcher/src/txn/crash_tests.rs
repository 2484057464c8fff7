//! Crash safety: the process dies after each guest-memory write of an apply
//! or a revert in turn, and a fresh patcher (a new process: new target, only
//! the guest shared) reads the status and recovers; the text is then fully
//! patched or fully original, as the registry says, never half of each. A
//! site write that fails once, without the process dying, is put back at
//! once and the transaction rolled back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use super::recover::TextState;
use super::testutil::{jump_target, patch, patcher, registry, site_bytes, text};
use super::Cause;
use crate::arena::registry::PatchState;
use crate::patch::PatchFile;
use crate::testing::{FakeKernel, Faulty, RamGuest};

const FUNCS: [&str; 2] = ["fake_a", "fake_b"];

/// Recovers with a new process and checks all-or-nothing; returns whether
/// the patch is applied, and notes what the text said before recovery.
fn recover_and_check(g: &mut RamGuest, p: &PatchFile, seen: &mut BTreeSet<String>, step: &str) -> bool {
    let k = FakeKernel::new();
    let st = patcher(&mut *g, &k).status().unwrap_or_else(|f| panic!("{step}: status: {}", f.message));
    if let Some(i) = &st.intent {
        seen.insert(format!("{:?}:{:?}", i.op, i.text));
    }
    let r = patcher(&mut *g, &k).recover();
    assert!(r.is_ok(), "{step}: {}", r.to_json());
    let reg = registry(g);
    assert!(reg.as_ref().is_none_or(|r| r.intent.is_none()), "{step}: intent left after recovery");
    let rec = reg.as_ref().and_then(|r| r.patch(&p.manifest.id).cloned());
    let applied = rec.as_ref().is_some_and(|r| r.state == PatchState::Applied);
    for f in FUNCS {
        if applied {
            let new = rec.as_ref().unwrap().funcs.iter().find(|x| x.name == f).unwrap().new_addr;
            assert_eq!(jump_target(g, &k, f), Some(new), "{step}: {f} not patched although the registry says applied");
        } else {
            assert_eq!(text(g, &k, f, 0x40), k.pristine(f), "{step}: {f} not original although the registry says not applied");
        }
    }
    // A recovered guest takes the next transaction.
    assert!(patcher(&mut *g, &k).status().unwrap().intent.is_none());
    applied
}

fn writes_of(g: &RamGuest, k: &FakeKernel, op: impl Fn(&mut Faulty<&mut RamGuest>, &FakeKernel) -> bool) -> usize {
    let mut g = g.clone();
    let mut f = Faulty::new(&mut g);
    assert!(op(&mut f, k));
    f.writes
}

#[test]
fn a_process_killed_after_any_write_leaves_a_state_the_next_one_completes_or_rolls_back() {
    let k = FakeKernel::new();
    let p = patch("two_sites", &FUNCS);
    let fresh = k.guest();
    let apply = |f: &mut Faulty<&mut RamGuest>, k: &FakeKernel| patcher(f, k).apply(&p).is_ok();
    let revert = |f: &mut Faulty<&mut RamGuest>, k: &FakeKernel| patcher(f, k).revert("two_sites").is_ok();
    let mut seen = BTreeSet::new();
    // Apply, killed after 0, 1, 2, ... writes.
    let total = writes_of(&fresh, &k, apply);
    assert!(total >= 7, "code, intent (2), arena mapping, two sites, commit (2): {total}");
    let mut outcomes = BTreeSet::new();
    for n in 0..total {
        let mut g = fresh.clone();
        let mut f = Faulty::new(&mut g).die_after_writes(n);
        let r = patcher(&mut f, &k).apply(&p);
        assert!(!r.is_ok() && f.is_dead(), "apply killed after {n} writes: {}", r.to_json());
        outcomes.insert(recover_and_check(&mut g, &p, &mut seen, &format!("apply killed after {n} writes")));
    }
    assert_eq!(outcomes, BTreeSet::from([false, true]), "some deaths roll back, some complete");
    // Revert, killed after each write in turn.
    let mut applied = fresh.clone();
    assert!(patcher(&mut applied, &k).apply(&p).is_ok());
    let total = writes_of(&applied, &k, revert);
    assert!(total >= 5, "intent (2), two sites, commit (2): {total}");
    for n in 0..total {
        let mut g = applied.clone();
        let mut f = Faulty::new(&mut g).die_after_writes(n);
        let r = patcher(&mut f, &k).revert("two_sites");
        assert!(!r.is_ok() && f.is_dead(), "revert killed after {n} writes: {}", r.to_json());
        recover_and_check(&mut g, &p, &mut seen, &format!("revert killed after {n} writes"));
    }
    for want in ["Apply:NotStarted", "Apply:Partial", "Apply:Complete", "Revert:NotStarted", "Revert:Partial", "Revert:Complete"] {
        assert!(seen.contains(want), "never saw {want}: {seen:?}");
    }
}

#[test]
fn a_site_write_that_fails_once_is_rolled_back_at_once() {
    let k = FakeKernel::new();
    let p = patch("two_sites", &FUNCS);
    let fresh = k.guest();
    let mut put_back = 0;
    for n in 0.. {
        let mut g = fresh.clone();
        let mut f = Faulty::new(&mut g).fail_once_after(n);
        let r = patcher(&mut f, &k).apply(&p);
        if r.is_ok() {
            break;
        }
        if r.reason.as_deref() == Some("write_failed") {
            // No recovery needed: the text is original and the registry says so.
            put_back += 1;
            assert_eq!(r.cause, Cause::Unexpected);
            for func in FUNCS {
                assert_eq!(text(&g, &k, func, 0x40), k.pristine(func), "failed after {n} writes: {func}");
            }
            let reg = registry(&mut g).unwrap();
            assert!(reg.intent.is_none() && reg.patches.is_empty(), "{reg:?}");
        }
        let mut seen = BTreeSet::new();
        recover_and_check(&mut g, &p, &mut seen, &format!("write failed after {n} writes"));
    }
    assert_eq!(put_back, 2, "a failure at either site write");
}

#[test]
fn sites_holding_bytes_no_transaction_wrote_are_left_alone() {
    let k = FakeKernel::new();
    let p = patch("two_sites", &FUNCS);
    let fresh = k.guest();
    // Find a death that leaves the first site written and the second not.
    let partial = (0..16)
        .find_map(|n| {
            let mut g = fresh.clone();
            let mut f = Faulty::new(&mut g).die_after_writes(n);
            patcher(&mut f, &k).apply(&p);
            let st = patcher(&mut g, &k).status().unwrap();
            (st.intent.map(|i| i.text) == Some(TextState::Partial)).then_some(g)
        })
        .expect("some death leaves a half-written text");
    let mut g = partial;
    // Something else writes the first site meanwhile.
    let at = super::testutil::site(&k, "fake_a") - crate::testing::kernel::START_KERNEL_MAP;
    g.put(at, &[0xcc; 5]);
    let st = patcher(&mut g, &k).status().unwrap();
    assert_eq!(st.intent.map(|i| i.text), Some(TextState::Foreign));
    let r = patcher(&mut g, &k).recover();
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::Unexpected, Some("text_changed")), "{}", r.to_json());
    assert_eq!(&site_bytes(&g, &k, "fake_a")[..5], &[0xcc; 5], "nothing written");
    // And no new transaction starts over it.
    let r = patcher(&mut g, &k).apply(&patch("other", &["fake_c"]));
    assert_eq!(r.cause, Cause::Unexpected, "{}", r.to_json());
}

#[test]
fn torn_bytes_are_told_apart_from_foreign_ones() {
    use super::recover::torn_at;
    let (a, b) = ([1u8, 2, 3, 4, 5], [9u8, 8, 7, 6, 5]);
    assert_eq!(torn_at(&[1, 2, 7, 6, 5], &a, &b), Some(2));
    assert_eq!(torn_at(&[1, 8, 7, 6, 5], &a, &b), Some(1));
    assert_eq!(torn_at(&a, &a, &b), None, "whole is not torn");
    assert_eq!(torn_at(&b, &a, &b), None);
    assert_eq!(torn_at(&[9, 2, 7, 6, 5], &a, &b), None, "b first is the other direction");
    assert_eq!(torn_at(&[1, 2, 0, 6, 5], &a, &b), None, "a foreign byte");
    assert_eq!(torn_at(&[1, 2, 3], &a, &b), None, "wrong length");
}

/// A death between the two writes of a jump site that crosses a 4 KiB page
/// leaves the site torn: its first bytes new, the rest old (or, for a
/// revert, the other way round). The fake kernel's sites lie inside one
/// page, so the tear is put there by hand, at every split, at the point
/// where the intent is saved and no site is written yet; the status is
/// `partial` (the guest is kept stopped), and recovery puts the site back.
#[test]
fn a_torn_site_is_recovered_not_treated_as_foreign() {
    let k = FakeKernel::new();
    let p = patch("two_sites", &FUNCS);
    let fresh = k.guest();
    let mut applied = fresh.clone();
    assert!(patcher(&mut applied, &k).apply(&p).is_ok());
    let apply = |f: &mut Faulty<&mut RamGuest>, k: &FakeKernel| patcher(f, k).apply(&p).is_ok();
    let revert = |f: &mut Faulty<&mut RamGuest>, k: &FakeKernel| patcher(f, k).revert("two_sites").is_ok();
    let mut tears = 0;
    for (start, op) in [(&fresh, &apply as &dyn Fn(&mut Faulty<&mut RamGuest>, &FakeKernel) -> bool), (&applied, &revert)] {
        // The last death with the intent saved and no site written.
        let n = (0..writes_of(start, &k, op))
            .filter(|&n| {
                let mut g = start.clone();
                op(&mut Faulty::new(&mut g).die_after_writes(n), &k);
                patcher(&mut g, &k).status().unwrap().intent.is_some_and(|i| i.text == TextState::NotStarted)
            })
            .last()
            .expect("a death after the intent is saved");
        let mut dead = start.clone();
        op(&mut Faulty::new(&mut dead).die_after_writes(n), &k);
        let w = registry(&mut dead).unwrap().intent.unwrap().writes[0].clone();
        for split in 1..w.after.len() {
            let mut g = dead.clone();
            let torn: Vec<u8> = w.after[..split].iter().chain(&w.before[split..]).copied().collect();
            g.put(w.addr - crate::testing::kernel::START_KERNEL_MAP, &torn);
            let st = patcher(&mut g, &k).status().unwrap();
            assert_eq!(st.intent.map(|i| i.text), Some(TextState::Partial), "split {split}");
            let mut seen = BTreeSet::new();
            recover_and_check(&mut g, &p, &mut seen, &format!("site torn after {split} bytes"));
            let now = g.bytes(w.addr - crate::testing::kernel::START_KERNEL_MAP, w.before.len());
            assert_eq!(now, w.before, "the torn site is back to its before bytes");
            tears += 1;
        }
    }
    assert!(tears >= 8, "{tears}");
}

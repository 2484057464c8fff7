//! The registry is the only state, patches' ORC included: a new process
//! (a new target, nothing in its memory) unwinds through the code of a
//! patch an earlier process applied, with the rows the registry keeps,
//! instead of falling back to the word scan; rows that do not fit the
//! registry are dropped, newest first, and their stacks are scanned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::orc::fit_rows;
use super::testutil::{patch, patcher, registry};
use super::Cause;
use crate::arena::patch_orc::{PatchOrc, MAX_ROWS};
use crate::arena::registry::Registry;
use crate::testing::patch::RET_OFFSET;
use crate::testing::{FakeKernel, FakePatch};

#[test]
fn a_new_process_unwinds_through_patch_code_with_the_registrys_orc() {
    let first = FakeKernel::new();
    let mut g = first.guest();
    let p1 = patch("p1", &["fake_b"]);
    assert!(patcher(&mut g, &first).apply(&p1).is_ok());
    let reg = registry(&mut g).unwrap();
    let rec = reg.patch(&p1.manifest.id).unwrap();
    assert_eq!(rec.orc.as_ref().map(PatchOrc::len), Some(1), "the patch's ORC row is in the registry");
    let new_b = rec.funcs[0].new_addr;
    drop(first);
    // A new process: a new target whose unwinder knows only the kernel, the same guest.
    let k = FakeKernel::new();
    let worker = k.sleeping_task(&mut g, 0, 300, "worker", &[new_b + RET_OFFSET]);
    k.set_tasks(vec![worker]);
    let r = patcher(&mut g, &k).apply(&patch("p2", &["fake_c"]));
    assert!(r.is_ok(), "{}", r.to_json());
    let check = r.check.unwrap();
    assert_eq!((check.unwound, check.scanned), (1, 0), "{check:?}");
    assert!(check.fallbacks.is_empty(), "{:?}", check.fallbacks);
    // Reverting p1 is busy: the unwind proves the task returns into p1's code.
    let r = patcher(&mut g, &k).revert("p1");
    assert_eq!(r.cause, Cause::CodeBusy, "{}", r.to_json());
    assert_eq!(r.conflicts[0].function, format!("patch p1+{:#x}", RET_OFFSET - 1), "a frame (return address - 1), not a scanned word");
    assert!(r.check.unwrap().fallbacks.is_empty());
}

#[test]
fn a_patch_without_orc_is_scanned_and_says_why() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let p1 = FakePatch::new("p1").replace("fake_b").without_orc().build(&k).unwrap();
    assert!(patcher(&mut g, &k).apply(&p1).is_ok());
    let reg = registry(&mut g).unwrap();
    let rec = reg.patch(&p1.manifest.id).unwrap();
    assert_eq!(rec.orc, None);
    let worker = k.sleeping_task(&mut g, 0, 300, "worker", &[rec.funcs[0].new_addr + RET_OFFSET]);
    k.set_tasks(vec![worker]);
    let r = patcher(&mut g, &k).apply(&patch("p2", &["fake_c"]));
    assert!(r.is_ok(), "{}", r.to_json());
    let check = r.check.unwrap();
    assert_eq!((check.unwound, check.scanned), (0, 1));
    assert!(check.fallbacks[0].reason.contains("outside kernel text"), "{:?}", check.fallbacks);
    // The scan still finds the task in p1's code.
    let r = patcher(&mut g, &k).revert("p1");
    assert_eq!((r.cause, r.conflicts[0].function.as_str()), (Cause::CodeBusy, "patch p1+0x5"), "{}", r.to_json());
}

#[test]
fn rows_that_do_not_fit_the_registry_are_dropped_newest_first() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    for (i, f) in ["fake_a", "fake_b"].iter().enumerate() {
        assert!(patcher(&mut g, &k).apply(&patch(&format!("p{i}"), &[f])).is_ok());
    }
    let mut reg: Registry = registry(&mut g).unwrap();
    assert!(fit_rows(&mut reg).is_empty(), "two small patches fit");
    // Pretend every patch has the most rows a patch keeps, and there are many.
    let full = PatchOrc::encode(reg.patches[0].code.range(), &vec![(reg.patches[0].code.start, [0u8; 6]); MAX_ROWS]).unwrap();
    let template = reg.patches[0].clone();
    reg.patches.clear();
    for i in 0..8 {
        let mut p = template.clone();
        p.name = format!("big{i}");
        p.orc = Some(full.clone());
        reg.patches.push(p);
    }
    let notes = fit_rows(&mut reg);
    assert!(!notes.is_empty() && notes.len() < 8, "{notes:?}");
    assert!(notes[0].contains("big7") && notes[0].contains(&MAX_ROWS.to_string()), "{notes:?}");
    assert!(crate::arena::codec::encode(&reg, 1).is_ok());
    assert!(reg.patches[0].orc.is_some() && reg.patches[7].orc.is_none());
}

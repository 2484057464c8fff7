//! Apply and revert on a fake kernel whose page tables have 5 levels
//! (CR4.LA57): the arena is found and mapped from the PML5 root, the jump
//! lands in it, and a target that walks the wrong number of levels fails
//! with a named cause instead of writing anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testutil::{jump_target, patch, patcher, registry, text};
use super::Cause;
use crate::arch::x86::paging::{PageWalker, PagingMode};
use crate::testing::FakeKernel;

#[test]
fn apply_and_revert_with_five_level_paging() {
    let k = FakeKernel::new().with_paging(PagingMode::FiveLevel);
    let mut g = k.guest();
    assert_eq!(g.vcpus[0].cr4 & g.cr4(), g.cr4());
    let pristine = text(&g, &k, "fake_a", 0x40);
    let r = patcher(&mut g, &k).apply(&patch("p1", &["fake_a"]));
    assert!(r.is_ok(), "{}", r.to_json());
    let reg = registry(&mut g).unwrap();
    let new = reg.patches[0].funcs[0].new_addr;
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(new));
    // The replacement is reachable through the guest's own 5-level walk,
    // in the arena's code slots.
    let mut w = PageWalker::new(g.root(), g.cr4());
    let m = w.translate(&mut g, new).unwrap();
    assert_eq!(m.phys(new), reg.arena.phys_of(new).unwrap());
    assert!(!m.writable && !m.nx);
    let r = patcher(&mut g, &k).revert("p1");
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!(text(&g, &k, "fake_a", 0x40), pristine);
}

#[test]
fn a_target_that_walks_the_wrong_number_of_levels_writes_nothing() {
    // The guest has 5 levels, the target says 4 (vsplice before LA57 support).
    let five = FakeKernel::new().with_paging(PagingMode::FiveLevel);
    let four = FakeKernel::new();
    let mut g = five.guest();
    let r = patcher(&mut g, &four).apply(&patch("p1", &["fake_a"]));
    // The 4-level walk of the PML5 finds no page directory for the window.
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::ArenaFull, Some("no_free_slots")), "{}", r.to_json());
    assert_eq!(g.writes, 0, "{}", r.to_json());
}

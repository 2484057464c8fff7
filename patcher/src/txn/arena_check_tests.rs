//! The arena check on the fake kernel: an arena the kernel's memory map
//! calls RAM (or does not reserve) is refused `arena_in_use` by apply,
//! revert and recover before anything is written; a reserved one applies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testutil::{patch, patcher, registry, text};
use super::{Cause, Stage};
use crate::model::ram::{RamKind, RamMap, RamSource};
use crate::testing::kernel::{arena, RAM};
use crate::testing::FakeKernel;

/// An e820-like map: RAM everywhere but `reserved`.
fn map(reserved: Option<std::ops::Range<u64>>) -> RamMap {
    let mut ranges = Vec::new();
    match reserved {
        Some(r) => {
            ranges.push((0..r.start, RamKind::Usable));
            ranges.push((r.clone(), RamKind::Reserved));
            ranges.push((r.end..RAM, RamKind::Usable));
        }
        None => ranges.push((0..RAM, RamKind::Usable)),
    }
    RamMap { sources: vec![RamSource { name: "e820_table", complete: true, ranges }], unread: Vec::new() }
}

fn arena_range() -> std::ops::Range<u64> {
    arena().phys()..arena().phys() + arena().size()
}

#[test]
fn an_arena_in_ram_is_refused_before_any_write() {
    let k = FakeKernel::new().with_ram_map(map(None));
    let mut g = k.guest();
    let (writes, stops) = (g.writes, g.stops);
    let before = text(&g, &k, "fake_a", 0x40);
    let r = patcher(&mut g, &k).apply(&patch("p1", &["fake_a"]));
    assert_eq!((r.cause, r.stage, r.reason.as_deref()), (Cause::ArenaInUse, Stage::Prepare, Some("arena_in_ram")), "{}", r.to_json());
    assert!(r.message.contains("0x4000000"), "{}", r.message);
    assert_eq!((g.writes, g.stops), (writes, stops), "nothing written, nothing stopped");
    assert_eq!(text(&g, &k, "fake_a", 0x40), before);
    assert!(registry(&mut g).is_none());
}

#[test]
fn a_reserved_arena_applies() {
    let k = FakeKernel::new().with_ram_map(map(Some(arena_range())));
    let mut g = k.guest();
    let r = patcher(&mut g, &k).apply(&patch("p1", &["fake_a"]));
    assert!(r.is_ok(), "{}", r.to_json());
    assert!(r.notes.iter().all(|n| !n.contains("arena checked")), "{:?}", r.notes);
}

#[test]
fn an_arena_reserved_only_in_part_is_refused() {
    let a = arena_range();
    let k = FakeKernel::new().with_ram_map(map(Some(a.start..a.end - 0x1000)));
    let mut g = k.guest();
    let r = patcher(&mut g, &k).apply(&patch("p1", &["fake_a"]));
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::ArenaInUse, Some("arena_in_ram")));
}

#[test]
fn revert_and_recover_are_refused_too() {
    let good = FakeKernel::new().with_ram_map(map(Some(arena_range())));
    let mut g = good.guest();
    assert!(patcher(&mut g, &good).apply(&patch("p1", &["fake_a"])).is_ok());
    let applied = text(&g, &good, "fake_a", 0x40);
    // The same guest, its kernel now calling the arena RAM.
    let bad = FakeKernel::new().with_ram_map(map(None));
    let writes = g.writes;
    let r = patcher(&mut g, &bad).revert("p1");
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::ArenaInUse, Some("arena_in_ram")), "{}", r.to_json());
    let r = patcher(&mut g, &bad).recover();
    assert_eq!((r.cause, r.stage), (Cause::ArenaInUse, Stage::Recover), "{}", r.to_json());
    assert_eq!(g.writes, writes);
    assert_eq!(text(&g, &bad, "fake_a", 0x40), applied);
    assert!(patcher(&mut g, &good).revert("p1").is_ok());
}

#[test]
fn an_unreadable_map_is_refused_and_a_half_read_one_noted() {
    let k = FakeKernel::new().with_ram_map(RamMap { sources: Vec::new(), unread: vec!["e820_table: no BTF".into()] });
    let mut g = k.guest();
    let r = patcher(&mut g, &k).apply(&patch("p1", &["fake_a"]));
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::ArenaInUse, Some("ram_map_unreadable")));
    let mut m = map(Some(arena_range()));
    m.unread.push("iomem_resource: a cycle".into());
    let k = FakeKernel::new().with_ram_map(m);
    let r = patcher(&mut g, &k).apply(&patch("p1", &["fake_a"]));
    assert!(r.is_ok(), "{}", r.to_json());
    assert!(r.notes.iter().any(|n| n.contains("arena checked without iomem_resource")), "{:?}", r.notes);
}

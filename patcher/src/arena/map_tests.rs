//! The arena mapping on [`RamGuest`] page tables of both paging modes: the
//! kernel's page directory is found from a PML4 or a PML5 root, the PDEs
//! written there translate (through [`PageWalker`] in the guest's mode) to
//! the arena, and tables that are missing, hostile or walked in the wrong
//! mode give a named error, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::map::{self, MapError};
use super::{ArenaInfo, SLOT};
use crate::arch::x86::paging::{PageWalker, PagingMode};
use crate::model::ArenaRange;
use crate::testing::RamGuest;

const TEXT: u64 = 0xffff_ffff_8100_0000;
const END: u64 = 0xffff_ffff_8140_0000;
const WINDOW_END: u64 = 0xffff_ffff_c000_0000;
const ARENA_PHYS: u64 = 0x400_0000;

/// A guest whose kernel image (2 MiB pages at [`TEXT`]) is mapped in `mode`.
fn guest(mode: PagingMode) -> RamGuest {
    let mut g = RamGuest::new(128 << 20).with_paging(mode);
    g.map_2m(TEXT, TEXT - 0xffff_ffff_8000_0000, END - TEXT);
    g
}

fn info(virt: u64) -> ArenaInfo {
    ArenaInfo::new(ArenaRange::new(ARENA_PHYS, 4 << 20).unwrap(), virt)
}

/// Finds free slots after `_end`, maps the arena, and checks it through a
/// page walk in `mode`; returns the guest and the arena.
fn mapped(mode: PagingMode) -> (RamGuest, ArenaInfo) {
    let mut g = guest(mode);
    let root = g.root();
    let virt = map::find_free(&mut g, root, mode, END..WINDOW_END, 2).unwrap();
    assert_eq!(virt, END, "the first free slots follow the image");
    let a = info(virt);
    assert!(!map::is_mapped(&mut g, root, mode, &a).unwrap());
    assert_eq!(map::map(&mut g, root, mode, &a, true).unwrap(), 2);
    assert!(map::is_mapped(&mut g, root, mode, &a).unwrap());
    assert_eq!(map::map(&mut g, root, mode, &a, true).unwrap(), 0, "mapping again writes nothing");
    (g, a)
}

#[test]
fn the_arena_is_mapped_from_a_four_level_root() {
    let (mut g, a) = mapped(PagingMode::FourLevel);
    let mut w = PageWalker::new(g.root(), 0);
    let data = w.translate(&mut g, a.virt + 0x123).unwrap();
    assert_eq!((data.phys(a.virt + 0x123), data.size, data.writable, data.nx), (ARENA_PHYS + 0x123, SLOT, true, true));
    let code = w.translate(&mut g, a.virt + SLOT).unwrap();
    assert_eq!((code.paddr, code.writable, code.nx), (ARENA_PHYS + SLOT, false, false));
}

#[test]
fn the_arena_is_mapped_from_a_five_level_root() {
    let mode = PagingMode::FiveLevel;
    let (mut g, a) = mapped(mode);
    let mut w = PageWalker::new(g.root(), g.cr4());
    assert_eq!(w.levels(), 5);
    let data = w.translate(&mut g, a.virt + 0x123).unwrap();
    assert_eq!((data.phys(a.virt + 0x123), data.size, data.writable, data.nx), (ARENA_PHYS + 0x123, SLOT, true, true));
    let code = w.translate(&mut g, a.virt + SLOT + 8).unwrap();
    assert_eq!((code.phys(a.virt + SLOT + 8), code.writable, code.nx), (ARENA_PHYS + SLOT + 8, false, false));
    // The PDEs went into the page directory that maps the image (the one
    // the 5-level walk reaches), next to the image's own entries.
    let root = g.root();
    let pd = map::page_directory(&mut g, root, mode, TEXT).unwrap();
    assert_eq!(pd, map::page_directory(&mut g, root, mode, a.virt).unwrap());
    assert_eq!(g.u64_at(pd + PagingMode::index(a.virt, 2) * 8) & !0xfff & ((1 << 52) - 1), ARENA_PHYS);
    // The root holds exactly one entry: the PML5 slot of the kernel half.
    let used: Vec<u64> = (0..512).filter(|i| g.u64_at(g.root() + i * 8) & 1 != 0).collect();
    assert_eq!(used, vec![PagingMode::index(TEXT, 5)]);
}

#[test]
fn a_five_level_root_walked_as_four_levels_is_not_the_kernel_directory() {
    // What vsplice did before it read CR4.LA57: the PML5 taken for a PML4.
    let mut g = guest(PagingMode::FiveLevel);
    let root = g.root();
    let right = map::page_directory(&mut g, root, PagingMode::FiveLevel, TEXT).unwrap();
    match map::page_directory(&mut g, root, PagingMode::FourLevel, TEXT) {
        Ok(pd) => assert_ne!(pd, right),
        Err(e) => assert!(matches!(e, MapError::NoDirectory { .. } | MapError::Backend(_)), "{e}"),
    }
}

#[test]
fn missing_upper_levels_are_named() {
    for (mode, why) in [(PagingMode::FourLevel, "PML4 entry not present"), (PagingMode::FiveLevel, "PML5 entry not present")] {
        let mut g = RamGuest::new(16 << 20).with_paging(mode);
        let root = g.root();
        match map::page_directory(&mut g, root, mode, END) {
            Err(MapError::NoDirectory { why: w, .. }) => assert_eq!(w, why, "{mode:?}"),
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(!map::is_mapped(&mut g, root, mode, &info(END)).unwrap());
        assert!(matches!(map::map(&mut g, root, mode, &info(END), true), Err(MapError::NoDirectory { .. })));
    }
    // A PML5 entry present but its PML4 entry not.
    let mut g = RamGuest::new(16 << 20).with_paging(PagingMode::FiveLevel);
    let p4 = 0x10_0000;
    g.set_entry(g.root(), PagingMode::index(END, 5), p4 | 3);
    let root = g.root();
    match map::page_directory(&mut g, root, PagingMode::FiveLevel, END) {
        Err(MapError::NoDirectory { why, .. }) => assert_eq!(why, "PML4 entry not present"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn addresses_outside_the_mode_are_refused() {
    // Canonical with 57 bits, not with 48.
    let va = 0xff11_0000_0000_0000u64;
    let mut g = guest(PagingMode::FourLevel);
    let root = g.root();
    match map::page_directory(&mut g, root, PagingMode::FourLevel, va) {
        Err(MapError::NoDirectory { why, .. }) => assert!(why.contains("canonical"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Not canonical in either mode.
    match map::page_directory(&mut g, root, PagingMode::FiveLevel, 0x0100_0000_0000_0000) {
        Err(MapError::NoDirectory { why, .. }) => assert!(why.contains("canonical"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_upper_tables_give_errors_not_panics() {
    // A PML5 entry pointing past the end of guest RAM, and one pointing
    // at a 1 GiB page at the PDPT level.
    let mut g = RamGuest::new(16 << 20).with_paging(PagingMode::FiveLevel);
    g.set_entry(g.root(), PagingMode::index(END, 5), 0xf_ffff_ffff_f000 | 3);
    let root = g.root();
    assert!(matches!(map::page_directory(&mut g, root, PagingMode::FiveLevel, END), Err(MapError::Backend(_))));
    assert!(map::find_free(&mut g, root, PagingMode::FiveLevel, END..WINDOW_END, 2).is_err());

    let mut g = RamGuest::new(16 << 20).with_paging(PagingMode::FiveLevel);
    let (p4, p3) = (0x10_0000, 0x10_1000);
    g.set_entry(g.root(), PagingMode::index(END, 5), p4 | 3);
    g.set_entry(p4, PagingMode::index(END, 4), p3 | 3);
    g.set_entry(p3, PagingMode::index(END, 3), 0x83);
    let root = g.root();
    match map::page_directory(&mut g, root, PagingMode::FiveLevel, END) {
        Err(MapError::NoDirectory { why, .. }) => assert_eq!(why, "mapped by a 1 GiB page"),
        other => panic!("{other:?}"),
    }
    // A table that points at itself at every level ends after five reads.
    let mut g = RamGuest::new(16 << 20).with_paging(PagingMode::FiveLevel);
    let root = g.root();
    for i in 0..512 {
        g.set_entry(root, i, root | 3);
    }
    let before = g.reads;
    assert_eq!(map::page_directory(&mut g, root, PagingMode::FiveLevel, END).unwrap(), root);
    assert_eq!(g.reads - before, 3, "PML5, PML4, PDPT: one read each");
}

#[test]
fn occupied_slots_are_skipped_in_both_modes() {
    for mode in [PagingMode::FourLevel, PagingMode::FiveLevel] {
        let mut g = guest(mode);
        // Something already mapped in the first slot after the image.
        g.map_2m(END, 0x200_0000, SLOT);
        let root = g.root();
        assert_eq!(map::find_free(&mut g, root, mode, END..WINDOW_END, 2).unwrap(), END + SLOT, "{mode:?}");
        // The arena placed over it is refused.
        assert!(matches!(map::map(&mut g, root, mode, &info(END), true), Err(MapError::NoFreeSlots { .. })), "{mode:?}");
    }
}

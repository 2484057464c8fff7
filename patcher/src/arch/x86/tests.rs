//! Page walks and the virtual reader on synthetic page tables in a guest
//! in host RAM ([`RamGuest`], tables written entry by entry).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::paging::{PageWalker, CR4_LA57};
use super::vmem::VirtMem;
use crate::model::mem::KernelMemory;
use crate::testing::RamGuest;

fn idx(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * (level - 1))) & 511
}

/// Builds tables at fixed physical pages: returns the guest.
/// Layout (4-level): PML4 @0x1000, PDPT @0x2000, PD @0x3000, PT @0x4000.
/// - 0xffffffff81000000: 2 MiB page -> phys 0x200000 (NX clear, RW)
/// - 0xffffffff81200000 + 0..: 4 KiB pages -> phys 0x400000.. (two pages, non-contiguous)
/// - 0xffff888000000000: 1 GiB page -> phys 0 (RW, NX) (only the first MBs exist)
fn build4() -> RamGuest {
    let mut g = RamGuest::new(0x80_0000);
    let (pml4, pdpt, pd, pt, pdpt2) = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000);
    let k = 0xffff_ffff_8100_0000u64;
    g.set_entry(pml4, idx(k, 4), pdpt | 3);
    g.set_entry(pdpt, idx(k, 3), pd | 3);
    g.set_entry(pd, idx(k, 2), 0x20_0000 | 0x83);
    g.set_entry(pd, idx(k + 0x20_0000, 2), pt | 3);
    g.set_entry(pt, 0, 0x40_0000 | 3 | (1 << 63));
    g.set_entry(pt, 1, 0x60_0000 | 3);
    let d = 0xffff_8880_0000_0000u64;
    g.set_entry(pml4, idx(d, 4), pdpt2 | 3);
    g.set_entry(pdpt2, idx(d, 3), 0x83 | (1 << 63));
    let pattern: Vec<u8> = (0..0x20_0000).map(|i| (i % 253) as u8).collect();
    g.put(0x20_0000, &pattern);
    g.put(0x40_0ff0, b"ABCDEFGHIJKLMNOP");
    g.put(0x60_0000, b"QRSTUVWXYZ012345");
    g
}

#[test]
fn four_level_translations() {
    let mut g = build4();
    let mut w = PageWalker::new(0x1000 | 0x5 /* PCID bits */, 0);
    let m = w.translate(&mut g, 0xffff_ffff_8112_3456).unwrap();
    assert_eq!((m.size, m.phys(0xffff_ffff_8112_3456), m.nx, m.writable), (0x20_0000, 0x32_3456, false, true));
    let m = w.translate(&mut g, 0xffff_ffff_8120_0010).unwrap();
    assert_eq!((m.size, m.paddr, m.nx), (0x1000, 0x40_0000, true));
    let m = w.translate(&mut g, 0xffff_8880_0012_3000).unwrap();
    assert_eq!((m.size, m.phys(0xffff_8880_0012_3000)), (1 << 30, 0x12_3000));
    assert_eq!(w.translate(&mut g, 0xffff_ffff_8120_2000).unwrap_err().cause(), "not_mapped");
    assert_eq!(w.translate(&mut g, 0x0000_8000_0000_0000).unwrap_err().cause(), "non_canonical");
    // Tables are cached: translating again reads nothing more.
    let before = g.reads;
    w.translate(&mut g, 0xffff_ffff_8100_0000).unwrap();
    assert_eq!(g.reads, before);
}

#[test]
fn walk_range_lists_mappings_in_order() {
    let mut g = build4();
    let mut w = PageWalker::new(0x1000, 0);
    let mut seen = vec![];
    w.walk_range(&mut g, 0xffff_ffff_8000_0000, u64::MAX, &mut |m| {
        seen.push((m.vaddr, m.size, m.nx));
        true
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (0xffff_ffff_8100_0000, 0x20_0000, false),
            (0xffff_ffff_8120_0000, 0x1000, true),
            (0xffff_ffff_8120_1000, 0x1000, false)
        ]
    );
    let mut all = 0;
    w.walk_range(&mut g, 0, u64::MAX, &mut |_| {
        all += 1;
        true
    })
    .unwrap();
    assert_eq!(all, 4);
}

#[test]
fn five_level_walk() {
    let mut g = RamGuest::new(0x40_0000);
    let (pml5, pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000);
    let va = 0xff11_2233_4455_6000u64; // canonical for 57 bits
    g.set_entry(pml5, idx(va, 5), pml4 | 3);
    g.set_entry(pml4, idx(va, 4), pdpt | 3);
    g.set_entry(pdpt, idx(va, 3), pd | 3);
    g.set_entry(pd, idx(va, 2), pt | 3);
    g.set_entry(pt, idx(va, 1), 0x30_0000 | 3);
    let mut w = PageWalker::new(pml5, CR4_LA57);
    assert_eq!(w.levels(), 5);
    assert_eq!(w.translate(&mut g, va + 0x123).unwrap().phys(va + 0x123), 0x30_0123);
    // In 4-level mode the same address is not canonical.
    let mut w4 = PageWalker::new(pml5, 0);
    assert_eq!(w4.translate(&mut g, va).unwrap_err().cause(), "non_canonical");
    let mut n = 0;
    w.walk_range(&mut g, 0, u64::MAX, &mut |m| {
        assert_eq!(m.vaddr, va);
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn virtual_reads_cross_pages_and_page_sizes() {
    let g = build4();
    let mut vm = VirtMem::new(g, 0x1000, 0);
    // Across the 4 KiB boundary between two non-contiguous physical pages.
    let mut b = [0u8; 32];
    vm.read(0xffff_ffff_8120_0ff0, &mut b).unwrap();
    assert_eq!(&b, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345");
    // A large read inside the 2 MiB page is one physical read.
    let before = vm.backend().reads;
    let mut big = vec![0u8; 0x10_0000];
    vm.read(0xffff_ffff_8100_0100, &mut big).unwrap();
    assert_eq!(vm.backend().reads - before, 1);
    assert!(big.iter().enumerate().all(|(i, &v)| v == ((i + 0x100) % 253) as u8));
    // Large read across 2 MiB -> 4 KiB pages: stops at the first unmapped page.
    let mut big = vec![0u8; 0x20_0000 + 0x3000];
    assert_eq!(vm.read(0xffff_ffff_8100_0000, &mut big).unwrap_err().cause(), "not_mapped");
    assert_eq!(vm.read_u64(0xffff_8880_0020_0008).unwrap(), u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]));
}

#[test]
fn paging_mode_from_cr4_and_canonical_addresses() {
    use super::paging::PagingMode;
    assert_eq!(PagingMode::from_cr4(0x6f0), PagingMode::FourLevel);
    assert_eq!(PagingMode::from_cr4(0x6f0 | CR4_LA57), PagingMode::FiveLevel);
    assert_eq!((PagingMode::FourLevel.levels(), PagingMode::FiveLevel.levels()), (4, 5));
    assert_eq!(PagingMode::FiveLevel.cr4_bits(), CR4_LA57);
    assert_eq!(PagingMode::FourLevel.cr4_bits(), 0);
    let (four, five) = (PagingMode::FourLevel, PagingMode::FiveLevel);
    // Each mode's direct-map base (before KASLR) and the kernel image.
    for va in [0xffff_8880_0000_0000u64, 0xffff_ffff_8100_0000, 0x0000_7fff_ffff_f000, 0] {
        assert!(four.is_canonical(va) && five.is_canonical(va), "{va:#x}");
    }
    for va in [0xff11_0000_0000_0000u64, 0xffa0_0000_0000_0000, 0x00ff_ffff_ffff_f000] {
        assert!(!four.is_canonical(va) && five.is_canonical(va), "{va:#x}");
    }
    for va in [0x0100_0000_0000_0000u64, 0xfe00_0000_0000_0000, 0x8000_0000_0000_0000] {
        assert!(!four.is_canonical(va) && !five.is_canonical(va), "{va:#x}");
    }
    assert_eq!(PagingMode::index(0xff11_0000_0000_0000, 5), 0x111);
    assert_eq!(PagingMode::index(0xffff_ffff_8100_0000, 4), 511);
    assert_eq!(PagingMode::index(0xffff_ffff_8100_0000, 2), 8);
}

#[test]
fn a_ram_guest_with_five_levels_maps_and_reads_through_them() {
    use super::paging::PagingMode;
    let mut g = RamGuest::new(0x80_0000).with_paging(PagingMode::FiveLevel);
    assert_eq!(g.cr4(), CR4_LA57);
    // A direct-map address that only 5-level paging has, and the kernel image.
    let dm = 0xff11_0000_0010_0000u64;
    g.map_4k(dm, 0x1_0000, 0x2000);
    g.map_2m(0xffff_ffff_8100_0000, 0x20_0000, 0x20_0000);
    g.put(0x1_0ff8, b"lowhigh!");
    g.put(0x20_0010, b"text");
    let mut b = [0u8; 8];
    g.read(dm + 0xff8, &mut b).unwrap();
    assert_eq!(&b, b"lowhigh!");
    let mut t = [0u8; 4];
    g.read(0xffff_ffff_8100_0010, &mut t).unwrap();
    assert_eq!(&t, b"text");
    let mut w = PageWalker::new(g.root(), g.cr4());
    assert_eq!(w.translate(&mut g, dm + 0x1000).unwrap().paddr, 0x1_1000);
    // Walked as 4 levels, the same tables do not give the same answer.
    let mut w4 = PageWalker::new(g.root(), 0);
    assert_eq!(w4.translate(&mut g, dm).unwrap_err().cause(), "non_canonical");
    assert_ne!(w4.translate(&mut g, 0xffff_ffff_8100_0010).map(|m| m.phys(0xffff_ffff_8100_0010)).ok(), Some(0x20_0010));
}

#[test]
fn a_page_table_loop_is_a_named_refusal_not_a_hang() {
    // Every PML4 entry points back at the PML4 itself: the walk sees the
    // same table at every level, and the range looks endlessly mapped.
    let mut g = RamGuest::new(0x40_0000);
    let pml4 = 0x1000u64;
    for i in 0..512 {
        g.set_entry(pml4, i, pml4 | 3);
    }
    let writes = g.writes;
    let mut w = PageWalker::new(pml4, 0);
    let mut n = 0u64;
    let e = w
        .walk_range(&mut g, 0, u64::MAX, &mut |_| {
            n += 1;
            true
        })
        .unwrap_err();
    assert_eq!(e.cause(), "page_walk_too_long", "{e}");
    assert!(n > 0 && n <= super::paging::MAX_WALK_STEPS, "{n}");
    // Translation stays a fixed number of steps: the loop's last level is a leaf.
    assert!(w.translate(&mut g, 0xffff_ffff_8100_0000).is_ok());
    assert_eq!(g.writes, writes, "a walk never writes");
}

#[test]
fn a_read_larger_than_any_kernel_structure_is_refused_before_allocating() {
    let mut vm = VirtMem::new(build4(), 0x1000, 0);
    let e = vm.read_vec(0xffff_ffff_8100_0000, usize::MAX / 2).unwrap_err();
    assert_eq!(e.cause(), "read_too_large", "{e}");
    // At the bound's edge the read is attempted (and fails on the mapping).
    let e = vm.read_vec(0xffff_ffff_8100_0000, crate::model::mem::MAX_READ_VEC).unwrap_err();
    assert_ne!(e.cause(), "read_too_large", "{e}");
}

/// Issue 11: a guest pointer translated into device memory or a hole is
/// refused `not_ram` before the backend reads there: a 2 MiB page onto the
/// LAPIC, a page table in the device window, a page outside the kernel's
/// memory map once it is known; and a page beyond guest memory, which the
/// backend refuses itself, is the same `not_ram`.
#[test]
fn translations_into_device_memory_or_holes_are_refused_not_ram() {
    use crate::model::phys_filter::PhysFilter;
    use crate::model::ram::{RamKind, RamMap, RamSource};
    let k = 0xffff_ffff_8100_0000u64;
    let mut g = build4();
    let (pd, pt2) = (0x3000, 0x6000);
    g.set_entry(pd, idx(k + 0x40_0000, 2), 0xfee0_0000 | 0x83); // a 2 MiB page onto the LAPIC
    g.set_entry(pd, idx(k + 0x60_0000, 2), 0xfec0_0000 | 3); // a page table in the IOAPIC page
    g.set_entry(pd, idx(k + 0x80_0000, 2), pt2 | 3);
    g.set_entry(pt2, 0, 0x7_0000_0000 | 3); // beyond guest memory
    g.set_entry(pt2, 1, 0x50_0000 | 3); // RAM, but outside the map below
    let mut vm = VirtMem::new(g, 0x1000, 0);
    let mut b = [0u8; 16];
    for va in [k + 0x40_0000, k + 0x40_0ff8, k + 0x60_0000, k + 0x80_0000] {
        let e = vm.read(va, &mut b).unwrap_err();
        assert_eq!(e.cause(), "not_ram", "{va:#x}: {e}");
    }
    let e = vm.read_vec(k + 0x40_0000, 0x3000).unwrap_err();
    assert_eq!(e.cause(), "not_ram", "a large read: {e}");
    assert!(vm.read(k + 0x80_1000, &mut b).is_ok(), "no map known yet: only the device window");
    let map = RamMap {
        sources: vec![RamSource { name: "e820_table", complete: true, ranges: vec![(0..0x40_0000, RamKind::Usable), (0x60_0000..0x80_0000, RamKind::Reserved)] }],
        unread: Vec::new(),
    };
    vm.set_filter(PhysFilter::from_map(&map, &[]).unwrap());
    vm.flush();
    assert_eq!(vm.read(k + 0x80_1000, &mut b).unwrap_err().cause(), "not_ram", "a hole of the map");
    assert!(vm.read(k, &mut b).is_ok(), "RAM of the map");
    assert!(vm.read(k + 0x20_0000 + 0x1000, &mut b).is_ok(), "reserved memory of the map (0x600000)");
}

//! The memory-map readers on fixtures: a BTF blob with 6.1's layouts of
//! `struct e820_table`, `struct e820_entry` (packed, 20 bytes) and
//! `struct resource`, and guest memory as one buffer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use super::btf::Btf;
use super::ram::{read_e820, read_iomem, RamError, MAX_RESOURCES};
use super::testutil::BtfBuilder;
use crate::model::mem::BufferMemory;
use crate::model::ram::{check_arena, RamKind, RamMap};

const BASE: u64 = 0xffff_8880_0000_0000;
const ENTRIES: u32 = 8;
const RES_SIZE: u64 = 64;

fn btf() -> Btf {
    let mut b = BtfBuilder::new();
    let u32t = b.int("unsigned int", 4);
    let u64t = b.int("long long unsigned int", 8);
    let ulong = b.int("long unsigned int", 8);
    let ch = b.int("char", 1);
    let entry = b.composite("e820_entry", false, 20, &[("addr", u64t, 0, 0), ("size", u64t, 64, 0), ("type", u32t, 128, 0)]);
    let arr = b.array(entry, u32t, ENTRIES);
    b.composite("e820_table", false, 4 + 20 * ENTRIES, &[("nr_entries", u32t, 0, 0), ("entries", arr, 32, 0)]);
    let res_id = b.next_id() + 2;
    let resp = b.ptr(res_id);
    let chp = b.ptr(ch);
    let res = b.composite(
        "resource",
        false,
        RES_SIZE as u32,
        &[
            ("start", u64t, 0, 0),
            ("end", u64t, 64, 0),
            ("name", chp, 128, 0),
            ("flags", ulong, 192, 0),
            ("desc", ulong, 256, 0),
            ("parent", resp, 320, 0),
            ("sibling", resp, 384, 0),
            ("child", resp, 448, 0),
        ],
    );
    assert_eq!(res, res_id);
    Btf::parse(&b.blob()).unwrap()
}

fn mem() -> BufferMemory {
    BufferMemory { base: BASE, data: vec![0; 0x4000] }
}

fn put(m: &mut BufferMemory, at: u64, bytes: &[u8]) {
    let o = (at - BASE) as usize;
    m.data[o..o + bytes.len()].copy_from_slice(bytes);
}

/// `e820_table` (the pointer) at BASE, the table at BASE + 0x100.
fn with_e820(m: &mut BufferMemory, entries: &[(u64, u64, u32)], nr: u32) {
    put(m, BASE, &(BASE + 0x100).to_le_bytes());
    put(m, BASE + 0x100, &nr.to_le_bytes());
    for (i, &(a, s, t)) in entries.iter().enumerate() {
        let at = BASE + 0x104 + 20 * i as u64;
        put(m, at, &a.to_le_bytes());
        put(m, at + 8, &s.to_le_bytes());
        put(m, at + 16, &t.to_le_bytes());
    }
}

/// One `struct resource` at `at`.
fn res(m: &mut BufferMemory, at: u64, start: u64, end: u64, flags: u64, desc: u64, sibling: u64, child: u64) {
    put(m, at, &start.to_le_bytes());
    put(m, at + 8, &end.to_le_bytes());
    put(m, at + 24, &flags.to_le_bytes());
    put(m, at + 32, &desc.to_le_bytes());
    put(m, at + 48, &sibling.to_le_bytes());
    put(m, at + 56, &child.to_le_bytes());
}

const SYSRAM: u64 = 0x0100_0200;
const ROOT: u64 = BASE + 0x1000;

/// /proc/iomem of a 512 MiB guest booted with `memmap=4M$0x1c000000`:
/// System RAM, Reserved (the arena), System RAM (with Kernel code inside).
fn with_iomem(m: &mut BufferMemory) {
    let (a, b, c, k) = (ROOT + 0x40, ROOT + 0x80, ROOT + 0xc0, ROOT + 0x100);
    res(m, ROOT, 0, u64::MAX, 0x200, 0, 0, a);
    res(m, a, 0x10_0000, 0x1bff_ffff, SYSRAM, 0, b, k);
    res(m, b, 0x1c00_0000, 0x1c3f_ffff, 0x8000_0200, 7, c, 0);
    res(m, c, 0x1c40_0000, 0x1ffd_ffff, SYSRAM, 0, 0, 0);
    res(m, k, 0x100_0000, 0x1ff_ffff, 0x8000_0200, 0, 0, 0);
}

fn debian_e820(m: &mut BufferMemory) {
    let e = [(0, 0x9fc00, 1), (0x9fc00, 0x60400, 2), (0x10_0000, 0x1bf0_0000, 1), (0x1c00_0000, 0x40_0000, 2), (0x1c40_0000, 0x3be_0000, 1), (0x1ffe_0000, 0x2_0000, 2)];
    with_e820(m, &e, e.len() as u32);
}

#[test]
fn e820_is_read_with_its_btf_layout() {
    let mut m = mem();
    debian_e820(&mut m);
    let s = read_e820(&mut m, &btf(), BASE).unwrap();
    assert!(s.complete);
    assert_eq!(s.ranges.len(), 6);
    assert_eq!(s.ranges[3], (0x1c00_0000..0x1c40_0000, RamKind::Reserved));
    assert_eq!(s.ranges[4], (0x1c40_0000..0x2000_0000 - 0x2_0000, RamKind::Usable));
}

#[test]
fn e820_counts_over_the_array_bound_are_refused() {
    let mut m = mem();
    with_e820(&mut m, &[(0, 0x1000, 1)], ENTRIES + 1);
    let e = read_e820(&mut m, &btf(), BASE).unwrap_err();
    assert_eq!(e.cause(), "ram_map_malformed");
    with_e820(&mut m, &[(0, 0x1000, 1)], u32::MAX);
    assert_eq!(read_e820(&mut m, &btf(), BASE).unwrap_err().cause(), "ram_map_malformed");
    with_e820(&mut m, &[], 0);
    assert_eq!(read_e820(&mut m, &btf(), BASE).unwrap_err().cause(), "ram_map_malformed");
}

#[test]
fn e820_entries_that_wrap_are_refused() {
    let mut m = mem();
    with_e820(&mut m, &[(u64::MAX - 10, 0x1000, 1)], 1);
    assert!(matches!(read_e820(&mut m, &btf(), BASE), Err(RamError::Malformed { .. })));
}

#[test]
fn e820_behind_a_wild_pointer_is_a_memory_error() {
    let mut m = mem();
    put(&mut m, BASE, &0xdead_0000_0000u64.to_le_bytes());
    assert_eq!(read_e820(&mut m, &btf(), BASE).unwrap_err().cause(), "not_in_image");
}

#[test]
fn iomem_lists_system_ram_and_reserved_without_descending_into_ram() {
    let mut m = mem();
    with_iomem(&mut m);
    let s = read_iomem(&mut m, &btf(), ROOT).unwrap();
    assert!(!s.complete);
    let mut r = s.ranges.clone();
    r.sort_by_key(|(r, _)| r.start);
    assert_eq!(
        r,
        vec![
            (0x10_0000..0x1c00_0000, RamKind::Usable),
            (0x1c00_0000..0x1c40_0000, RamKind::Reserved),
            (0x1c40_0000..0x1ffe_0000, RamKind::Usable),
        ]
    );
}

#[test]
fn iomem_cycles_and_bad_ranges_are_refused() {
    let mut m = mem();
    with_iomem(&mut m);
    // The last sibling points back at the first.
    put(&mut m, ROOT + 0xc0 + 48, &(ROOT + 0x40).to_le_bytes());
    let e = read_iomem(&mut m, &btf(), ROOT).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    let mut m = mem();
    with_iomem(&mut m);
    put(&mut m, ROOT + 0x80 + 8, &0u64.to_le_bytes());
    assert_eq!(read_iomem(&mut m, &btf(), ROOT).unwrap_err().cause(), "ram_map_malformed");
}

#[test]
fn iomem_walks_are_bounded_in_nodes() {
    // A sibling chain longer than the bound, each node distinct.
    let n = MAX_RESOURCES as u64 + 2;
    let mut m = BufferMemory { base: BASE, data: vec![0; ((n + 2) * RES_SIZE) as usize] };
    let node = |i: u64| BASE + RES_SIZE * (i + 1);
    res(&mut m, BASE, 0, u64::MAX, 0x200, 0, 0, node(0));
    for i in 0..n {
        let next = if i + 1 < n { node(i + 1) } else { 0 };
        res(&mut m, node(i), i * 4096, i * 4096 + 4095, 0x200, 0, next, 0);
    }
    let e = read_iomem(&mut m, &btf(), BASE).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
}

#[test]
fn both_sources_together_pass_the_reserved_arena_and_refuse_ram() {
    let mut m = mem();
    debian_e820(&mut m);
    with_iomem(&mut m);
    let b = btf();
    let map = RamMap { sources: vec![read_e820(&mut m, &b, BASE).unwrap(), read_iomem(&mut m, &b, ROOT).unwrap()], unread: Vec::new() };
    assert_eq!(check_arena(&map, 0x1c00_0000..0x1c40_0000), Ok(()));
    // The user's mistake in issue 11: --arena 0x10000000:4M.
    assert_eq!(check_arena(&map, 0x1000_0000..0x1040_0000).unwrap_err().reason(), "arena_in_ram");
}

//! Unit tests of [`super`]: memory maps for several RAM sizes, initrd
//! placement, and the zero page as Linux reads it (raw offsets).

use super::*;
use crate::arch::x86_64::layout::{ARENA_DEFAULT_SIZE, CMDLINE_START, RSDP_START};
use std::mem::offset_of;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn ram(addr: u64, end: u64) -> E820Entry {
    E820Entry {
        addr,
        size: end - addr,
        kind: E820Kind::Ram,
    }
}

fn reserved(addr: u64, end: u64) -> E820Entry {
    E820Entry {
        addr,
        size: end - addr,
        kind: E820Kind::Reserved,
    }
}

#[test]
fn small_guest_map_reserves_the_arena_at_the_top() {
    let (map, arena) = e820_map(256 * MIB, ARENA_DEFAULT_SIZE).unwrap();
    assert_eq!(arena, 252 * MIB..256 * MIB);
    assert_eq!(
        map,
        vec![
            ram(0, 0x9fc00),
            reserved(0x9fc00, 0x10_0000),
            ram(0x10_0000, 252 * MIB),
            reserved(252 * MIB, 256 * MIB),
        ]
    );
}

#[test]
fn large_guest_map_skips_the_mmio_hole() {
    let (map, arena) = e820_map(8 * GIB, 6 * MIB).unwrap();
    let top = RAM_64BIT_START + 5 * GIB;
    assert_eq!(arena, top - 6 * MIB..top);
    assert_eq!(
        map,
        vec![
            ram(0, 0x9fc00),
            reserved(0x9fc00, 0x10_0000),
            ram(0x10_0000, MMIO_GAP_START),
            ram(RAM_64BIT_START, top - 6 * MIB),
            reserved(top - 6 * MIB, top),
        ]
    );
    // Entries are sorted and disjoint.
    for pair in map.windows(2) {
        assert!(pair[0].end() <= pair[1].addr);
    }
}

#[test]
fn arena_falls_back_below_the_hole_when_high_ram_is_too_small() {
    let (map, arena) = e820_map(3 * GIB + 2 * MIB, 4 * MIB).unwrap();
    assert_eq!(arena, MMIO_GAP_START - 4 * MIB..MMIO_GAP_START);
    assert!(map.contains(&reserved(arena.start, arena.end)));
    assert!(map.contains(&ram(RAM_64BIT_START, RAM_64BIT_START + 2 * MIB)));
}

#[test]
fn unaligned_memory_size_drops_the_tail() {
    let (map, arena) = e820_map(100 * MIB + 0x1000, 2 * MIB).unwrap();
    assert_eq!(arena, 98 * MIB..100 * MIB);
    assert_eq!(map.last().unwrap(), &reserved(98 * MIB, 100 * MIB));
}

#[test]
fn map_errors() {
    let cause = |mem, arena| e820_map(mem, arena).unwrap_err().cause();
    assert_eq!(cause(16 * MIB, 2 * MIB), "memory_too_small");
    assert_eq!(cause(256 * MIB, 3 * MIB), "arena_size");
    assert_eq!(cause(256 * MIB, 0), "arena_size");
    assert_eq!(cause(32 * MIB, 18 * MIB), "arena_too_large");
    assert!(e820_map(32 * MIB, 16 * MIB).is_ok());
}

#[test]
fn ram_regions_split_around_the_mmio_hole() {
    assert_eq!(
        guest_ram_regions(512 * MIB),
        vec![(GuestAddress(0), (512 * MIB) as usize)]
    );
    assert_eq!(
        guest_ram_regions(4 * GIB),
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(RAM_64BIT_START), GIB as usize)
        ]
    );
}

#[test]
fn initrd_goes_to_the_top_of_usable_ram() {
    let (map, arena) = e820_map(256 * MIB, ARENA_DEFAULT_SIZE).unwrap();
    let addr = initrd_load_addr(&map, 10 * MIB + 123, u64::MAX).unwrap();
    assert_eq!(addr % 0x1000, 0);
    assert!(addr + 10 * MIB + 123 <= arena.start);
    assert!(arena.start - addr < 10 * MIB + 0x2000);
    // initrd_addr_max is inclusive.
    let addr = initrd_load_addr(&map, 0x1000, 64 * MIB - 1).unwrap();
    assert_eq!(addr, 64 * MIB - 0x1000);
    let addr = initrd_load_addr_above(&map, 0x1000, 200 * MIB, u64::MAX).unwrap();
    assert_eq!(addr, arena.start - 0x1000);
}

#[test]
fn initrd_prefers_high_ram_but_respects_the_limit() {
    let (map, _) = e820_map(6 * GIB, ARENA_DEFAULT_SIZE).unwrap();
    let addr = initrd_load_addr(&map, 32 * MIB, u64::MAX).unwrap();
    assert!(addr > RAM_64BIT_START);
    let addr = initrd_load_addr(&map, 32 * MIB, 0x7fff_ffff).unwrap();
    assert_eq!(addr, 0x8000_0000 - 32 * MIB);
}

#[test]
fn initrd_errors() {
    let (map, _) = e820_map(64 * MIB, ARENA_DEFAULT_SIZE).unwrap();
    let cause = |size, lowest| {
        initrd_load_addr_above(&map, size, lowest, u64::MAX)
            .unwrap_err()
            .cause()
    };
    assert_eq!(cause(64 * MIB, HIMEM_START), "initrd_no_room");
    assert_eq!(cause(8 * MIB, 56 * MIB), "initrd_no_room");
}

#[test]
fn boot_params_field_offsets_linux_reads() {
    assert_eq!(std::mem::size_of::<boot_params>(), 4096);
    assert_eq!(offset_of!(boot_params, acpi_rsdp_addr), 0x070);
    assert_eq!(offset_of!(boot_params, ext_ramdisk_image), 0x0c0);
    assert_eq!(offset_of!(boot_params, ext_cmd_line_ptr), 0x0c8);
    assert_eq!(offset_of!(boot_params, e820_entries), 0x1e8);
    assert_eq!(offset_of!(boot_params, hdr), 0x1f1);
    assert_eq!(offset_of!(boot_params, e820_table), 0x2d0);
    assert_eq!(0x1f1 + offset_of!(setup_header, cmd_line_ptr), 0x228);
    assert_eq!(0x1f1 + offset_of!(setup_header, ramdisk_image), 0x218);
    assert_eq!(0x1f1 + offset_of!(setup_header, type_of_loader), 0x210);
    assert_eq!(0x1f1 + offset_of!(setup_header, boot_flag), 0x1fe);
}

fn zero_page(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    mem.read_slice(&mut page, GuestAddress(ZERO_PAGE_START))
        .unwrap();
    page
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn zero_page_for_an_elf_kernel() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (map, _) = e820_map(6 * GIB, ARENA_DEFAULT_SIZE).unwrap();
    let initrd = (RAM_64BIT_START + 0x1234_5000, 0x1_0000_2000);
    configure_boot_params(
        &mem,
        None,
        CMDLINE_START,
        42,
        Some(initrd),
        &map,
        RSDP_START,
    )
    .unwrap();
    let p = zero_page(&mem);
    assert_eq!(u64_at(&p, 0x070), RSDP_START);
    assert_eq!(u16_at(&p, 0x1fe), 0xaa55);
    assert_eq!(u32_at(&p, 0x202), 0x5372_6448, "HdrS");
    assert_eq!(p[0x210], 0xff, "type_of_loader");
    assert_eq!(u32_at(&p, 0x228), CMDLINE_START as u32);
    assert_eq!(u32_at(&p, 0x0c8), 0, "ext_cmd_line_ptr");
    assert_eq!(u32_at(&p, 0x238), 42, "cmdline_size");
    assert_eq!(u32_at(&p, 0x230), 0x100_0000, "kernel_alignment");
    // initrd split into low and high halves.
    assert_eq!(u32_at(&p, 0x218), 0x1234_5000);
    assert_eq!(u32_at(&p, 0x0c0), 1);
    assert_eq!(u32_at(&p, 0x21c), 0x2000);
    assert_eq!(u32_at(&p, 0x0c4), 1);
    // e820 table.
    assert_eq!(usize::from(p[0x1e8]), map.len());
    for (i, e) in map.iter().enumerate() {
        let off = 0x2d0 + 20 * i;
        assert_eq!(u64_at(&p, off), e.addr);
        assert_eq!(u64_at(&p, off + 8), e.size);
        assert_eq!(u32_at(&p, off + 16), e.kind.as_u32());
    }
    assert_eq!(p[0x1ef], 0, "sentinel stays clear");
}

#[test]
fn zero_page_for_a_bzimage_keeps_its_header() {
    let hdr = setup_header {
        setup_sects: 27,
        boot_flag: 0xaa55,
        header: 0x5372_6448,
        version: 0x20f,
        loadflags: 0x01,
        kernel_alignment: 0x20_0000,
        relocatable_kernel: 1,
        cmdline_size: 2047,
        initrd_addr_max: 0x7fff_ffff,
        init_size: 0x300_0000,
        ..Default::default()
    };
    let (map, _) = e820_map(256 * MIB, ARENA_DEFAULT_SIZE).unwrap();
    let p = build_boot_params(
        Some(hdr),
        CMDLINE_START,
        100,
        Some((0x800_0000, 0x1000)),
        &map,
        0,
    )
    .unwrap();
    let h = p.hdr;
    assert_eq!({ h.setup_sects }, 27);
    assert_eq!({ h.loadflags }, 0x01 | CAN_USE_HEAP);
    assert_eq!({ h.heap_end_ptr }, 0xfe00 - 0x200);
    assert_eq!({ h.kernel_alignment }, 0x20_0000);
    assert_eq!({ h.init_size }, 0x300_0000);
    assert_eq!({ h.cmdline_size }, 2047, "the kernel's own limit is kept");
    assert_eq!({ h.type_of_loader }, 0xff);
    assert_eq!({ h.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!(
        ({ h.ramdisk_image }, { h.ramdisk_size }),
        (0x800_0000, 0x1000)
    );
    assert_eq!({ p.acpi_rsdp_addr }, 0);

    let err = build_boot_params(Some(hdr), CMDLINE_START, 2049, None, &map, 0).unwrap_err();
    assert_eq!(err.cause(), "cmdline_too_long");
    let old = setup_header {
        version: 0x204,
        ..hdr
    };
    assert!(build_boot_params(Some(old), CMDLINE_START, 256, None, &map, 0).is_ok());
    let err = build_boot_params(Some(old), CMDLINE_START, 257, None, &map, 0).unwrap_err();
    assert_eq!(err.cause(), "cmdline_too_long");
}

#[test]
fn zero_page_errors() {
    let too_many = vec![ram(0, 0x1000); E820_MAX_ENTRIES + 1];
    let err = build_boot_params(None, CMDLINE_START, 1, None, &too_many, 0).unwrap_err();
    assert_eq!(err.cause(), "e820_too_many_entries");
    let err =
        build_boot_params(None, CMDLINE_START, CMDLINE_MAX_SIZE + 1, None, &[], 0).unwrap_err();
    assert_eq!(err.cause(), "cmdline_too_long");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x7800)]).unwrap();
    let err = configure_boot_params(&mem, None, CMDLINE_START, 1, None, &[], 0).unwrap_err();
    assert_eq!(err.cause(), "zero_page_write");
}

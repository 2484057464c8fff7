//! The guest kernel's own view of guest-physical memory, and the rule the
//! arena must follow against it: no byte of the arena may be RAM the
//! kernel uses, and where a source lists every range (the e820 table) the
//! whole arena must be marked reserved.
//!
//! A target describes memory as one or more [`RamSource`]s (Linux: the
//! `e820_table` and the `iomem_resource` tree, read independently so that
//! one cross-checks the other); [`check_arena`] applies the rule to every
//! source and refuses with an [`ArenaUse`] whose [`ArenaUse::reason`] is
//! stable.

use std::fmt;
use std::ops::Range;

use thiserror::Error;

/// What a source says about one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamKind {
    /// Memory the kernel allocates from (e820 RAM, "System RAM").
    Usable,
    /// Marked reserved: the kernel does not allocate from it.
    Reserved,
    /// Anything else (ACPI tables and NVS, persistent memory, unusable, …):
    /// not free for the arena either.
    Other,
}

/// One view of guest-physical memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamSource {
    /// Stable name of the source (`e820_table`, `iomem_resource`, …).
    pub name: &'static str,
    /// True when the source lists all memory, so a range it does not mark
    /// reserved is not reserved (e820); false when it only names some ranges.
    pub complete: bool,
    /// The ranges, `[start, end)`, in any order.
    pub ranges: Vec<(Range<u64>, RamKind)>,
}

/// Everything a target could read about guest-physical memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RamMap {
    /// The sources read.
    pub sources: Vec<RamSource>,
    /// Sources that could not be read, and why (for the report's notes).
    pub unread: Vec<String>,
}

/// Why an arena cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArenaUse {
    /// Part of the arena is RAM the kernel uses.
    #[error("the arena {arena} overlaps guest RAM {ram} (per the kernel's {source_name}): the kernel owns that memory")]
    InRam {
        /// The arena.
        arena: Span,
        /// The RAM range it overlaps.
        ram: Span,
        /// The source that says so.
        source_name: &'static str,
    },
    /// Part of the arena is not marked reserved by a complete source.
    #[error("the arena {arena} is not wholly reserved in the kernel's {source_name} ({first} is not): boot the guest with the arena reserved (e.g. memmap=SIZE$START)")]
    NotReserved {
        /// The arena.
        arena: Span,
        /// The first address not reserved.
        first: Hex,
        /// The source that says so.
        source_name: &'static str,
    },
    /// No source could be read: the arena cannot be shown to be free.
    #[error("the kernel's memory map could not be read ({why}): the arena cannot be shown to be outside guest RAM")]
    Unknown {
        /// What was tried.
        why: String,
    },
}

impl ArenaUse {
    /// Stable reason name.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InRam { .. } => "arena_in_ram",
            Self::NotReserved { .. } => "arena_not_reserved",
            Self::Unknown { .. } => "ram_map_unreadable",
        }
    }
}

/// A physical range, printed `[start, end)` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub u64, pub u64);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.0, self.1)
    }
}

/// An address printed in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex(pub u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The first address of `want` not covered by `have` (None: all covered).
fn first_uncovered(want: &Range<u64>, have: &[Range<u64>]) -> Option<u64> {
    let mut sorted: Vec<&Range<u64>> = have.iter().filter(|r| r.start < r.end).collect();
    sorted.sort_by_key(|r| r.start);
    let mut at = want.start;
    for r in sorted {
        if at >= want.end {
            break;
        }
        if r.start > at {
            return Some(at);
        }
        at = at.max(r.end);
    }
    (at < want.end).then_some(at)
}

/// Checks the arena `[start, end)` against every source: no overlap with
/// usable RAM in any of them, and wholly reserved in every complete one.
pub fn check_arena(map: &RamMap, arena: Range<u64>) -> Result<(), ArenaUse> {
    let span = Span(arena.start, arena.end);
    if map.sources.is_empty() {
        let why = if map.unread.is_empty() { "no source".to_owned() } else { map.unread.join("; ") };
        return Err(ArenaUse::Unknown { why });
    }
    for s in &map.sources {
        let overlap = s.ranges.iter().find(|(r, k)| *k == RamKind::Usable && r.start < arena.end && arena.start < r.end);
        if let Some((r, _)) = overlap {
            return Err(ArenaUse::InRam { arena: span, ram: Span(r.start, r.end), source_name: s.name });
        }
    }
    for s in map.sources.iter().filter(|s| s.complete) {
        let reserved: Vec<Range<u64>> = s.ranges.iter().filter(|(_, k)| *k == RamKind::Reserved).map(|(r, _)| r.clone()).collect();
        if let Some(first) = first_uncovered(&arena, &reserved) {
            return Err(ArenaUse::NotReserved { arena: span, first: Hex(first), source_name: s.name });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const M: u64 = 1 << 20;

    fn e820(ranges: &[(u64, u64, RamKind)]) -> RamSource {
        RamSource { name: "e820_table", complete: true, ranges: ranges.iter().map(|&(s, e, k)| (s..e, k)).collect() }
    }

    fn iomem(ranges: &[(u64, u64, RamKind)]) -> RamSource {
        RamSource { name: "iomem_resource", complete: false, ranges: ranges.iter().map(|&(s, e, k)| (s..e, k)).collect() }
    }

    /// A 512 MiB guest booted with `memmap=4M$0x1c000000`.
    fn debian() -> RamMap {
        let e = e820(&[
            (0, 0x9fc00, RamKind::Usable),
            (0x9fc00, 0x100000, RamKind::Reserved),
            (0x100000, 0x1c00_0000, RamKind::Usable),
            (0x1c00_0000, 0x1c40_0000, RamKind::Reserved),
            (0x1c40_0000, 0x1ffe_0000, RamKind::Usable),
            (0x1ffe_0000, 0x2000_0000, RamKind::Reserved),
        ]);
        let i = iomem(&[(0x100000, 0x1c00_0000, RamKind::Usable), (0x1c00_0000, 0x1c40_0000, RamKind::Reserved), (0x1c40_0000, 0x1ffe_0000, RamKind::Usable)]);
        RamMap { sources: vec![e, i], unread: Vec::new() }
    }

    #[test]
    fn the_reserved_arena_passes() {
        assert_eq!(check_arena(&debian(), 0x1c00_0000..0x1c40_0000), Ok(()));
    }

    #[test]
    fn an_arena_in_ram_is_refused() {
        let e = check_arena(&debian(), 0x1000_0000..0x1040_0000).unwrap_err();
        assert_eq!(e.reason(), "arena_in_ram");
        assert!(matches!(e, ArenaUse::InRam { source_name: "e820_table", ram: Span(0x100000, 0x1c00_0000), .. }), "{e:?}");
    }

    #[test]
    fn an_arena_one_page_into_ram_is_refused() {
        // Reserved except its last 4 KiB.
        let e = check_arena(&debian(), 0x1c00_0000 + 4096..0x1c40_0000 + 4096).unwrap_err();
        assert_eq!(e.reason(), "arena_in_ram");
    }

    #[test]
    fn an_arena_in_a_hole_is_not_reserved() {
        let e = check_arena(&debian(), 0x4000_0000..0x4000_0000 + 4 * M).unwrap_err();
        assert_eq!(e.reason(), "arena_not_reserved");
        assert!(e.to_string().contains("0x40000000"), "{e}");
    }

    #[test]
    fn an_arena_over_acpi_data_is_not_reserved() {
        let mut m = debian();
        m.sources[0].ranges.push((0x3000_0000..0x3040_0000, RamKind::Other));
        let e = check_arena(&m, 0x3000_0000..0x3040_0000).unwrap_err();
        assert_eq!(e.reason(), "arena_not_reserved");
    }

    #[test]
    fn adjacent_reserved_ranges_cover_the_arena() {
        let m = RamMap { sources: vec![e820(&[(0, 2 * M, RamKind::Reserved), (2 * M, 4 * M, RamKind::Reserved)])], unread: Vec::new() };
        assert_eq!(check_arena(&m, 0..4 * M), Ok(()));
    }

    #[test]
    fn the_second_source_catches_what_the_first_misses() {
        // e820 says reserved, the resource tree says System RAM: refused.
        let mut m = debian();
        m.sources[1].ranges.push((0x1c20_0000..0x1c30_0000, RamKind::Usable));
        let e = check_arena(&m, 0x1c00_0000..0x1c40_0000).unwrap_err();
        assert!(matches!(e, ArenaUse::InRam { source_name: "iomem_resource", .. }), "{e:?}");
    }

    #[test]
    fn an_incomplete_source_alone_needs_no_reserved_entry() {
        let m = RamMap { sources: vec![iomem(&[(0, 512 * M, RamKind::Usable)])], unread: Vec::new() };
        assert_eq!(check_arena(&m, 512 * M..516 * M), Ok(()));
        assert_eq!(check_arena(&m, 508 * M..512 * M + 4096).unwrap_err().reason(), "arena_in_ram");
    }

    #[test]
    fn no_source_is_refused() {
        let m = RamMap { sources: Vec::new(), unread: vec!["e820_table: no BTF".into()] };
        let e = check_arena(&m, 0..4 * M).unwrap_err();
        assert_eq!(e.reason(), "ram_map_unreadable");
        assert!(e.to_string().contains("no BTF"), "{e}");
    }
}

//! Which guest-physical addresses vsplice may read or write through a
//! pointer the guest controls (a page-table entry, a task's list pointer
//! translated through the guest's page tables).
//!
//! A gdbstub reads device memory as readily as RAM, and reading a device
//! register can have side effects (a LAPIC or HPET read, a PCI BAR). So a
//! translation that lands outside guest RAM is refused with
//! [`MemError::NotRam`] (`not_ram`) before the backend is asked:
//!
//! - always: the x86 architectural device window `[0xfec00000, 4 GiB)`
//!   (IOAPIC, HPET, LAPIC, the firmware flash), never RAM on a PC;
//! - once the kernel's complete memory map (its `e820_table`) is known:
//!   every address in no entry of it (the PCI hole and other holes), with
//!   the caller's extra ranges (the arena) allowed.
//!
//! The in-process VMM refuses an access outside guest memory itself
//! ([`crate::model::BackendError::BadAddress`]); that error converts to the
//! same [`MemError::NotRam`], so both paths name the same cause.

use std::ops::Range;

use super::mem::MemError;
use super::ram::RamMap;

/// The x86 architectural device window below 4 GiB.
pub const ARCH_DEVICE_WINDOW: Range<u64> = 0xfec0_0000..0x1_0000_0000;

/// Guest-physical ranges reads through guest pointers may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhysFilter {
    /// `None`: only the architectural window is refused. `Some`: only these
    /// ranges are allowed (sorted by start), the window still refused.
    allowed: Option<Vec<Range<u64>>>,
}

impl PhysFilter {
    /// Only the architectural device window refused.
    pub fn architectural() -> Self {
        Self::default()
    }

    /// Allows the ranges of the first complete source of `map` (every entry,
    /// whatever its kind: reserved and ACPI ranges are memory, not devices)
    /// and `extra`; `None` when `map` has no complete source.
    pub fn from_map(map: &RamMap, extra: &[Range<u64>]) -> Option<Self> {
        let src = map.sources.iter().find(|s| s.complete)?;
        let mut allowed: Vec<Range<u64>> = src.ranges.iter().map(|(r, _)| r.clone()).chain(extra.iter().cloned()).filter(|r| r.start < r.end).collect();
        allowed.sort_by_key(|r| r.start);
        Some(Self { allowed: Some(allowed) })
    }

    /// True when the filter knows the guest's memory map.
    pub fn knows_map(&self) -> bool {
        self.allowed.is_some()
    }

    /// `Ok` when `[pa, pa + len)` may be accessed; else [`MemError::NotRam`].
    pub fn check(&self, pa: u64, len: u64) -> Result<(), MemError> {
        let end = pa.saturating_add(len.max(1));
        let refuse = || MemError::NotRam { paddr: pa, len };
        if pa < ARCH_DEVICE_WINDOW.end && end > ARCH_DEVICE_WINDOW.start {
            return Err(refuse());
        }
        let Some(allowed) = &self.allowed else { return Ok(()) };
        // Covered by the union of the allowed ranges (they may touch).
        let mut at = pa;
        for r in allowed {
            if r.start > at {
                break;
            }
            if r.end > at {
                at = r.end;
            }
            if at >= end {
                return Ok(());
            }
        }
        Err(refuse())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::ram::{RamKind, RamSource};

    fn map(complete: bool) -> RamMap {
        let ranges = vec![(0..0x9fc00, RamKind::Usable), (0x100000..0x1c00_0000, RamKind::Usable), (0x1c00_0000..0x1c40_0000, RamKind::Reserved), (0x1c40_0000..0x2000_0000, RamKind::Usable)];
        RamMap { sources: vec![RamSource { name: "e820_table", complete, ranges }], unread: Vec::new() }
    }

    #[test]
    fn the_device_window_is_always_refused() {
        let f = PhysFilter::architectural();
        assert!(f.check(0x1000, 8).is_ok());
        assert!(f.check(0x4_0000_0000, 8).is_ok(), "no map: only the window");
        for pa in [0xfee0_0000u64, 0xfec0_0000, 0xfed0_0000, 0xffff_fff8] {
            let e = f.check(pa, 8).unwrap_err();
            assert_eq!(e.cause(), "not_ram", "{pa:#x}");
        }
        // A read that runs into the window.
        assert!(f.check(0xfebf_fff0, 0x20).is_err());
        assert!(f.check(0xfebf_fff0, 0x10).is_ok());
        assert!(f.check(u64::MAX - 4, 8).is_ok(), "saturating: no wrap into the window");
    }

    #[test]
    fn with_the_map_holes_are_refused_and_extra_ranges_allowed() {
        assert!(PhysFilter::from_map(&map(false), &[]).is_none(), "no complete source");
        let extra = 0x3000_0000..0x3040_0000;
        let f = PhysFilter::from_map(&map(true), std::slice::from_ref(&extra)).unwrap();
        assert!(f.knows_map());
        assert!(f.check(0x1000, 0x1000).is_ok());
        // Across two touching entries (RAM, then reserved, then RAM).
        assert!(f.check(0x1bff_f000, 0x802000).is_ok());
        // The PCI hole, the legacy hole, past the end of RAM.
        for pa in [0x8000_0000u64, 0xa0000, 0x2000_0000, 0x1fff_fffc] {
            assert_eq!(f.check(pa, 8).unwrap_err().cause(), "not_ram", "{pa:#x}");
        }
        assert!(f.check(0x3000_0000, 0x1000).is_ok(), "the extra range");
        assert!(f.check(0xfee0_0000, 4).is_err());
    }
}

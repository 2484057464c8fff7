//! The patch arena: a guest-physical range the VMM keeps out of the guest's
//! RAM (e820 reserved), mapped by vsplice into the kernel's address space in
//! free 2 MiB slots after `_end`.
//!
//! ```text
//! phys base                                             phys base + size
//! | data slot(s): RW + NX                | code slot(s): R + X            |
//! | registry A | registry B | data ...   | code, read-only data ...       |
//! ```
//!
//! The first half (rounded down to 2 MiB) holds data and the registry, the
//! rest code; an arena of 4 MiB has one slot of each. Which physical ranges
//! can be an arena is [`ArenaRange`]'s rule. [`registry`] is the
//! record of what is applied, [`codec`] its checksummed A/B encoding,
//! [`map`] the page-table entries, [`alloc`] the placement of patches.

pub mod alloc;
pub mod codec;
pub mod map;
pub mod patch_orc;
pub mod registry;
#[cfg(test)]
mod map_tests;

use serde::{Deserialize, Serialize};

use crate::model::ArenaRange;

/// One 2 MiB page.
pub const SLOT: u64 = crate::model::arena::SLOT;
/// Bytes of one registry copy.
pub const REGISTRY_COPY: u64 = 128 << 10;
/// Bytes reserved for the registry (two copies) at the start of the arena.
pub const REGISTRY_AREA: u64 = 2 * REGISTRY_COPY;

/// Where the arena is, physically and in the kernel's address space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaInfo {
    /// Guest-physical start (2 MiB aligned).
    pub phys: u64,
    /// Size in bytes (a multiple of 2 MiB, at least 4 MiB).
    pub size: u64,
    /// Kernel-virtual address the arena is mapped at (2 MiB aligned).
    pub virt: u64,
    /// Number of 2 MiB data slots at the start; the rest are code slots.
    pub data_slots: u64,
}

impl ArenaInfo {
    /// Layout for `arena` mapped at `virt`.
    pub fn new(arena: ArenaRange, virt: u64) -> Self {
        Self { phys: arena.phys(), size: arena.size(), virt, data_slots: (arena.slots() / 2).max(1) }
    }

    /// Number of 2 MiB slots.
    pub fn slots(&self) -> u64 {
        self.size / SLOT
    }

    /// Virtual range for data allocations (after the registry).
    pub fn data_range(&self) -> std::ops::Range<u64> {
        self.virt + REGISTRY_AREA..self.virt + self.data_slots * SLOT
    }

    /// Virtual range for code allocations.
    pub fn code_range(&self) -> std::ops::Range<u64> {
        self.virt + self.data_slots * SLOT..self.virt + self.size
    }

    /// Physical address of an arena virtual address.
    pub fn phys_of(&self, va: u64) -> Option<u64> {
        (va >= self.virt && va < self.virt + self.size).then(|| self.phys + (va - self.virt))
    }
}

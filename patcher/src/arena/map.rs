//! Mapping the arena into the guest kernel's address space by writing 2 MiB
//! page-directory entries in free slots of the kernel image's page directory
//! (the slots after `_end`), found by walking down from the page-table root
//! in the guest's paging mode (PML4 → PDPT → PD, or PML5 → PML4 → PDPT →
//! PD with 5-level paging): data slots RW + NX (NX only when the guest set
//! EFER.NXE), code slots read-only + executable. Nothing is ever unmapped: a
//! slot that was never present cannot be in any TLB, and a mapping that stays
//! needs no shootdown.

use std::ops::Range;

use thiserror::Error;

use super::{ArenaInfo, SLOT};
use crate::arch::x86::paging::PagingMode;
use crate::model::backend::{Backend, BackendError};

const P: u64 = 1;
const RW: u64 = 1 << 1;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// EFER.NXE.
pub const EFER_NXE: u64 = 1 << 11;

/// Why the arena cannot be mapped.
#[derive(Debug, Error)]
pub enum MapError {
    /// The page tables above the kernel's page directory are missing or use 1 GiB pages.
    #[error("no page directory for {va:#x}: {why}")]
    NoDirectory {
        /// Address.
        va: u64,
        /// Why.
        why: &'static str,
    },
    /// No run of free 2 MiB slots in the window.
    #[error("no {slots} free 2 MiB slots in {:#x}..{:#x} of the kernel's page directory", window.start, window.end)]
    NoFreeSlots {
        /// Slots needed.
        slots: u64,
        /// Window searched.
        window: Range<u64>,
    },
    /// Guest memory access failed.
    #[error("page-table access failed")]
    Backend(#[from] #[source] BackendError),
}

fn read_u64<B: Backend + ?Sized>(b: &mut B, pa: u64) -> Result<u64, BackendError> {
    let mut w = [0u8; 8];
    b.read_phys(pa, &mut w)?;
    Ok(u64::from_le_bytes(w))
}

/// Physical address of the page directory that maps `va`, walking from
/// `root` through the upper levels of `mode` (PML5 only with 5-level paging).
pub fn page_directory<B: Backend + ?Sized>(b: &mut B, root: u64, mode: PagingMode, va: u64) -> Result<u64, MapError> {
    if !mode.is_canonical(va) {
        return Err(MapError::NoDirectory { va, why: "address not canonical in the guest's paging mode" });
    }
    let mut table = root & ADDR;
    for level in (3..=mode.levels()).rev() {
        let e = read_u64(b, table + PagingMode::index(va, level) * 8)?;
        if e & P == 0 {
            let why = match level {
                5 => "PML5 entry not present",
                4 => "PML4 entry not present",
                _ => "PDPT entry not present",
            };
            return Err(MapError::NoDirectory { va, why });
        }
        if level == 3 && e & PS != 0 {
            return Err(MapError::NoDirectory { va, why: "mapped by a 1 GiB page" });
        }
        table = e & ADDR;
    }
    Ok(table)
}

fn pde_addr(pd: u64, va: u64) -> u64 {
    pd + ((va >> 21) & 511) * 8
}

/// First virtual address in `window` (2 MiB aligned, inside one page
/// directory) where `slots` consecutive PDEs are not present.
pub fn find_free<B: Backend + ?Sized>(b: &mut B, root: u64, mode: PagingMode, window: Range<u64>, slots: u64) -> Result<u64, MapError> {
    let start = window.start.div_ceil(SLOT) * SLOT;
    let pd = page_directory(b, root, mode, start)?;
    let mut run = 0u64;
    let mut va = start;
    while va.checked_add(SLOT).is_some_and(|e| e <= window.end) && (va >> 30) == (start >> 30) {
        let pde = read_u64(b, pde_addr(pd, va))?;
        run = if pde & P == 0 { run + 1 } else { 0 };
        if run == slots {
            return Ok(va - (slots - 1) * SLOT);
        }
        va += SLOT;
    }
    Err(MapError::NoFreeSlots { slots, window })
}

/// The PDE value for slot `i` of the arena.
pub fn pde_value(info: &ArenaInfo, i: u64, nxe: bool) -> u64 {
    let pa = info.phys + i * SLOT;
    if i < info.data_slots {
        pa | P | RW | A | D | PS | G | if nxe { NX } else { 0 }
    } else {
        pa | P | A | D | PS | G
    }
}

/// True when every slot of the arena is mapped as [`map`] would map it.
pub fn is_mapped<B: Backend + ?Sized>(b: &mut B, root: u64, mode: PagingMode, info: &ArenaInfo) -> Result<bool, MapError> {
    let pd = match page_directory(b, root, mode, info.virt) {
        Ok(pd) => pd,
        Err(MapError::NoDirectory { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    for i in 0..info.slots() {
        let pde = read_u64(b, pde_addr(pd, info.virt + i * SLOT))?;
        if pde & P == 0 || pde & PS == 0 || pde & ADDR & !(SLOT - 1) != info.phys + i * SLOT {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes the arena's PDEs (call with the guest stopped, or while no one
/// can use the slots yet). Returns the number of entries written.
pub fn map<B: Backend + ?Sized>(b: &mut B, root: u64, mode: PagingMode, info: &ArenaInfo, nxe: bool) -> Result<usize, MapError> {
    let pd = page_directory(b, root, mode, info.virt)?;
    let mut written = 0;
    for i in 0..info.slots() {
        let at = pde_addr(pd, info.virt + i * SLOT);
        let want = pde_value(info, i, nxe);
        let have = read_u64(b, at)?;
        if have & P != 0 && have & ADDR & !(SLOT - 1) != info.phys + i * SLOT {
            return Err(MapError::NoFreeSlots { slots: info.slots(), window: info.virt..info.virt + info.size });
        }
        if have != want {
            b.write_phys(at, &want.to_le_bytes())?;
            written += 1;
        }
    }
    Ok(written)
}

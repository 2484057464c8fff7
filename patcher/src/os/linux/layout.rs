//! Where the kernel image sits, from the page tables alone: the first
//! mapping under `__START_KERNEL_map` is `_text` (x86-64 Linux unmaps the
//! kernel-image area below `_text` at boot), its physical address is the
//! physical load address, and the run of contiguous mappings after it, split
//! by permissions, gives text / read-only data / writable data.

use crate::model::backend::Backend;
use crate::model::mem::MemError;
use crate::arch::x86::paging::{Mapping, PageWalker};

/// `__START_KERNEL_map`: base of the kernel-image virtual area.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// End of the kernel-image area (1 GiB with KASLR; modules follow).
pub const KERNEL_IMAGE_AREA_END: u64 = 0xffff_ffff_c000_0000;
/// Link address of `_text` for CONFIG_PHYSICAL_START=0x1000000 (Debian).
pub const DEFAULT_TEXT_LINK: u64 = 0xffff_ffff_8100_0000;

/// A run of contiguous virtual pages with the same permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Start.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
    /// Writable.
    pub writable: bool,
    /// Execute-disable.
    pub nx: bool,
}

/// The kernel image as the page tables show it.
#[derive(Debug, Clone)]
pub struct KernelImageMap {
    /// Virtual address of the first mapped page (`_text`).
    pub text: u64,
    /// Its physical address (the physical load address).
    pub phys_base: u64,
    /// Contiguous runs from `text` on, until the first hole.
    pub runs: Vec<Run>,
}

impl KernelImageMap {
    /// End of the contiguous mapping.
    pub fn end(&self) -> u64 {
        self.runs.last().map(|r| r.end).unwrap_or(self.text)
    }

    /// The read-only, non-executable span after the text (rodata and
    /// friends), once the kernel has applied its final permissions.
    pub fn rodata(&self) -> Option<(u64, u64)> {
        let first = self.runs.iter().position(|r| r.nx && !r.writable)?;
        let mut end = self.runs[first].end;
        for r in &self.runs[first + 1..] {
            if r.nx && !r.writable && r.start == end {
                end = r.end;
            } else {
                break;
            }
        }
        Some((self.runs[first].start, end))
    }
}

/// Walk `[START_KERNEL_MAP, KERNEL_IMAGE_AREA_END)` of one address space.
pub fn map_kernel_image<B: Backend + ?Sized>(walker: &mut PageWalker, b: &mut B) -> Result<KernelImageMap, MemError> {
    let mut maps: Vec<Mapping> = Vec::new();
    walker.walk_range(b, START_KERNEL_MAP, KERNEL_IMAGE_AREA_END, &mut |m| {
        if let Some(last) = maps.last() {
            if last.vaddr + last.size != m.vaddr {
                return false; // first hole: end of the image
            }
        }
        maps.push(m);
        true
    })?;
    let first = *maps.first().ok_or(MemError::NotMapped { vaddr: START_KERNEL_MAP })?;
    let mut runs: Vec<Run> = Vec::new();
    for m in &maps {
        match runs.last_mut() {
            Some(r) if r.end == m.vaddr && r.writable == m.writable && r.nx == m.nx => r.end = m.vaddr + m.size,
            _ => runs.push(Run { start: m.vaddr, end: m.vaddr + m.size, writable: m.writable, nx: m.nx }),
        }
    }
    Ok(KernelImageMap { text: first.vaddr, phys_base: first.paddr, runs })
}

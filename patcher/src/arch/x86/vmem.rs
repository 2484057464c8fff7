//! Kernel-virtual memory over a [`Backend`]: translate with [`PageWalker`],
//! keep recent translations (a small TLB of 4 KiB pages, and a table of
//! 2 MiB and 1 GiB mappings by 2 MiB frame: the direct map, where the
//! kernel's objects are) and, when each backend read is a round trip,
//! recently read 4 KiB pages; turn big reads into as few physical reads as
//! the mappings allow. From a backend whose reads are a memory copy
//! ([`Backend::direct_reads`]) exactly the bytes asked for are read.

use std::collections::HashMap;

use foldhash::fast::FixedState;

use super::paging::{Mapping, PageWalker};
use crate::model::backend::Backend;
use crate::model::mem::{KernelMemory, MemError};
use crate::model::phys_filter::PhysFilter;

const TLB_SIZE: usize = 64;
const DATA_PAGES: usize = 1024;
/// Large mappings remembered (2 MiB frames): 8 GiB of direct map in 2 MiB pages.
const LARGE_FRAMES: usize = 4096;
const LARGE: u64 = 2 << 20;

/// A kernel address space read through a backend. Valid while the guest
/// stays stopped; call [`VirtMem::flush`] after it ran.
#[derive(Debug)]
pub struct VirtMem<B: Backend> {
    backend: B,
    walker: PageWalker,
    tlb: Vec<Mapping>,
    tlb_next: usize,
    large: HashMap<u64, Mapping, FixedState>,
    pages: HashMap<u64, Box<[u8; 4096]>>,
    /// Bytes read from the backend (for measurements).
    pub bytes_read: u64,
}

impl<B: Backend> VirtMem<B> {
    /// Read the address space of `cr3` (with `cr4` for 4/5 levels).
    pub fn new(backend: B, cr3: u64, cr4: u64) -> Self {
        Self {
            backend,
            walker: PageWalker::new(cr3, cr4),
            tlb: Vec::with_capacity(TLB_SIZE),
            tlb_next: 0,
            large: HashMap::with_hasher(FixedState::default()),
            pages: HashMap::new(),
            bytes_read: 0,
        }
    }

    /// The backend (e.g. to write or resume).
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Give the backend back.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The page walker (e.g. to enumerate mappings).
    pub fn walker_and_backend(&mut self) -> (&mut PageWalker, &mut B) {
        (&mut self.walker, &mut self.backend)
    }

    /// Where guest pointers may lead ([`PhysFilter`]): set once the
    /// kernel's memory map is known; the architectural device window is
    /// refused from the start.
    pub fn set_filter(&mut self, filter: PhysFilter) {
        self.walker.set_filter(filter);
    }

    /// Physical address of `vaddr`, refused `not_ram` when `len` bytes from
    /// it are not guest RAM.
    pub fn phys_checked(&mut self, vaddr: u64, len: u64) -> Result<u64, MemError> {
        let pa = self.virt_to_phys(vaddr)?;
        self.walker.filter().check(pa, len)?;
        Ok(pa)
    }

    /// Forget every cached translation and page.
    pub fn flush(&mut self) {
        self.walker.flush();
        self.tlb.clear();
        self.large.clear();
        self.pages.clear();
    }

    /// Translate one address (through the TLB).
    pub fn translate(&mut self, vaddr: u64) -> Result<Mapping, MemError> {
        if let Some(m) = self.large.get(&(vaddr / LARGE)).filter(|m| m.contains(vaddr)) {
            return Ok(*m);
        }
        if let Some(m) = self.tlb.iter().find(|m| m.contains(vaddr)) {
            return Ok(*m);
        }
        let m = self.walker.translate(&mut self.backend, vaddr)?;
        if m.size >= LARGE {
            if self.large.len() >= LARGE_FRAMES {
                self.large.clear();
            }
            self.large.insert(vaddr / LARGE, m);
        } else if self.tlb.len() < TLB_SIZE {
            self.tlb.push(m);
        } else {
            self.tlb[self.tlb_next] = m;
            self.tlb_next = (self.tlb_next + 1) % TLB_SIZE;
        }
        Ok(m)
    }

    /// Physical address of `vaddr`.
    pub fn virt_to_phys(&mut self, vaddr: u64) -> Result<u64, MemError> {
        Ok(self.translate(vaddr)?.phys(vaddr))
    }

    /// Bytes of `m` from `va` on (to the end of the mapping), at most `left`.
    fn span(m: &Mapping, va: u64, left: usize) -> usize {
        let to_end = m.vaddr.wrapping_add(m.size).wrapping_sub(va);
        usize::try_from(to_end).map_or(left, |n| n.min(left))
    }

    /// A backend whose reads are a memory copy: each mapping's part read
    /// as it is, nothing cached but translations.
    fn read_direct(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        while done < buf.len() {
            let va = vaddr.wrapping_add(done as u64);
            let m = self.translate(va)?;
            let pa = m.phys(va);
            let n = Self::span(&m, va, buf.len() - done);
            self.walker.filter().check(pa, n as u64)?;
            self.backend.read_phys(pa, &mut buf[done..done + n])?;
            self.bytes_read += n as u64;
            done += n;
        }
        Ok(())
    }

    fn read_small(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0;
        while done < buf.len() {
            let va = vaddr.wrapping_add(done as u64);
            let pa_page = self.virt_to_phys(va)? & !0xfff;
            if !self.pages.contains_key(&pa_page) {
                self.walker.filter().check(pa_page, 4096)?;
                if self.pages.len() >= DATA_PAGES {
                    self.pages.clear();
                }
                let mut p = Box::new([0u8; 4096]);
                self.backend.read_phys(pa_page, &mut p[..])?;
                self.bytes_read += 4096;
                self.pages.insert(pa_page, p);
            }
            let off = (va & 0xfff) as usize;
            let n = (4096 - off).min(buf.len() - done);
            if let Some(p) = self.pages.get(&pa_page) {
                buf[done..done + n].copy_from_slice(&p[off..off + n]);
            }
            done += n;
        }
        Ok(())
    }

    fn read_large(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        // Coalesce physically contiguous spans into single backend reads.
        let mut done = 0usize;
        let mut run: Option<(u64, usize, usize)> = None; // (pa, buf offset, len)
        while done < buf.len() {
            let va = vaddr.wrapping_add(done as u64);
            let m = self.translate(va)?;
            let pa = m.phys(va);
            let n = ((m.vaddr + m.size - va) as usize).min(buf.len() - done);
            run = match run {
                Some((rpa, roff, rlen)) if rpa + rlen as u64 == pa => Some((rpa, roff, rlen + n)),
                Some((rpa, roff, rlen)) => {
                    self.walker.filter().check(rpa, rlen as u64)?;
                    self.backend.read_phys(rpa, &mut buf[roff..roff + rlen])?;
                    self.bytes_read += rlen as u64;
                    Some((pa, done, n))
                }
                None => Some((pa, done, n)),
            };
            done += n;
        }
        if let Some((rpa, roff, rlen)) = run {
            self.walker.filter().check(rpa, rlen as u64)?;
            self.backend.read_phys(rpa, &mut buf[roff..roff + rlen])?;
            self.bytes_read += rlen as u64;
        }
        Ok(())
    }
}

impl<B: Backend> KernelMemory for VirtMem<B> {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if self.backend.direct_reads() {
            self.read_direct(vaddr, buf)
        } else if buf.len() <= 2 * 4096 {
            self.read_small(vaddr, buf)
        } else {
            self.read_large(vaddr, buf)
        }
    }

    /// Through the translation the read will use (walked now if not cached).
    fn prefetch(&mut self, vaddr: u64, len: usize) {
        if !self.backend.direct_reads() {
            return;
        }
        if let Ok(m) = self.translate(vaddr) {
            let pa = m.phys(vaddr);
            self.backend.prefetch_phys(pa, Self::span(&m, vaddr, len));
        }
    }

    /// One aligned 8-byte load per word from a backend that can make them
    /// ([`Backend::read_phys_words`]), else the bytes through the page cache.
    fn read_words(&mut self, vaddr: u64, out: &mut [u64]) -> Result<(), MemError> {
        if !vaddr.is_multiple_of(8) {
            return Err(MemError::Unaligned { vaddr });
        }
        if !self.backend.direct_reads() {
            return crate::model::backend::read_words_via_bytes(out, |b| self.read(vaddr, b));
        }
        let mut done = 0usize;
        while done < out.len() {
            let va = vaddr.wrapping_add(8 * done as u64);
            let m = self.translate(va)?;
            let pa = m.phys(va);
            // Mappings are page-aligned, so a word never straddles two.
            let n = (Self::span(&m, va, 8 * (out.len() - done)) / 8).max(1);
            self.walker.filter().check(pa, 8 * n as u64)?;
            self.backend.read_phys_words(pa, &mut out[done..done + n])?;
            self.bytes_read += 8 * n as u64;
            done += n;
        }
        Ok(())
    }
}

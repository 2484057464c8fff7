//! [`RamGuest`]: a guest whose physical memory is pages in host RAM, behind
//! the [`Backend`] seam, for tests that need no KVM and no QEMU.
//!
//! Memory is sparse: a page exists once written, and every page below the
//! guest's RAM size (if it has one) exists from the start, reading as zeros.
//! A read that touches a page that does not exist is
//! [`BackendError::BadAddress`] (a hole, as in a real guest's physical map).
//!
//! It keeps its own x86-64 page tables (4 levels, or 5 after
//! [`RamGuest::with_paging`]`(`[`PagingMode::FiveLevel`]`)`, allocated from a
//! region set aside for them) and reads kernel-virtual memory through them
//! with [`crate::arch::x86::paging::PageWalker`], so what a test maps is what
//! [`crate::arch::x86::guest::Guest`] and the arena code see; vCPUs of a
//! 5-level guest should carry [`RamGuest::cr4`]. Tests that build unusual
//! tables (1 GiB pages) write entries themselves with [`RamGuest::set_entry`].
//!
//! `stop` returns [`RamGuest::vcpus`], or the next entry of
//! [`RamGuest::stop_script`] while there is one, and everything is counted
//! (stops, resumes, physical reads and writes). Faults are injected by
//! wrapping it (or any backend) in [`super::faults::Faulty`].

use std::collections::{BTreeMap, VecDeque};

use crate::arch::x86::paging::{PageWalker, PagingMode};
use crate::model::backend::{Backend, BackendError, VcpuState};
use crate::model::mem::{KernelMemory, MemError};

/// Bytes of a small page.
pub const PAGE: u64 = 4096;
/// Bytes of a large page.
pub const LARGE_PAGE: u64 = 2 << 20;
/// Present.
pub const P: u64 = 1;
/// Writable.
pub const RW: u64 = 1 << 1;
/// Large page (in a PD or PDPT entry).
pub const PS: u64 = 1 << 7;
/// Execute-disable.
pub const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Where a guest without a RAM size keeps its page tables (far above
/// anything a test writes).
const SPARSE_TABLES: u64 = 0xf_0000_0000;
/// Bytes set aside for page tables at the top of a sized guest's RAM.
const TABLE_AREA: u64 = 1 << 20;

/// Guest-physical memory in host RAM, with its own page tables and a
/// scripted set of vCPUs.
#[derive(Debug, Clone)]
pub struct RamGuest {
    pages: BTreeMap<u64, Box<[u8]>>,
    /// Every page below this exists from the start (zeros).
    ram_size: u64,
    next_table: u64,
    root: u64,
    mode: PagingMode,
    /// What `stop` returns once the script is used up.
    pub vcpus: Vec<VcpuState>,
    /// What the next stops return, one entry per stop, before [`RamGuest::vcpus`].
    pub stop_script: VecDeque<Vec<VcpuState>>,
    /// `stop` calls served.
    pub stops: usize,
    /// `resume` calls served.
    pub resumes: usize,
    /// `read_phys` calls served.
    pub reads: usize,
    /// `write_phys` calls served.
    pub writes: usize,
    stopped: bool,
}

impl Default for RamGuest {
    /// A guest with no RAM size: only written pages exist.
    fn default() -> Self {
        Self::with_tables_at(0, SPARSE_TABLES)
    }
}

impl RamGuest {
    /// A guest with `size` bytes of RAM from physical 0 (all zeros); its own
    /// page tables, if it builds any, take the top of that RAM.
    pub fn new(size: u64) -> Self {
        let tables = size.saturating_sub(TABLE_AREA.min(size / 2)) & !(PAGE - 1);
        Self::with_tables_at(size, tables)
    }

    /// A guest whose only pages are those written (the same as `default`).
    pub fn sparse() -> Self {
        Self::default()
    }

    fn with_tables_at(ram_size: u64, tables: u64) -> Self {
        let mut g = Self {
            pages: BTreeMap::new(),
            ram_size,
            next_table: tables,
            root: 0,
            mode: PagingMode::FourLevel,
            vcpus: vec![VcpuState::default()],
            stop_script: VecDeque::new(),
            stops: 0,
            resumes: 0,
            reads: 0,
            writes: 0,
            stopped: false,
        };
        // The root is the first table; in RAM it already reads as zeros.
        g.root = g.next_table;
        g.next_table += PAGE;
        if g.page(g.root).is_none() {
            g.put(g.root, &[0u8; PAGE as usize]);
        }
        g
    }

    /// Physical address of the top-level table of the guest's own page tables (its CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The same guest with its own page tables in `mode` (the root table
    /// becomes the PML5 with 5 levels); call before mapping anything.
    pub fn with_paging(mut self, mode: PagingMode) -> Self {
        self.mode = mode;
        self
    }

    /// The paging mode of the guest's own page tables.
    pub fn paging_mode(&self) -> PagingMode {
        self.mode
    }

    /// The CR4 paging bits a vCPU on these tables has (LA57 with 5 levels).
    pub fn cr4(&self) -> u64 {
        self.mode.cr4_bits()
    }

    /// True between `stop` and `resume`.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn alloc_table(&mut self) -> u64 {
        let t = self.next_table;
        self.next_table += PAGE;
        self.put(t, &[0u8; PAGE as usize]);
        t
    }

    fn page(&self, pa: u64) -> Option<&[u8]> {
        match self.pages.get(&pa) {
            Some(p) => Some(p),
            None if pa < self.ram_size => Some(&[0u8; PAGE as usize][..]),
            None => None,
        }
    }

    /// Reads physical memory without counting it (assertions, page walks).
    pub fn peek(&self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let len = buf.len() as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let a = gpa.checked_add(done as u64).ok_or(BackendError::BadAddress { gpa, len })?;
            let off = (a % PAGE) as usize;
            let n = (PAGE as usize - off).min(buf.len() - done);
            let page = self.page(a - off as u64).ok_or(BackendError::BadAddress { gpa, len })?;
            buf[done..done + n].copy_from_slice(&page[off..off + n]);
            done += n;
        }
        Ok(())
    }

    /// `len` bytes of physical memory (holes read as zeros), for assertions.
    pub fn bytes(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (i, b) in out.iter_mut().enumerate() {
            let a = gpa + i as u64;
            if let Some(p) = self.page(a & !(PAGE - 1)) {
                *b = p[(a % PAGE) as usize];
            }
        }
        out
    }

    /// Writes physical memory without counting it; pages are created as needed.
    pub fn put(&mut self, gpa: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let a = gpa.wrapping_add(done as u64);
            let off = (a % PAGE) as usize;
            let n = (PAGE as usize - off).min(data.len() - done);
            let page = self.pages.entry(a - off as u64).or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// XORs the byte at `gpa` with `mask` (damage for tests of checksums).
    pub fn flip(&mut self, gpa: u64, mask: u8) {
        let b = self.bytes(gpa, 1)[0] ^ mask;
        self.put(gpa, &[b]);
    }

    /// Writes a little-endian u64.
    pub fn put_u64(&mut self, gpa: u64, v: u64) {
        self.put(gpa, &v.to_le_bytes());
    }

    /// Reads a little-endian u64 (holes read as zero).
    pub fn u64_at(&self, gpa: u64) -> u64 {
        let b = self.bytes(gpa, 8);
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Writes entry `idx` of the page table at `table`.
    pub fn set_entry(&mut self, table: u64, idx: u64, val: u64) {
        self.put_u64(table + idx * 8, val);
    }

    /// The table at `leaf_level` (1: page table, 2: page directory) that
    /// maps `va`, with the tables above it created where missing (a large
    /// page in the way is replaced by a table).
    fn table_for(&mut self, va: u64, leaf_level: u32) -> u64 {
        let mut table = self.root;
        for level in ((leaf_level + 1)..=self.mode.levels()).rev() {
            let idx = (va >> (12 + 9 * (level - 1))) & 511;
            let e = self.u64_at(table + idx * 8);
            table = if e & P != 0 && e & PS == 0 {
                e & ADDR
            } else {
                let t = self.alloc_table();
                self.set_entry(table, idx, t | P | RW);
                t
            };
        }
        table
    }

    /// Maps `len` bytes at `va` to `pa` with 4 KiB pages (present, writable).
    pub fn map_4k(&mut self, va: u64, pa: u64, len: u64) {
        for off in (0..len.div_ceil(PAGE)).map(|i| i * PAGE) {
            let pt = self.table_for(va + off, 1);
            self.set_entry(pt, ((va + off) >> 12) & 511, (pa + off) | P | RW);
        }
    }

    /// Maps `len` bytes at `va` to `pa` with 2 MiB pages (present, writable;
    /// both addresses 2 MiB aligned).
    pub fn map_2m(&mut self, va: u64, pa: u64, len: u64) {
        for off in (0..len.div_ceil(LARGE_PAGE)).map(|i| i * LARGE_PAGE) {
            let pd = self.table_for(va + off, 2);
            self.set_entry(pd, ((va + off) >> 21) & 511, (pa + off) | P | RW | PS);
        }
    }

    /// Maps `len` bytes at `va` to `pa` with 4 KiB pages, and makes sure
    /// the physical pages exist.
    pub fn map_range(&mut self, va: u64, pa: u64, len: u64) {
        self.map_4k(va, pa, len);
        for off in (0..len.div_ceil(PAGE)).map(|i| i * PAGE) {
            if self.page(pa + off).is_none() {
                self.pages.insert(pa + off, vec![0u8; PAGE as usize].into_boxed_slice());
            }
        }
    }

    /// Physical address of `va` through the guest's own page tables.
    pub fn virt_to_phys(&self, va: u64) -> Result<u64, MemError> {
        let mut raw = Raw(self);
        PageWalker::new(self.root, self.mode.cr4_bits()).translate(&mut raw, va).map(|m| m.phys(va))
    }

    /// Writes kernel-virtual memory through the guest's own page tables.
    pub fn write_virt(&mut self, va: u64, data: &[u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        while done < data.len() {
            let a = va.wrapping_add(done as u64);
            let n = (PAGE as usize - (a % PAGE) as usize).min(data.len() - done);
            let pa = self.virt_to_phys(a)?;
            self.put(pa, &data[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

/// Uncounted physical reads, for the guest's own page walks.
struct Raw<'a>(&'a RamGuest);

impl Backend for Raw<'_> {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        Err(BackendError::WrongState("a page walk does not stop vCPUs"))
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        Err(BackendError::WrongState("a page walk does not resume vCPUs"))
    }
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.0.peek(gpa, buf)
    }
    fn write_phys(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BackendError> {
        Err(BackendError::WrongState("a page walk does not write"))
    }
}

impl Backend for RamGuest {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        self.stops += 1;
        self.stopped = true;
        Ok(self.stop_script.pop_front().unwrap_or_else(|| self.vcpus.clone()))
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.resumes += 1;
        self.stopped = false;
        Ok(())
    }
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.reads += 1;
        self.peek(gpa, buf)
    }
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.writes += 1;
        self.put(gpa, data);
        Ok(())
    }
}

impl KernelMemory for RamGuest {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut walker = PageWalker::new(self.root, self.mode.cr4_bits());
        let mut done = 0usize;
        while done < buf.len() {
            let a = vaddr.wrapping_add(done as u64);
            let m = walker.translate(&mut Raw(self), a)?;
            let n = ((m.size - (a - m.vaddr)) as usize).min(buf.len() - done);
            self.peek(m.phys(a), &mut buf[done..done + n]).map_err(|_| MemError::NotMapped { vaddr: a })?;
            done += n;
        }
        Ok(())
    }
}

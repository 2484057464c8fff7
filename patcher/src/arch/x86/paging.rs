//! 4- and 5-level x86-64 page walks (4 KiB, 2 MiB and 1 GiB pages) from any
//! CR3, with a cache of page-table pages (or, from RAM mapped into this
//! process, each entry read alone), plus enumeration of the mappings
//! in a virtual range.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::backend::Backend;
use crate::model::mem::MemError;
use crate::model::phys_filter::PhysFilter;

/// Most page-table entries one [`PageWalker::walk_range`] looks at: 2^24
/// (the 2 GiB kernel image area in 4 KiB pages is 2^19). Tables pointing
/// back at themselves (a page-table loop) make a range look endlessly
/// mapped; the walk stops with [`MemError::WalkTooLong`] instead.
pub const MAX_WALK_STEPS: u64 = 1 << 24;

/// Time bound on one [`PageWalker::walk_range`] (every table read goes to
/// the backend, a gdbstub for attached guests).
pub const MAX_WALK_TIME: Duration = Duration::from_secs(60);

/// Steps taken and the deadline of one range walk.
#[derive(Debug)]
struct WalkBudget {
    steps: u64,
    deadline: Instant,
}

impl WalkBudget {
    fn step(&mut self) -> Result<(), MemError> {
        self.steps += 1;
        if self.steps > MAX_WALK_STEPS {
            return Err(MemError::WalkTooLong { steps: self.steps, why: "step bound" });
        }
        if self.steps.is_multiple_of(4096) && Instant::now() >= self.deadline {
            return Err(MemError::WalkTooLong { steps: self.steps, why: "time bound" });
        }
        Ok(())
    }
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;

/// The paging mode of an address space: 4 levels (PML4 root, 48-bit
/// virtual addresses) or 5 levels (PML5 root, 57-bit; CR4.LA57 set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PagingMode {
    /// 4-level paging (CR4.LA57 clear).
    #[default]
    FourLevel,
    /// 5-level paging (CR4.LA57 set).
    FiveLevel,
}

impl PagingMode {
    /// The mode a vCPU with this CR4 translates with.
    pub fn from_cr4(cr4: u64) -> Self {
        if cr4 & CR4_LA57 != 0 {
            Self::FiveLevel
        } else {
            Self::FourLevel
        }
    }

    /// The CR4 bits that select this mode (for [`PageWalker::new`]).
    pub fn cr4_bits(self) -> u64 {
        match self {
            Self::FourLevel => 0,
            Self::FiveLevel => CR4_LA57,
        }
    }

    /// Number of table levels above the page.
    pub fn levels(self) -> u32 {
        match self {
            Self::FourLevel => 4,
            Self::FiveLevel => 5,
        }
    }

    /// Significant bits of a virtual address (48 or 57).
    pub fn va_bits(self) -> u32 {
        match self {
            Self::FourLevel => 48,
            Self::FiveLevel => 57,
        }
    }

    /// True when `vaddr` is canonical in this mode (bits above
    /// [`Self::va_bits`] copy the highest significant bit).
    pub fn is_canonical(self, vaddr: u64) -> bool {
        let top = (vaddr as i64) >> (self.va_bits() - 1);
        top == 0 || top == -1
    }

    /// Index of `vaddr`'s entry in the table at `level` (1: page table,
    /// 2: page directory, 3: PDPT, 4: PML4, 5: PML5).
    pub fn index(vaddr: u64, level: u32) -> u64 {
        (vaddr >> (12 + 9 * (level.clamp(1, 5) - 1))) & 511
    }
}

/// One present translation (a whole page of `size` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Virtual address of the page start.
    pub vaddr: u64,
    /// Physical address of the page start.
    pub paddr: u64,
    /// Page size: 4 KiB, 2 MiB or 1 GiB.
    pub size: u64,
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
    /// Execute-disable at some level.
    pub nx: bool,
}

impl Mapping {
    /// Physical address of `vaddr` inside this page.
    pub fn phys(&self, vaddr: u64) -> u64 {
        self.paddr + (vaddr - self.vaddr)
    }
    /// True when `vaddr` lies in this page.
    pub fn contains(&self, vaddr: u64) -> bool {
        vaddr.wrapping_sub(self.vaddr) < self.size
    }
}

/// Walks one address space (one CR3) and caches the tables it reads.
#[derive(Debug)]
pub struct PageWalker {
    root: u64,
    levels: u32,
    tables: HashMap<u64, Box<[u64; 512]>>,
    max_tables: usize,
    /// Number of page-table pages read from the backend (for measurements).
    pub table_reads: u64,
    /// Where a table (or, through [`PageWalker::filter`], a page) may be.
    filter: PhysFilter,
}

impl PageWalker {
    /// A walker for `cr3` (PCID and flag bits ignored); `cr4` tells 4 or 5 levels.
    pub fn new(cr3: u64, cr4: u64) -> Self {
        Self {
            root: cr3 & ADDR_MASK,
            levels: if cr4 & CR4_LA57 != 0 { 5 } else { 4 },
            tables: HashMap::new(),
            max_tables: 4096,
            table_reads: 0,
            filter: PhysFilter::architectural(),
        }
    }

    /// Number of paging levels (4 or 5).
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// Physical address of the top-level table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Where tables and pages may be: an entry leading outside is refused
    /// `not_ram` ([`MemError::NotRam`]) before anything is read there.
    pub fn set_filter(&mut self, filter: PhysFilter) {
        self.filter = filter;
    }

    /// The guest-physical filter in use.
    pub fn filter(&self) -> &PhysFilter {
        &self.filter
    }

    /// Forget cached tables (the guest ran, or its page tables were written).
    pub fn flush(&mut self) {
        self.tables.clear();
    }

    /// The paging mode (4 or 5 levels).
    pub fn mode(&self) -> PagingMode {
        if self.levels == 5 {
            PagingMode::FiveLevel
        } else {
            PagingMode::FourLevel
        }
    }

    fn canonical(&self, vaddr: u64) -> bool {
        self.mode().is_canonical(vaddr)
    }

    fn table<B: Backend + ?Sized>(&mut self, b: &mut B, pa: u64) -> Result<&[u64; 512], MemError> {
        if !self.tables.contains_key(&pa) {
            if self.tables.len() >= self.max_tables {
                self.tables.clear();
            }
            self.filter.check(pa, 4096)?;
            let mut raw = [0u8; 4096];
            b.read_phys(pa, &mut raw)?;
            self.table_reads += 1;
            let mut t = Box::new([0u64; 512]);
            for (e, c) in t.iter_mut().zip(raw.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                *e = u64::from_le_bytes(w);
            }
            self.tables.insert(pa, t);
        }
        // The entry was just inserted if it was missing.
        self.tables.get(&pa).map(|t| &**t).ok_or(MemError::NotMapped { vaddr: pa })
    }

    /// One entry of the table at `pa`: read alone, as one aligned 8-byte
    /// load, from a backend whose reads are a memory copy (never a torn
    /// entry while the guest runs, no 4 KiB copy per level); else from the
    /// cached table.
    fn entry<B: Backend + ?Sized>(&mut self, b: &mut B, pa: u64, idx: usize) -> Result<u64, MemError> {
        if !b.direct_reads() {
            return Ok(self.table(b, pa)?[idx]);
        }
        self.filter.check(pa, 4096)?;
        let mut w = [0u64];
        b.read_phys_words(pa + 8 * (idx as u64 & 511), &mut w)?;
        Ok(w[0])
    }

    /// Translate one virtual address.
    pub fn translate<B: Backend + ?Sized>(&mut self, b: &mut B, vaddr: u64) -> Result<Mapping, MemError> {
        if !self.canonical(vaddr) {
            return Err(MemError::NonCanonical { vaddr });
        }
        let mut table = self.root;
        let (mut w, mut u, mut nx) = (true, true, false);
        for level in (1..=self.levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let idx = ((vaddr >> shift) & 511) as usize;
            let e = self.entry(b, table, idx)?;
            if e & P == 0 {
                return Err(MemError::NotMapped { vaddr });
            }
            w &= e & RW != 0;
            u &= e & US != 0;
            nx |= e & NX != 0;
            let leaf = level == 1 || ((level == 2 || level == 3) && e & PS != 0);
            if leaf {
                let size = 1u64 << shift;
                let paddr = e & ADDR_MASK & !(size - 1);
                return Ok(Mapping { vaddr: vaddr & !(size - 1), paddr, size, writable: w, user: u, nx });
            }
            table = e & ADDR_MASK;
        }
        Err(MemError::NotMapped { vaddr })
    }

    /// Call `f` for every present page overlapping `[start, end)`, in address
    /// order, skipping empty subtrees without descending. `f` returns `false`
    /// to stop early.
    pub fn walk_range<B: Backend + ?Sized>(
        &mut self,
        b: &mut B,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(Mapping) -> bool,
    ) -> Result<(), MemError> {
        let top_shift = 12 + 9 * (self.levels - 1);
        let sign_bits = if self.levels == 5 { 57 } else { 48 };
        let mut budget = WalkBudget { steps: 0, deadline: Instant::now() + MAX_WALK_TIME };
        self.walk_level(b, self.root, self.levels, 0, top_shift, sign_bits, start, end, (true, true, false), f, &mut budget)
            .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_level<B: Backend + ?Sized>(
        &mut self,
        b: &mut B,
        table: u64,
        level: u32,
        base: u64,
        shift: u32,
        sign_bits: u32,
        start: u64,
        end: u64,
        perms: (bool, bool, bool),
        f: &mut dyn FnMut(Mapping) -> bool,
        budget: &mut WalkBudget,
    ) -> Result<bool, MemError> {
        let entries = *self.table(b, table)?;
        let span = 1u64 << shift;
        for (idx, &e) in entries.iter().enumerate() {
            budget.step()?;
            let mut va = base | ((idx as u64) << shift);
            if level == self.levels && va >> (sign_bits - 1) & 1 == 1 {
                va |= !0u64 << sign_bits; // sign-extend the top level
            }
            let last = va.wrapping_add(span - 1);
            if last < start || va >= end || e & P == 0 {
                continue;
            }
            let w = perms.0 && e & RW != 0;
            let u = perms.1 && e & US != 0;
            let nx = perms.2 || e & NX != 0;
            let leaf = level == 1 || ((level == 2 || level == 3) && e & PS != 0);
            if leaf {
                let paddr = e & ADDR_MASK & !(span - 1);
                if !f(Mapping { vaddr: va, paddr, size: span, writable: w, user: u, nx }) {
                    return Ok(false);
                }
            } else if !self.walk_level(b, e & ADDR_MASK, level - 1, va, shift - 9, sign_bits, start, end, (w, u, nx), f, budget)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

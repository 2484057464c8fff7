//! Identity-mapped boot page tables.
//!
//! The 64-bit boot protocol enters the kernel with paging on, so the VMM
//! provides a 4-level table mapping guest-virtual = guest-physical for the
//! first 4 GiB with 2 MiB pages: one PML4 entry, [`BOOT_PD_COUNT`] PDPT
//! entries, and that many page directories of 512 large pages each. The kernel
//! replaces these tables with its own early in boot.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_PD_COUNT, PDE_START, PDPTE_START, PML4_START};

/// Entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Entry bit (PD/PDPT level): maps a large page.
pub const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Size of one page-directory large page.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Entries per paging structure.
const ENTRIES: usize = 512;
/// Size of one paging structure.
const TABLE_SIZE: u64 = 0x1000;

/// Bytes mapped by the boot tables.
pub const IDENTITY_MAPPED_SIZE: u64 = BOOT_PD_COUNT * ENTRIES as u64 * LARGE_PAGE_SIZE;

/// Errors writing the boot page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// A table does not fit in guest memory.
    #[error("cannot write a boot page table at {addr:#x}")]
    Write {
        /// Guest-physical address of the table.
        addr: u64,
        /// What the memory layer reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

impl PagingError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            PagingError::Write { .. } => "page_tables_write",
        }
    }
}

fn table_bytes(entries: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let mut bytes = vec![0u8; TABLE_SIZE as usize];
    for (slot, entry) in bytes.chunks_exact_mut(8).zip(entries) {
        slot.copy_from_slice(&entry.to_le_bytes());
    }
    bytes
}

/// The boot page tables as `(guest address, 4 KiB page)` pairs: PML4, PDPT,
/// then the page directories. Unused entries are zero.
pub fn identity_page_tables() -> Vec<(u64, Vec<u8>)> {
    let rw = PTE_PRESENT | PTE_WRITABLE;
    let mut tables = Vec::with_capacity(2 + BOOT_PD_COUNT as usize);
    tables.push((PML4_START, table_bytes([PDPTE_START | rw])));
    tables.push((
        PDPTE_START,
        table_bytes((0..BOOT_PD_COUNT).map(|i| (PDE_START + i * TABLE_SIZE) | rw)),
    ));
    for pd in 0..BOOT_PD_COUNT {
        let first = pd * ENTRIES as u64;
        tables.push((
            PDE_START + pd * TABLE_SIZE,
            table_bytes(
                (first..first + ENTRIES as u64).map(|i| (i * LARGE_PAGE_SIZE) | rw | PTE_PAGE_SIZE),
            ),
        ));
    }
    tables
}

/// Writes the identity page tables into guest memory and returns the CR3
/// value that selects them.
pub fn setup_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, PagingError> {
    for (addr, bytes) in identity_page_tables() {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| PagingError::Write { addr, source })?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

    /// Walks the tables in guest memory like the MMU does; `None` if unmapped.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let read = |table: u64, index: u64| -> u64 {
            mem.read_obj(GuestAddress((table & ADDR_MASK) + index * 8))
                .unwrap()
        };
        let pml4e = read(cr3, (va >> 39) & 0x1ff);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read(pml4e, (va >> 30) & 0x1ff);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = read(pdpte, (va >> 21) & 0x1ff);
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        assert_ne!(pde & PTE_PAGE_SIZE, 0, "boot tables use 2 MiB pages only");
        assert_ne!(pde & PTE_WRITABLE, 0);
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & (LARGE_PAGE_SIZE - 1)))
    }

    #[test]
    fn tables_sit_between_the_stack_and_the_command_line() {
        use crate::arch::x86_64::layout::{BOOT_STACK_POINTER, CMDLINE_START};
        const {
            assert!(BOOT_STACK_POINTER <= PML4_START);
            assert!(PDPTE_START == PML4_START + TABLE_SIZE);
            assert!(PDE_START == PDPTE_START + TABLE_SIZE);
            assert!(PDE_START + BOOT_PD_COUNT * TABLE_SIZE <= CMDLINE_START);
        }
    }

    #[test]
    fn first_four_gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // Garbage from a previous boot must be overwritten, not left in unused entries.
        mem.write_slice(&[0xffu8; 0x7000], GuestAddress(PML4_START))
            .unwrap();
        let cr3 = setup_identity_page_tables(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        assert_eq!(IDENTITY_MAPPED_SIZE, 4 << 30);
        for va in [
            0,
            0x1234,
            0x20_0000,
            0x100_0000 + 0x5678,
            0xbfff_ffff,
            0xfee0_0000,
            0xffff_f000,
            IDENTITY_MAPPED_SIZE - 1,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, IDENTITY_MAPPED_SIZE), None);
        assert_eq!(translate(&mem, cr3, 1 << 39), None);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        let err = setup_identity_page_tables(&mem).unwrap_err();
        assert_eq!(err.cause(), "page_tables_write");
    }
}

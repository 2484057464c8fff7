//! Guest memory: anonymous host mappings that back guest RAM, and typed
//! access to them for the boot path, the patcher and the tests.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vsplice_patcher::model::backend::{Backend, BackendError, VcpuState};
use vsplice_patcher::arch::x86::paging::PageWalker;

/// The guest memory type used throughout the VMM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Why guest memory could not be created.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The host could not map the requested RAM.
    #[error("cannot map {size_mib} MiB of guest RAM")]
    Map {
        /// Requested RAM in MiB.
        size_mib: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

impl MemoryError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Map { .. } => "memory_map_failed",
        }
    }
}

/// Maps host memory for every guest RAM region.
pub fn create_guest_memory(regions: &[(GuestAddress, usize)]) -> Result<GuestMemory, MemoryError> {
    GuestMemoryMmap::from_ranges(regions).map_err(|source| MemoryError::Map {
        size_mib: regions.iter().map(|r| r.1 as u64).sum::<u64>() >> 20,
        source,
    })
}

/// Guest memory seen through the patcher's [`Backend`] trait, for reading
/// only what is in memory (no vCPU control): lets VMM code reuse the
/// patcher's page walker, e.g. to show the code at a crashed vCPU's RIP.
#[derive(Debug)]
pub struct PhysView<'a>(pub &'a GuestMemory);

impl Backend for PhysView<'_> {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        Err(BackendError::WrongState("a memory view cannot stop vCPUs"))
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        Err(BackendError::WrongState("a memory view cannot resume vCPUs"))
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.0.read_slice(buf, GuestAddress(gpa)).map_err(|_| BackendError::BadAddress { gpa, len: buf.len() as u64 })
    }

    fn write_phys(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BackendError> {
        Err(BackendError::WrongState("a memory view is read-only"))
    }
}

/// Up to `len` bytes of guest memory at virtual address `vaddr` under the
/// paging state `cr0`/`cr3`/`cr4` (physical when paging is off); stops at
/// the first byte that is not mapped.
pub fn read_virt(mem: &GuestMemory, cr0: u64, cr3: u64, cr4: u64, vaddr: u64, len: usize) -> Vec<u8> {
    const CR0_PG: u64 = 1 << 31;
    let mut view = PhysView(mem);
    let mut walker = PageWalker::new(cr3, cr4);
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let va = vaddr.wrapping_add(i);
        let pa = if cr0 & CR0_PG == 0 {
            va
        } else {
            match walker.translate(&mut view, va) {
                Ok(m) => m.phys(va),
                Err(_) => break,
            }
        };
        let mut b = [0u8];
        if view.read_phys(pa, &mut b).is_err() {
            break;
        }
        out.push(b[0]);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_are_mapped_and_writable() {
        let mem = create_guest_memory(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 32), 1 << 20),
        ])
        .unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beef_u32, GuestAddress((1 << 32) + 16)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress((1 << 32) + 16)).unwrap(), 0xdead_beef);
        assert!(mem.read_obj::<u32>(GuestAddress(2 << 20)).is_err());
    }

    #[test]
    fn read_virt_follows_page_tables_and_stops_at_unmapped() {
        let mem = create_guest_memory(&[(GuestAddress(0), 4 << 20)]).unwrap();
        // PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000, one 2 MiB page at
        // 0xffffffff80000000 backed by physical 0x200000.
        let (pml4, pdpt, pd) = (0x1000u64, 0x2000u64, 0x3000u64);
        mem.write_obj(pdpt | 3, GuestAddress(pml4 + 511 * 8)).unwrap();
        mem.write_obj(pd | 3, GuestAddress(pdpt + 510 * 8)).unwrap();
        mem.write_obj(0x20_0000u64 | 0x83, GuestAddress(pd)).unwrap();
        mem.write_slice(b"\x0f\x0b", GuestAddress(0x20_0000 + 0x1f_fffe)).unwrap();
        let va = 0xffff_ffff_8000_0000u64 + 0x1f_fffe;
        let cr0 = 1 << 31;
        assert_eq!(read_virt(&mem, cr0, pml4, 0, va, 15), b"\x0f\x0b".to_vec());
        // Paging off: the address is physical.
        assert_eq!(read_virt(&mem, 0, 0, 0, 0x20_0000 + 0x1f_fffe, 2), b"\x0f\x0b".to_vec());
    }
}

//! Guest memory: anonymous host mappings that back guest RAM, and typed
//! access to them for the boot path, the patcher and the tests.

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

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
}

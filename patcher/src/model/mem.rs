//! The seam between architecture and OS knowledge: kernel-virtual memory.
//!
//! Live guests implement it with [`crate::arch::x86::vmem::VirtMem`] (page walks
//! over a [`crate::model::backend::Backend`]); the offline image with
//! [`crate::os::linux::image::ImageMemory`] (vmlinux at its link addresses).

use thiserror::Error;

use crate::model::backend::BackendError;

/// Why a kernel-virtual read failed.
#[derive(Debug, Error)]
pub enum MemError {
    /// No present mapping for the address.
    #[error("virtual address {vaddr:#x} is not mapped")]
    NotMapped {
        /// The address.
        vaddr: u64,
    },
    /// The address is not canonical for the paging mode.
    #[error("virtual address {vaddr:#x} is not canonical")]
    NonCanonical {
        /// The address.
        vaddr: u64,
    },
    /// The range is not part of the kernel image file.
    #[error("{vaddr:#x}+{len:#x} is not in the kernel image")]
    NotInImage {
        /// Start.
        vaddr: u64,
        /// Length.
        len: u64,
    },
    /// A read larger than any kernel structure (a guest-controlled length):
    /// refused before allocating.
    #[error("refusing to read {len:#x} bytes at {vaddr:#x} (limit {limit:#x})")]
    TooLarge {
        /// Start.
        vaddr: u64,
        /// Length asked for.
        len: u64,
        /// [`MAX_READ_VEC`].
        limit: u64,
    },
    /// A page-table walk visited more entries than any real address space
    /// has in the range, or ran over its time bound (page-table loops).
    #[error("page-table walk stopped after {steps} entries: {why}")]
    WalkTooLong {
        /// Entries visited.
        steps: u64,
        /// Which bound.
        why: &'static str,
    },
    /// A guest pointer led to guest-physical memory that is not RAM (a
    /// device's registers, a hole, beyond guest memory): refused without
    /// reading it (see [`super::phys_filter`]).
    #[error("guest-physical {paddr:#x}+{len:#x} is not guest RAM (device memory or a hole): not accessed")]
    NotRam {
        /// Start of the access.
        paddr: u64,
        /// Its length.
        len: u64,
    },
    /// A word read ([`KernelMemory::read_words`]) at an address that is
    /// not 8-aligned: it could not be one load per word.
    #[error("word read at {vaddr:#x}, which is not 8-aligned")]
    Unaligned {
        /// The address.
        vaddr: u64,
    },
    /// The backend failed.
    #[error("backend read failed")]
    Backend(#[source] BackendError),
}

/// A backend's "not guest memory" is the same refusal as the filter's
/// (`not_ram`) whichever backend said it; every other failure stays the
/// backend's.
impl From<BackendError> for MemError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::BadAddress { gpa, len } => Self::NotRam { paddr: gpa, len },
            other => Self::Backend(other),
        }
    }
}

impl MemError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NotMapped { .. } => "not_mapped",
            Self::NonCanonical { .. } => "non_canonical",
            Self::NotInImage { .. } => "not_in_image",
            Self::TooLarge { .. } => "read_too_large",
            Self::WalkTooLong { .. } => "page_walk_too_long",
            Self::NotRam { .. } => "not_ram",
            Self::Unaligned { .. } => "unaligned",
            Self::Backend(_) => "backend",
        }
    }
}

/// The largest single read of kernel memory into a new vector (a backstop
/// under the per-structure caps: the largest real reads are the kernel's
/// read-only data, tens of MiB). A length computed from guest data above it
/// is refused ([`MemError::TooLarge`]) before anything is allocated.
pub const MAX_READ_VEC: usize = 256 << 20;

/// Read access to the kernel's virtual address space.
pub trait KernelMemory {
    /// Fill `buf` from `vaddr` (ranges may cross pages).
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Fill `out` with the little-endian words at `vaddr` (8-aligned, else
    /// [`MemError::Unaligned`]), each read as one aligned 8-byte load where
    /// the backend can make one ([`crate::model::backend::Backend::read_phys_words`]):
    /// counters read so while the guest runs are values it held, never
    /// torn. By default the bytes are read ([`KernelMemory::read`]).
    fn read_words(&mut self, vaddr: u64, out: &mut [u64]) -> Result<(), MemError> {
        if !vaddr.is_multiple_of(8) {
            return Err(MemError::Unaligned { vaddr });
        }
        crate::model::backend::read_words_via_bytes(out, |b| self.read(vaddr, b))
    }

    /// A hint that `len` bytes at `vaddr` will be read soon (see
    /// [`crate::model::backend::Backend::prefetch_phys`]). Default: nothing.
    fn prefetch(&mut self, vaddr: u64, len: usize) {
        let _ = (vaddr, len);
    }

    /// Read a new vector.
    fn read_vec(&mut self, vaddr: u64, len: usize) -> Result<Vec<u8>, MemError> {
        if len > MAX_READ_VEC {
            return Err(MemError::TooLarge { vaddr, len: len as u64, limit: MAX_READ_VEC as u64 });
        }
        let mut v = vec![0u8; len];
        self.read(vaddr, &mut v)?;
        Ok(v)
    }
    /// Little-endian u64.
    fn read_u64(&mut self, vaddr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(vaddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Little-endian u32.
    fn read_u32(&mut self, vaddr: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(vaddr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Little-endian i32.
    fn read_i32(&mut self, vaddr: u64) -> Result<i32, MemError> {
        Ok(self.read_u32(vaddr)? as i32)
    }
    /// A NUL-terminated string of at most `max` bytes (lossy UTF-8).
    fn read_cstr(&mut self, vaddr: u64, max: usize) -> Result<String, MemError> {
        let mut out = Vec::new();
        let mut va = vaddr;
        while out.len() < max {
            // Read up to the end of the page so a string near unmapped memory works.
            let n = (0x1000 - (va & 0xfff) as usize).min(max - out.len()).min(256);
            let chunk = self.read_vec(va, n)?;
            if let Some(i) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..i]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk);
            va = va.wrapping_add(n as u64);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl<M: KernelMemory + ?Sized> KernelMemory for &mut M {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read(vaddr, buf)
    }
    fn read_words(&mut self, vaddr: u64, out: &mut [u64]) -> Result<(), MemError> {
        (**self).read_words(vaddr, out)
    }
    fn prefetch(&mut self, vaddr: u64, len: usize) {
        (**self).prefetch(vaddr, len)
    }
}

/// A flat byte buffer at a virtual base (tests, and scans of a region read once).
#[derive(Debug, Clone)]
pub struct BufferMemory {
    /// Virtual address of `data[0]`.
    pub base: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

impl KernelMemory for BufferMemory {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let err = MemError::NotInImage { vaddr, len: buf.len() as u64 };
        let off = vaddr.checked_sub(self.base).ok_or(MemError::NotInImage { vaddr, len: buf.len() as u64 })? as usize;
        let src = self.data.get(off..off.checked_add(buf.len()).ok_or(MemError::NotInImage { vaddr, len: 0 })?).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

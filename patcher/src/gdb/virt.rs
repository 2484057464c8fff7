//! Kernel-virtual memory read through the stub's own address translation
//! (no physical access needed): the bootstrap path for stubs without QEMU's
//! physical memory mode.

use super::backend::GdbBackend;
use super::error::GdbError;
use crate::model::mem::{KernelMemory, MemError};

/// [`KernelMemory`] over a stopped [`GdbBackend`]'s virtual reads.
#[derive(Debug)]
pub struct StubVirtual<'a> {
    be: &'a mut GdbBackend,
}

impl<'a> StubVirtual<'a> {
    /// Read through `be` (which must be stopped).
    pub fn new(be: &'a mut GdbBackend) -> Self {
        Self { be }
    }
}

impl KernelMemory for StubVirtual<'_> {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self.be.read_virt(vaddr, buf) {
            Ok(()) => Ok(()),
            // The stub refuses unmapped addresses with an error code.
            Err(GdbError::Remote { .. }) => Err(MemError::NotMapped { vaddr }),
            Err(e) => Err(MemError::Backend(e.into())),
        }
    }
}

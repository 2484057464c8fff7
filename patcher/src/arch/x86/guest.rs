//! Guest access for the patcher: kernel-virtual reads and writes through the
//! kernel's page tables over a [`Backend`], physical access, and stop /
//! resume that drop every cached translation and page (the guest changes its
//! memory while it runs).

use crate::model::backend::{Backend, BackendError, VcpuState};
use crate::model::mem::{KernelMemory, MemError};
use crate::model::phys_filter::PhysFilter;
use crate::arch::x86::vmem::VirtMem;

/// A guest reached through a backend, addressed through the kernel's page tables.
#[derive(Debug)]
pub struct Guest<B: Backend> {
    vmem: VirtMem<B>,
    stopped: bool,
}

impl<B: Backend> Guest<B> {
    /// Guest access with `root` (physical address of the kernel's top-level
    /// page table) and `cr4` (for 4- or 5-level paging).
    pub fn new(backend: B, root: u64, cr4: u64) -> Self {
        Self { vmem: VirtMem::new(backend, root, cr4), stopped: false }
    }

    /// The backend itself.
    pub fn backend(&mut self) -> &mut B {
        self.vmem.backend()
    }

    /// Gives the backend back.
    pub fn into_backend(self) -> B {
        self.vmem.into_backend()
    }

    /// True between [`Guest::stop`] and [`Guest::resume`].
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Stops every vCPU.
    pub fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        self.vmem.flush();
        let regs = self.vmem.backend().stop()?;
        self.stopped = true;
        Ok(regs)
    }

    /// Resumes every vCPU.
    pub fn resume(&mut self) -> Result<(), BackendError> {
        self.vmem.flush();
        self.vmem.backend().resume()?;
        self.stopped = false;
        Ok(())
    }

    /// Where kernel-virtual reads and writes may lead (see [`PhysFilter`]).
    pub fn set_filter(&mut self, filter: PhysFilter) {
        self.vmem.set_filter(filter);
    }

    /// Forgets cached translations and pages (after page tables were written
    /// or the guest ran).
    pub fn flush(&mut self) {
        self.vmem.flush();
    }

    /// Physical address of a kernel-virtual address.
    pub fn virt_to_phys(&mut self, vaddr: u64) -> Result<u64, MemError> {
        self.vmem.virt_to_phys(vaddr)
    }

    /// Writes kernel-virtual memory (page by page through the translation).
    pub fn write_virt(&mut self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        while done < data.len() {
            let va = vaddr.wrapping_add(done as u64);
            let n = (0x1000 - (va & 0xfff) as usize).min(data.len() - done);
            let pa = self.vmem.phys_checked(va, n as u64)?;
            self.vmem.backend().write_phys(pa, &data[done..done + n])?;
            done += n;
        }
        // Cached pages may hold the old bytes.
        self.vmem.flush();
        Ok(())
    }

    /// Reads guest-physical memory.
    pub fn read_phys(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.vmem.backend().read_phys(pa, buf)
    }

    /// Writes guest-physical memory (drops cached pages).
    pub fn write_phys(&mut self, pa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.vmem.backend().write_phys(pa, data)?;
        self.vmem.flush();
        Ok(())
    }
}

impl<B: Backend> KernelMemory for Guest<B> {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if !self.stopped {
            // A running guest changes memory: never serve stale cached pages.
            self.vmem.flush();
        }
        self.vmem.read(vaddr, buf)
    }

    fn read_words(&mut self, vaddr: u64, out: &mut [u64]) -> Result<(), MemError> {
        if !self.stopped {
            self.vmem.flush();
        }
        self.vmem.read_words(vaddr, out)
    }

    fn prefetch(&mut self, vaddr: u64, len: usize) {
        // Translations are kept only while the guest is stopped.
        if self.stopped {
            self.vmem.prefetch(vaddr, len);
        }
    }
}

/// A backend for stubs that only allow memory access while the guest is
/// stopped (gdbstubs): a read or write refused with `WrongState` is retried
/// inside a short stop. The in-process VMM never needs it.
#[derive(Debug)]
pub struct AutoStop<B: Backend>(pub B);

impl<B: Backend> AutoStop<B> {
    fn stopped<T>(&mut self, mut op: impl FnMut(&mut B) -> Result<T, BackendError>) -> Result<T, BackendError> {
        match op(&mut self.0) {
            Err(BackendError::WrongState(_)) => {
                self.0.stop()?;
                let r = op(&mut self.0);
                self.0.resume()?;
                r
            }
            other => other,
        }
    }
}

impl<B: Backend> crate::model::backend_wrap::Wrapper for AutoStop<B> {
    type Inner = B;
    fn inner_ref(&self) -> &B {
        &self.0
    }
    fn inner_mut(&mut self) -> &mut B {
        &mut self.0
    }
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.stopped(|b| b.read_phys(gpa, buf))
    }
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.stopped(|b| b.write_phys(gpa, data))
    }
    fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        self.stopped(|b| b.read_phys_words(gpa, out))
    }
}
crate::forward_backend!([B: Backend] AutoStop<B>);

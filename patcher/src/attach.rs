//! Attach to a Linux guest through a gdbstub and make guest-physical access
//! work: QEMU's physical memory mode when offered, else the guest's direct
//! map found through kernel-virtual reads (glue between [`crate::gdb`] and
//! [`crate::os::linux`]).

use tracing::info;

use crate::model::backend::{Backend, BackendError, VcpuState};
use crate::gdb::virt::StubVirtual;
use crate::gdb::{GdbBackend, GdbError, GdbOptions};
use crate::os::linux::direct_map::find_direct_map;
use crate::os::linux::kernel::KernelError;

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Connecting or negotiating failed.
    #[error("attaching to the gdbstub failed")]
    Gdb(#[from] #[source] GdbError),
    /// Stopping the guest failed.
    #[error("stopping the guest failed")]
    Backend(#[from] #[source] BackendError),
    /// No physical mode and the direct map could not be found.
    #[error("no physical memory access: the guest's direct map was not found")]
    DirectMap(#[source] KernelError),
}

impl AttachError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Gdb(e) => e.cause(),
            Self::Backend(e) => e.cause(),
            Self::DirectMap(_) => "no_phys_access",
        }
    }
}

/// Connect, stop every vCPU and ensure physical access.
pub fn attach_gdb(addr: &str, opts: GdbOptions) -> Result<(GdbBackend, Vec<VcpuState>), AttachError> {
    let mut be = GdbBackend::connect(addr, opts)?;
    let vcpus = be.stop()?;
    if !be.has_phys_access() {
        let (base, _) = find_direct_map(&mut StubVirtual::new(&mut be)).map_err(AttachError::DirectMap)?;
        info!(page_offset_base = format_args!("{base:#x}"), "no physical mode: reading physical memory through the direct map");
        be.set_direct_map(base);
    }
    Ok((be, vcpus))
}

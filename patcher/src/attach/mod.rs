//! Attaching to a guest that vsplice does not run, through its gdbstub: one
//! way for every kind of kernel. Connect, stop every vCPU, make
//! guest-physical access work (QEMU's physical memory mode when offered;
//! else, for Linux, the guest's direct map found through kernel-virtual
//! reads; the test guest maps its memory 1:1), then identify the kernel:
//! the test guest from its ELF image, Linux from guest memory alone.
//!
//! With QEMU's RAM file and QMP socket ([`ShmSpec`]), memory then goes
//! through the file once [`shared::use_shared`] has proved it is this
//! guest's RAM; the stub keeps stop, resume and registers.
//!
//! The guest is handed back stopped, inside a [`ResumeGuard`]: whatever
//! the caller does next, and however it fails, the guest runs on when the
//! guard goes, unless the caller keeps it stopped on purpose (a
//! half-written transaction must not run). Every failure here after the
//! stop resumes the guest the same way.

mod resume_guard;
pub mod shared;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wrapper_tests;

pub use resume_guard::ResumeGuard;

use std::path::Path;

use tracing::info;

use crate::gdb::virt::StubVirtual;
use crate::gdb::{GdbBackend, GdbError, GdbOptions};
use crate::kernels::stock_linux::{LinuxTarget, LinuxTargetError};
use crate::kernels::testguest::TestGuest;
use crate::kernels::TargetKernel;
use crate::model::backend::{Backend, BackendError, VcpuState};
use crate::model::TargetKind;
use crate::os::elf::ElfImageError;
use crate::os::linux::direct_map::find_direct_map;
use crate::os::linux::kernel::KernelError;
use crate::os::linux::view::TaskSource;
use crate::shm::{ShmError, ShmSpec};

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
    /// The test guest needs its image (`--kernel`).
    #[error("--kernel IMAGE is required for --target testguest")]
    NoImage,
    /// The test guest's image is unusable.
    #[error("the test guest's image is unusable")]
    Image(#[source] ElfImageError),
    /// The RAM file could not be used (refused before any write).
    #[error("shared memory refused")]
    Shm(#[from] #[source] ShmError),
    /// The running Linux kernel could not be identified.
    #[error(transparent)]
    Linux(#[from] LinuxTargetError),
}

impl AttachError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Gdb(e) => e.cause(),
            Self::Backend(e) => e.cause(),
            Self::DirectMap(_) => "no_phys_access",
            Self::NoImage => "usage",
            Self::Image(e) => e.cause(),
            Self::Shm(e) => e.cause(),
            Self::Linux(e) => e.cause(),
        }
    }
}

/// What to attach to.
#[derive(Debug, Clone)]
pub struct AttachSpec<'a> {
    /// gdbstub address (`host:port` or a Unix socket path).
    pub gdb: &'a str,
    /// Kind of kernel the guest runs.
    pub kind: TargetKind,
    /// The test guest's ELF image (unused for Linux).
    pub image: Option<&'a Path>,
    /// Where a Linux guest's task list comes from.
    pub tasks: TaskSource,
    /// gdbstub options (time-outs).
    pub opts: GdbOptions,
    /// QEMU's RAM file and QMP socket: memory through the file.
    pub shm: Option<ShmSpec>,
}

/// An attached guest: its backend (the guest stopped) and its kernel.
#[derive(Debug)]
pub struct Attached {
    /// The gdbstub backend; every vCPU is stopped until the guard resumes
    /// (dropped, detached) or is told to keep the guest stopped.
    pub backend: ResumeGuard<GdbBackend>,
    /// The identified kernel.
    pub kernel: Box<dyn TargetKernel>,
}

/// Connect, stop every vCPU and ensure physical access. `linux`: find the
/// direct map when the stub has no physical mode. The guest is left
/// stopped on success (the caller detaches); on failure it runs on.
pub fn attach_gdb(addr: &str, opts: GdbOptions) -> Result<(GdbBackend, Vec<VcpuState>), AttachError> {
    attach_gdb_shm(addr, opts, None)
}

/// [`attach_gdb`], then memory through QEMU's RAM file when `shm` is given
/// (checked against the stub first; on a refusal the guest runs on).
pub fn attach_gdb_shm(addr: &str, opts: GdbOptions, shm: Option<&ShmSpec>) -> Result<(GdbBackend, Vec<VcpuState>), AttachError> {
    let (be, vcpus) = connect_stopped(addr, opts, TargetKind::Linux, shm)?;
    Ok((be.keep_stopped(), vcpus))
}

fn connect_stopped(
    addr: &str,
    opts: GdbOptions,
    kind: TargetKind,
    shm: Option<&ShmSpec>,
) -> Result<(ResumeGuard<GdbBackend>, Vec<VcpuState>), AttachError> {
    let mut be = ResumeGuard::new(GdbBackend::connect(addr, opts)?);
    let vcpus = be.stop()?;
    if !be.has_phys_access() && kind == TargetKind::Linux {
        let (base, _) = find_direct_map(&mut StubVirtual::new(&mut be)).map_err(AttachError::DirectMap)?;
        info!(page_offset_base = format_args!("{base:#x}"), "no physical mode: reading physical memory through the direct map");
        be.set_direct_map(base);
    }
    if let Some(spec) = shm {
        shared::use_shared(&mut be, &vcpus, spec)?;
    }
    Ok((be, vcpus))
}

/// Attaches to the guest behind `spec.gdb` and identifies its kernel. The
/// image of a test guest is checked before connecting, so a bad image never
/// stops the guest.
pub fn attach(spec: &AttachSpec<'_>) -> Result<Attached, AttachError> {
    match spec.kind {
        TargetKind::TestGuest => {
            let image = spec.image.ok_or(AttachError::NoImage)?;
            let kernel = TestGuest::open(image).map_err(AttachError::Image)?;
            let (backend, _) = connect_stopped(spec.gdb, spec.opts.clone(), spec.kind, spec.shm.as_ref())?;
            Ok(Attached { backend, kernel: Box::new(kernel) })
        }
        TargetKind::Linux => {
            let (mut backend, vcpus) = connect_stopped(spec.gdb, spec.opts.clone(), spec.kind, spec.shm.as_ref())?;
            // A kernel vsplice cannot patch must not stay frozen: on error the guard resumes it.
            let mut kernel = LinuxTarget::open(&mut *backend, vcpus)?;
            kernel.set_task_source(spec.tasks);
            Ok(Attached { backend, kernel: Box::new(kernel) })
        }
    }
}

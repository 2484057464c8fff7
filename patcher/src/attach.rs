//! Attaching to a guest that vsplice does not run, through its gdbstub: one
//! way for every kind of kernel. Connect, stop every vCPU, make
//! guest-physical access work (QEMU's physical memory mode when offered;
//! else, for Linux, the guest's direct map found through kernel-virtual
//! reads; the test guest maps its memory 1:1), then identify the kernel:
//! the test guest from its ELF image, Linux from guest memory alone.
//!
//! The guest is left stopped: the caller decides when it runs again (a
//! half-written transaction must not run).

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
}

/// An attached guest: its backend (the guest stopped) and its kernel.
#[derive(Debug)]
pub struct Attached {
    /// The gdbstub backend; every vCPU is stopped.
    pub backend: GdbBackend,
    /// The identified kernel.
    pub kernel: Box<dyn TargetKernel>,
}

/// Connect, stop every vCPU and ensure physical access. `linux`: find the
/// direct map when the stub has no physical mode.
pub fn attach_gdb(addr: &str, opts: GdbOptions) -> Result<(GdbBackend, Vec<VcpuState>), AttachError> {
    connect_stopped(addr, opts, TargetKind::Linux)
}

fn connect_stopped(addr: &str, opts: GdbOptions, kind: TargetKind) -> Result<(GdbBackend, Vec<VcpuState>), AttachError> {
    let mut be = GdbBackend::connect(addr, opts)?;
    let vcpus = be.stop()?;
    if !be.has_phys_access() && kind == TargetKind::Linux {
        let (base, _) = find_direct_map(&mut StubVirtual::new(&mut be)).map_err(AttachError::DirectMap)?;
        info!(page_offset_base = format_args!("{base:#x}"), "no physical mode: reading physical memory through the direct map");
        be.set_direct_map(base);
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
            let (backend, _) = connect_stopped(spec.gdb, spec.opts.clone(), spec.kind)?;
            Ok(Attached { backend, kernel: Box::new(kernel) })
        }
        TargetKind::Linux => {
            let (mut backend, vcpus) = connect_stopped(spec.gdb, spec.opts.clone(), spec.kind)?;
            let mut kernel = match LinuxTarget::open(&mut backend, vcpus) {
                Ok(k) => k,
                Err(e) => {
                    // A kernel vsplice cannot patch must not stay frozen.
                    if let Err(r) = backend.resume() {
                        tracing::warn!(error = %r, "resuming the guest after a refused attach failed");
                    }
                    return Err(e.into());
                }
            };
            kernel.set_task_source(spec.tasks);
            Ok(Attached { backend, kernel: Box::new(kernel) })
        }
    }
}

//! `--live-patch`: patches given on the `vsplice run` command line are
//! applied as soon as the guest kernel is up. The VMM polls the kernel's
//! "up" state between event-loop turns (for the test guest: its task table
//! is published) and applies each patch in order, printing one JSON result
//! per patch on stderr. A patch that is refused is reported and the guest
//! keeps running unpatched by it.
//!
//! Reboots: with `--on-reboot restart` the CLI boots the guest again in a
//! fresh VM and calls [`LivePatches::run`] again, so every boot gets the
//! patches once its kernel is up; by default a reboot request ends the VMM.
//! The list is the VM's desired state: patches applied through the API
//! (`vsplice run --api-sock`) are added to it and removed on revert, so a
//! rebooted guest gets them back too.
//!
//! An arena registry left by an earlier boot is recognised as stale (its
//! mapping is gone) and started afresh, so nothing carries over wrongly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use vsplice_patcher::model::TargetKind;
use vsplice_patcher::patch::{FormatError, PatchFile};
use vsplice_patcher::os::elf::ElfImageError;
use vsplice_patcher::kernels::testguest::TestGuest;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::txn::{Patcher, TxnConfig, TxnReport};

use crate::vmm::Vmm;
use crate::vstate::vcpu::GuestExit;

/// How often the VMM looks whether the kernel is up.
pub const POLL: Duration = Duration::from_millis(20);

/// Why the live patches cannot be used.
#[derive(Debug, Error)]
pub enum LivePatchError {
    /// A patch file is unusable.
    #[error("live patch {path}")]
    Patch {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// The patches are for a kind of kernel this VMM cannot patch yet.
    #[error(
        "live patch {path} is for a `{kind}` kernel; `vsplice run --live-patch` patches the test guest only so far \
         (Linux guests: `vsplice patch apply --gdb … --target linux`)"
    )]
    Kind {
        /// The file.
        path: PathBuf,
        /// Its target kind.
        kind: TargetKind,
    },
    /// The kernel image cannot serve as the patch target (no symbols, …).
    #[error("kernel image {path} cannot be used as the live-patch target")]
    Target {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: ElfImageError,
    },
}

impl LivePatchError {
    /// Stable machine-readable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Patch { .. } => "bad_patch",
            Self::Kind { .. } => "unsupported_target",
            Self::Target { .. } => "bad_target",
        }
    }
}

/// The desired patches, in the order they are applied after each boot:
/// where each came from (a file, or the API) and the patch.
pub type DesiredPatches = Vec<(PathBuf, PatchFile)>;

/// Adds a patch to the desired list (replacing one with the same id).
pub fn desire(list: &mut DesiredPatches, origin: PathBuf, patch: PatchFile) {
    list.retain(|(_, p)| p.manifest.id != patch.manifest.id);
    list.push((origin, patch));
}

/// Removes a patch (by id or name) from the desired list.
pub fn undesire(list: &mut DesiredPatches, id_or_name: &str) {
    list.retain(|(_, p)| p.manifest.id != id_or_name && p.manifest.name != id_or_name);
}

/// Patches to apply at boot, with the target they need.
#[derive(Debug)]
pub struct LivePatches {
    patches: DesiredPatches,
    target: TestGuest,
}

impl LivePatches {
    /// Reads every patch file and opens the kernel image as their target.
    pub fn open(kernel: &Path, paths: &[PathBuf]) -> Result<Self, LivePatchError> {
        let mut patches = Vec::new();
        for path in paths {
            let p = PatchFile::read(path).map_err(|source| LivePatchError::Patch { path: path.clone(), source })?;
            if p.manifest.target.kind != TargetKind::TestGuest {
                return Err(LivePatchError::Kind { path: path.clone(), kind: p.manifest.target.kind });
            }
            patches.push((path.clone(), p));
        }
        let target = TestGuest::open(kernel).map_err(|source| LivePatchError::Target { path: kernel.to_owned(), source })?;
        Ok(Self { patches, target })
    }

    /// The target every patch is for (the test guest image booted).
    pub fn target(&self) -> &TestGuest {
        &self.target
    }

    /// The target and the desired list, borrowed apart (a patcher borrows the
    /// one while the API edits the other).
    pub fn parts_mut(&mut self) -> (&TestGuest, &mut DesiredPatches) {
        (&self.target, &mut self.patches)
    }

    /// Number of patches.
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// Applies every patch in order (the kernel must be up).
    pub fn apply_all(&self, vmm: &mut Vmm) -> Vec<TxnReport> {
        let arena = vmm.arena();
        let mut patcher = Patcher::new(vmm, &self.target as &dyn TargetKernel, TxnConfig::new(arena));
        self.patches
            .iter()
            .map(|(path, p)| {
                let r = patcher.apply(p);
                if r.is_ok() {
                    tracing::info!(patch = %path.display(), downtime_us = r.timings.downtime_us, "live patch applied");
                } else {
                    tracing::warn!(patch = %path.display(), cause = r.cause.name(), message = %r.message, "live patch refused");
                }
                r
            })
            .collect()
    }

    /// One turn of the boot-time application: when the patches are not yet
    /// applied in this boot and the kernel is up, applies them all and hands
    /// each result to `report`; `applied` is set once they are.
    pub fn apply_when_up(&self, vmm: &mut Vmm, applied: &mut bool, mut report: impl FnMut(&TxnReport)) {
        if *applied {
            return;
        }
        let arena = vmm.arena();
        let up = Patcher::new(&mut *vmm, &self.target as &dyn TargetKernel, TxnConfig::new(arena)).kernel_up();
        if up {
            for r in self.apply_all(vmm) {
                report(&r);
            }
            *applied = true;
        }
    }

    /// Runs the guest until it ends, applying the patches once its kernel is
    /// up; `report` gets each result.
    pub fn run(&self, vmm: &mut Vmm, mut report: impl FnMut(&TxnReport)) -> Result<Option<GuestExit>, std::io::Error> {
        let mut applied = false;
        loop {
            if let Some(exit) = vmm.wait_for_exit(Some(POLL))? {
                return Ok(Some(exit));
            }
            self.apply_when_up(vmm, &mut applied, &mut report);
        }
    }
}

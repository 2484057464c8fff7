//! `--live-patch` and the VM's desired patch list: patches given on the
//! `vsplice run` command line are applied as soon as the guest kernel is
//! up, one JSON result per patch on stderr. A refused patch is reported and
//! the guest keeps running unpatched by it.
//!
//! Both kinds of kernel: the test guest (its ELF image is the target) and a
//! stock Linux kernel, identified from guest memory after each boot
//! ([`target`]). The VMM polls between event-loop turns: identification,
//! then the kernel's "up" state (test guest: its task table is published;
//! Linux: `system_state == SYSTEM_RUNNING`), then the patches in order.
//!
//! Reboots: with `--on-reboot restart` the CLI boots the guest again in a
//! fresh VM with a fresh [`BootTarget`], so every boot gets the patches once
//! its kernel is up; by default a reboot request ends the VMM. The list is
//! the VM's desired state: patches applied through the API (`vsplice run
//! --api-sock`) are added to it and removed on revert, so a rebooted guest
//! gets them back too (as kpatch's `install` does).
//!
//! An arena registry left by an earlier boot is recognised as stale (its
//! mapping is gone) and started afresh, so nothing carries over wrongly.

pub mod target;
#[cfg(test)]
mod tests;

pub use target::{ArenaGuest, BootTarget, LiveGuest, TargetSource, Unavailable};

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use vsplice_patcher::model::TargetKind;
use vsplice_patcher::patch::format::read_bounded;
use vsplice_patcher::patch::trust::{TrustPolicy, ALLOW_UNSIGNED_NOTE};
use vsplice_patcher::patch::{FormatError, PatchFile};
use vsplice_patcher::txn::causes::trust_refusal;
use vsplice_patcher::os::elf::ElfImageError;
use vsplice_patcher::kernels::testguest::TestGuest;
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::txn::TxnReport;

use crate::loader::detect_format;
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
    /// A patch is for another kind of kernel than the one booted.
    #[error("live patch {path} is for a `{kind}` kernel, but {kernel} is {booted}")]
    Kind {
        /// The file.
        path: PathBuf,
        /// Its target kind.
        kind: TargetKind,
        /// The kernel image.
        kernel: PathBuf,
        /// What the image is.
        booted: &'static str,
    },
    /// The patches are for different kinds of kernel.
    #[error("live patches {first} and {other} are for different kinds of kernel (`{first_kind}`, `{other_kind}`)")]
    Mixed {
        /// The first patch.
        first: PathBuf,
        /// Its kind.
        first_kind: TargetKind,
        /// One for another kind.
        other: PathBuf,
        /// Its kind.
        other_kind: TargetKind,
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
            Self::Mixed { .. } => "mixed_targets",
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

/// The desired patches and the kind of kernel they are for.
#[derive(Debug)]
pub struct LivePatches {
    patches: DesiredPatches,
    source: TargetSource,
    /// Notes the trust policy gave a patch (by id), added to each of its reports.
    notes: Vec<(String, Vec<String>)>,
}

impl LivePatches {
    /// Reads every patch file and works out the target from the kernel
    /// image: the test guest's ELF is its own target; any other image
    /// (a bzImage, a vmlinux) boots Linux, identified after each boot.
    /// Every patch must be for that kind of kernel.
    pub fn open(kernel: &Path, paths: &[PathBuf], tasks: TaskSource) -> Result<Self, LivePatchError> {
        Self::open_trusted(kernel, paths, tasks, &TrustPolicy::none(), &mut |_, _| {})
    }

    /// [`Self::open`] through a trust policy: each file is read once
    /// (bounded, regular files only), checked, then parsed; a patch the
    /// policy refuses (`unsigned`, `bad_signature`, `untrusted_key`) goes to
    /// `refused` with its report and is left out — the guest boots without it.
    pub fn open_trusted(
        kernel: &Path,
        paths: &[PathBuf],
        tasks: TaskSource,
        trust: &TrustPolicy,
        refused: &mut dyn FnMut(&Path, TxnReport),
    ) -> Result<Self, LivePatchError> {
        let mut patches: DesiredPatches = Vec::new();
        let mut notes = Vec::new();
        for path in paths {
            let bad = |source| LivePatchError::Patch { path: path.clone(), source };
            let bytes = read_bounded(path).map_err(bad)?;
            let admitted = match trust.admit(&bytes) {
                Ok(a) => a,
                Err(e) => {
                    refused(path, trust_refusal(&e));
                    continue;
                }
            };
            let p = PatchFile::parse(&bytes).map_err(bad)?;
            notes.push((p.manifest.id.clone(), admitted.notes));
            if let Some((first, f)) = patches.first() {
                if f.manifest.target.kind != p.manifest.target.kind {
                    return Err(LivePatchError::Mixed {
                        first: first.clone(),
                        first_kind: f.manifest.target.kind,
                        other: path.clone(),
                        other_kind: p.manifest.target.kind,
                    });
                }
            }
            patches.push((path.clone(), p));
        }
        let wanted = patches.first().map(|(path, p)| (path.clone(), p.manifest.target.kind));
        let test_guest = TestGuest::open(kernel);
        let source = match (wanted, test_guest) {
            (None | Some((_, TargetKind::TestGuest)), Ok(t)) => TargetSource::TestGuest(t),
            (Some((path, TargetKind::Linux)), Ok(_)) => {
                return Err(LivePatchError::Kind { path, kind: TargetKind::Linux, kernel: kernel.to_owned(), booted: "the vsplice test guest" })
            }
            (Some((path, TargetKind::TestGuest)), Err(_)) => {
                return Err(LivePatchError::Kind { path, kind: TargetKind::TestGuest, kernel: kernel.to_owned(), booted: "not the vsplice test guest" })
            }
            (None | Some((_, TargetKind::Linux)), Err(source)) => {
                // Not the test guest: a Linux image the loader can boot.
                detect_format(kernel).map_err(|_| LivePatchError::Target { path: kernel.to_owned(), source })?;
                TargetSource::Linux { tasks }
            }
        };
        Ok(Self { patches, source, notes })
    }

    /// The kind of kernel booted.
    pub fn source(&self) -> &TargetSource {
        &self.source
    }

    /// The desired list.
    pub fn desired(&self) -> &DesiredPatches {
        &self.patches
    }

    /// The desired list, to edit (the API's apply and revert).
    pub fn desired_mut(&mut self) -> &mut DesiredPatches {
        &mut self.patches
    }

    /// Number of patches.
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// One turn of a boot over `guest`: identification and the "up" state
    /// ([`BootTarget::poll`]), then the patches once it is up, each result
    /// to `report`.
    pub fn turn<G: LiveGuest>(&self, boot: &mut BootTarget, guest: &mut G, report: &mut dyn FnMut(&TxnReport)) {
        let mut identify = target::identify_linux::<G>(match &self.source {
            TargetSource::Linux { tasks } => *tasks,
            TargetSource::TestGuest(_) => TaskSource::Auto,
        });
        if let Err(e) = boot.poll(guest, std::time::Instant::now(), &mut identify) {
            tracing::warn!(error = %e, "looking at the guest's kernel failed");
        }
        let notes = &self.notes;
        let mut with_notes = |r: &TxnReport| match notes.iter().find(|(id, n)| r.patch_id.as_ref() == Some(id) && !n.is_empty()) {
            Some((_, n)) => {
                if n.iter().any(|x| x == ALLOW_UNSIGNED_NOTE) {
                    eprintln!("vsplice: warning: live patch {}: {ALLOW_UNSIGNED_NOTE}", r.patch_name.as_deref().unwrap_or("?"));
                }
                let mut r = r.clone();
                r.notes.extend(n.iter().cloned());
                report(&r);
            }
            None => report(r),
        };
        boot.apply_when_up(guest, &self.patches, &mut with_notes);
    }

    /// Runs the guest until it ends, applying the patches once its kernel is
    /// up; `report` gets each result.
    pub fn run(&self, vmm: &mut Vmm, mut report: impl FnMut(&TxnReport)) -> Result<Option<GuestExit>, std::io::Error> {
        let mut boot = BootTarget::new(&self.source);
        loop {
            if let Some(exit) = vmm.wait_for_exit(Some(POLL))? {
                return Ok(Some(exit));
            }
            self.turn(&mut boot, vmm, &mut report);
        }
    }
}

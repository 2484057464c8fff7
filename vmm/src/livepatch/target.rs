//! The patch target of one boot: what kernel the guest runs, found anew
//! after every (re)boot, and the boot-time application of the desired
//! patches once that kernel is up.
//!
//! - The test guest is known before it boots: its ELF image gives the
//!   target ([`TargetSource::TestGuest`]).
//! - A Linux guest is identified from guest memory alone, as `vsplice
//!   attach` does (kallsyms, KASLR slide, build-id, BTF): between event-loop
//!   turns the VMM stops the guest briefly and tries
//!   [`LinuxTarget::open`], backing off from [`IDENTIFY_FIRST`] to
//!   [`IDENTIFY_MAX`] while the kernel is still booting. When its
//!   `system_state` reaches RUNNING the kernel is identified once more, so
//!   what was read early in boot (CPU features, the ORC tables, the return
//!   thunk) is what the running kernel has. A kernel that cannot be patched
//!   at all (no BTF, a symbol missing) is recorded as unsupported with its
//!   cause and never stopped for again.
//!
//! The guest is reached through [`LiveGuest`]: a [`Backend`] with an arena
//! and an agent doorbell. The VMM is one; a tests-only adapter over QEMU's
//! gdbstub is another, which is how this code runs against real Debian
//! kernels on hosts without hardware virtualization.

use std::time::{Duration, Instant};

use vsplice_patcher::kernels::stock_linux::{LinuxTarget, LinuxTargetError};
use vsplice_patcher::kernels::testguest::TestGuest;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::{Backend, BackendError, VcpuState};
use vsplice_patcher::model::{chain, ArenaRange};
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::txn::{Cause, Patcher, TxnConfig, TxnReport};

use super::DesiredPatches;

/// First wait between identification attempts of a booting Linux kernel.
pub const IDENTIFY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between identification attempts.
pub const IDENTIFY_MAX: Duration = Duration::from_secs(2);

/// A running guest as the live-patch driver needs it.
pub trait LiveGuest: Backend {
    /// The patch arena.
    fn live_arena(&self) -> ArenaRange;
    /// The guest agent's descriptor, announced through the doorbell.
    fn agent_doorbell(&self) -> Option<u64>;
}

impl LiveGuest for crate::vmm::Vmm {
    fn live_arena(&self) -> ArenaRange {
        self.arena()
    }

    fn agent_doorbell(&self) -> Option<u64> {
        self.agent().gpa()
    }
}

/// A guest reached through any backend, with the arena it was booted with
/// reserved: how the driver runs over QEMU's gdbstub (tests on hosts
/// without VMX/SVM) and over the patcher's fakes.
#[derive(Debug)]
pub struct ArenaGuest<B: Backend> {
    /// The backend.
    pub backend: B,
    /// The arena.
    pub arena: ArenaRange,
    /// The agent's descriptor, when something announced it.
    pub doorbell: Option<u64>,
}

impl<B: Backend> vsplice_patcher::model::backend_wrap::Wrapper for ArenaGuest<B> {
    type Inner = B;
    fn inner_ref(&self) -> &B {
        &self.backend
    }
    fn inner_mut(&mut self) -> &mut B {
        &mut self.backend
    }
}
vsplice_patcher::forward_backend!([B: Backend] ArenaGuest<B>);

impl<B: Backend> LiveGuest for ArenaGuest<B> {
    fn live_arena(&self) -> ArenaRange {
        self.arena
    }
    fn agent_doorbell(&self) -> Option<u64> {
        self.doorbell
    }
}

/// What kind of kernel the VM boots, known before it boots.
#[derive(Debug, Clone)]
pub enum TargetSource {
    /// The purpose-built test guest, from its ELF image.
    TestGuest(TestGuest),
    /// A stock Linux kernel, identified from guest memory after each boot.
    Linux {
        /// Where its task list comes from.
        tasks: TaskSource,
    },
}

/// An identified kernel.
#[derive(Debug)]
enum Identified {
    TestGuest(TestGuest),
    Linux(Box<LinuxTarget>),
    /// Any other target (the unit tests' fakes).
    Other(Box<dyn TargetKernel>),
}

impl Identified {
    fn kernel(&self) -> &dyn TargetKernel {
        match self {
            Self::TestGuest(t) => t,
            Self::Linux(t) => &**t,
            Self::Other(t) => &**t,
        }
    }
}

/// Why there is no target (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The kernel is still booting or not identified yet; try again later.
    NotYet(String),
    /// The kernel cannot be patched by vsplice (its stable cause and why).
    Unsupported {
        /// The identification's stable cause (`no_btf`, `symbol_missing`, …).
        cause: &'static str,
        /// Why.
        message: String,
    },
}

impl Unavailable {
    /// The human explanation.
    pub fn message(&self) -> String {
        match self {
            Self::NotYet(m) => m.clone(),
            Self::Unsupported { cause, message } => format!("{message} [{cause}]"),
        }
    }
}

/// An attempt to identify a kernel: the guest (stopped) and its vCPUs.
pub type IdentifyFn<'a, G> = &'a mut dyn FnMut(&mut G, Vec<VcpuState>) -> Result<Identifiable, LinuxTargetError>;

/// What an identification produces.
#[derive(Debug)]
pub struct Identifiable(Identified);

impl Identifiable {
    /// A live Linux kernel.
    pub fn linux(t: LinuxTarget) -> Self {
        Self(Identified::Linux(Box::new(t)))
    }

    /// Any other kernel (tests).
    pub fn other(t: Box<dyn TargetKernel>) -> Self {
        Self(Identified::Other(t))
    }
}

/// Identifies a Linux kernel with the given task source.
pub fn identify_linux<G: Backend>(tasks: TaskSource) -> impl FnMut(&mut G, Vec<VcpuState>) -> Result<Identifiable, LinuxTargetError> {
    move |guest, vcpus| {
        let mut t = LinuxTarget::open(guest, vcpus)?;
        t.set_task_source(tasks);
        Ok(Identifiable::linux(t))
    }
}

/// The target of one boot.
#[derive(Debug)]
pub struct BootTarget {
    kernel: Option<Identified>,
    /// Identified again once up (Linux: what early boot showed may change).
    confirmed: bool,
    up: bool,
    unsupported: Option<(&'static str, String)>,
    attempts: u32,
    next_try: Option<Instant>,
    last_error: Option<String>,
    /// The desired patches were applied (or refused) in this boot.
    applied: bool,
}

impl BootTarget {
    /// The target of a new boot of a VM booting `source`.
    pub fn new(source: &TargetSource) -> Self {
        let kernel = match source {
            TargetSource::TestGuest(t) => Some(Identified::TestGuest(t.clone())),
            TargetSource::Linux { .. } => None,
        };
        let confirmed = kernel.is_some();
        Self { kernel, confirmed, up: false, unsupported: None, attempts: 0, next_try: None, last_error: None, applied: false }
    }

    /// The identified kernel, or why there is none.
    pub fn kernel(&self) -> Result<&dyn TargetKernel, Unavailable> {
        if let Some((cause, message)) = &self.unsupported {
            return Err(Unavailable::Unsupported { cause, message: message.clone() });
        }
        match &self.kernel {
            Some(k) => Ok(k.kernel()),
            None => Err(Unavailable::NotYet(match &self.last_error {
                Some(e) => format!("the guest's Linux kernel is not identified yet (attempt {}: {e})", self.attempts),
                None => "the guest's Linux kernel is not identified yet (still booting)".to_owned(),
            })),
        }
    }

    /// True once the kernel is up (and, for Linux, identified again then).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Identification attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// One turn, with the guest running: when due, tries to identify the
    /// kernel (a short stop); once identified, looks whether the kernel is
    /// up (a Linux kernel identified during boot is identified again then);
    /// hands the agent's doorbell to a Linux target. The guest runs on
    /// whatever happens here.
    pub fn poll<G: LiveGuest>(&mut self, guest: &mut G, now: Instant, identify: IdentifyFn<'_, G>) -> Result<(), BackendError> {
        if self.unsupported.is_none() && !self.up {
            match (&self.kernel, self.confirmed) {
                (None, _) if self.next_try.is_none_or(|t| now >= t) => self.try_identify(guest, now, identify)?,
                (Some(_), false) if self.kernel_up(guest) => {
                    self.kernel = None;
                    self.try_identify(guest, now, identify)?;
                }
                _ => {}
            }
            if self.confirmed && self.kernel_up(guest) {
                self.up = true;
            }
        }
        self.hand_doorbell(guest);
        Ok(())
    }

    fn hand_doorbell<G: LiveGuest>(&mut self, guest: &G) {
        if let Some(Identified::Linux(t)) = &mut self.kernel {
            t.set_agent_doorbell(guest.agent_doorbell());
        }
    }

    fn kernel_up<G: LiveGuest>(&self, guest: &mut G) -> bool {
        let Some(k) = &self.kernel else { return false };
        let arena = guest.live_arena();
        Patcher::new(&mut *guest, k.kernel(), TxnConfig::new(arena)).kernel_up()
    }

    fn try_identify<G: LiveGuest>(&mut self, guest: &mut G, now: Instant, identify: IdentifyFn<'_, G>) -> Result<(), BackendError> {
        let vcpus = guest.stop()?;
        // Real mode, or the kernel's early page tables: nothing to read yet.
        let paging = vcpus.first().is_some_and(VcpuState::long_mode);
        let result = if paging { Some(identify(guest, vcpus)) } else { None };
        guest.resume()?;
        match result {
            None => self.next_try = Some(now + IDENTIFY_FIRST),
            Some(Ok(Identifiable(k))) => {
                self.attempts += 1;
                self.kernel = Some(k);
                // Identified while up: this is the one; else again at RUNNING.
                self.confirmed = self.kernel_up(guest);
                self.next_try = None;
                tracing::info!(attempts = self.attempts, up = self.confirmed, "guest kernel identified");
            }
            Some(Err(e)) => {
                self.attempts += 1;
                if e.is_permanent() {
                    tracing::warn!(cause = e.cause(), error = %chain(&e), "the guest's kernel cannot be patched");
                    self.unsupported = Some((e.cause(), chain(&e)));
                } else {
                    let wait = IDENTIFY_FIRST.saturating_mul(1 << self.attempts.min(8)).min(IDENTIFY_MAX);
                    tracing::debug!(attempt = self.attempts, error = %chain(&e), ?wait, "guest kernel not identified yet");
                    self.last_error = Some(format!("{} [{}]", chain(&e), e.cause()));
                    self.next_try = Some(now + wait);
                }
            }
        }
        Ok(())
    }

    /// When the patches are not yet applied in this boot and the kernel is
    /// up, applies each in order and hands each result to `report`; on a
    /// kernel vsplice cannot patch, reports each refused
    /// (`unsupported_target`). Nothing happens before either.
    pub fn apply_when_up<G: LiveGuest>(&mut self, guest: &mut G, desired: &DesiredPatches, report: &mut dyn FnMut(&TxnReport)) {
        if self.applied {
            return;
        }
        if let Some((cause, message)) = &self.unsupported {
            for (_, p) in desired {
                let r = TxnReport::refused(
                    "apply",
                    Some(p.manifest.id.clone()),
                    Some(p.manifest.name.clone()),
                    Cause::UnsupportedTarget,
                    Some(cause),
                    format!("the guest's kernel cannot be patched: {message}"),
                );
                report(&r);
            }
            self.applied = true;
            return;
        }
        let (Some(k), true) = (&self.kernel, self.up) else { return };
        let arena = guest.live_arena();
        let mut patcher = Patcher::new(&mut *guest, k.kernel(), TxnConfig::new(arena));
        for (path, p) in desired {
            let r = patcher.apply(p);
            if r.is_ok() {
                tracing::info!(patch = %path.display(), downtime_us = r.timings.downtime_us, "live patch applied");
            } else {
                tracing::warn!(patch = %path.display(), cause = r.cause.name(), message = %r.message, "live patch refused");
            }
            report(&r);
        }
        self.applied = true;
    }

    /// True once the desired patches were applied (or refused) in this boot.
    pub fn applied(&self) -> bool {
        self.applied
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vsplice_patcher::model::backend_wrap::Probe;

    /// Every Backend method reaches the backend inside (none falls back to
    /// the trait's default, e.g. no direct reads over QEMU's RAM file).
    #[test]
    fn arena_guest_forwards_every_method() {
        let mut g = ArenaGuest { backend: Probe::default(), arena: ArenaRange::from_mib(0x4000_0000, 64).unwrap(), doorbell: None };
        assert_eq!(Probe::call_all(&mut g), (true, 0x5eed));
        assert_eq!(*g.backend.calls.borrow(), Probe::ALL);
    }
}

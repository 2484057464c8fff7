//! The backend `vsplice patch` works through when attached to a gdbstub,
//! and the fault injection of the crash-safety tests.
//!
//! Fault injection exists only in a binary built with the cargo feature
//! `fault-injection` (off by default; `tests/run-all.sh` turns it on): then
//! `VSPLICE_FAULT_KILL_AFTER_WRITES=N` makes `vsplice patch` send itself
//! SIGKILL instead of its N+1-th guest-memory write, and `vsplice --version`
//! says `(fault-injection)` so a test can tell such a binary apart. Without
//! the feature the variable is ignored and none of this code is built.

use vsplice_patcher::arch::x86::guest::AutoStop;
use vsplice_patcher::attach::ResumeGuard;
use vsplice_patcher::gdb::backend::GdbBackend;

/// The gdbstub, resumed when dropped, with short stops around memory accesses.
pub type Guarded = AutoStop<ResumeGuard<GdbBackend>>;

/// The attached backend: the guarded gdbstub with short stops around memory
/// accesses, and with the feature, [`KillAfter`] around that.
#[cfg(feature = "fault-injection")]
pub type Attached = KillAfter<Guarded>;
/// The attached backend: the guarded gdbstub with short stops around memory accesses.
#[cfg(not(feature = "fault-injection"))]
pub type Attached = Guarded;

/// Wraps the attached gdbstub (with the feature: in the kill counter the environment asks for).
pub fn attached(backend: Guarded) -> Attached {
    #[cfg(feature = "fault-injection")]
    let backend = KillAfter::from_env(backend);
    backend
}

/// The guarded gdbstub connection under the wrappers.
pub fn into_gdb(attached: Attached) -> ResumeGuard<GdbBackend> {
    #[cfg(feature = "fault-injection")]
    let attached = attached.inner;
    attached.0
}

/// The gdbstub connection under the wrappers, still attached (its state).
pub fn gdb(attached: &Attached) -> &GdbBackend {
    #[cfg(feature = "fault-injection")]
    let attached = &attached.inner;
    &attached.0
}

/// The gdbstub connection under the wrappers, still attached (its liveness).
pub fn gdb_mut(attached: &mut Attached) -> &mut GdbBackend {
    #[cfg(feature = "fault-injection")]
    let attached = &mut attached.inner;
    &mut attached.0
}

#[cfg(feature = "fault-injection")]
pub use self::kill_after::KillAfter;

#[cfg(feature = "fault-injection")]
mod kill_after {
    use vsplice_patcher::model::backend::{Backend, BackendError};

    /// The environment variable that sets how many writes go through.
    pub const KILL_AFTER_WRITES_VAR: &str = "VSPLICE_FAULT_KILL_AFTER_WRITES";

    /// A backend that lets N guest-memory writes through, then kills the
    /// process (SIGKILL, as a crash would) instead of the next one.
    #[derive(Debug)]
    pub struct KillAfter<B: Backend> {
        pub(super) inner: B,
        writes_left: Option<u64>,
    }

    impl<B: Backend> KillAfter<B> {
        /// Kills after `writes` writes; `None` never kills.
        pub fn new(inner: B, writes: Option<u64>) -> Self {
            Self { inner, writes_left: writes }
        }

        /// Kills after as many writes as `VSPLICE_FAULT_KILL_AFTER_WRITES` says (unset: never).
        pub fn from_env(inner: B) -> Self {
            let writes = std::env::var(KILL_AFTER_WRITES_VAR).ok().and_then(|v| v.parse().ok());
            if let Some(n) = writes {
                tracing::info!(writes = n, "fault injection: killing this process after {n} guest-memory writes");
            }
            Self::new(inner, writes)
        }
    }

    impl<B: Backend> vsplice_patcher::model::backend_wrap::Wrapper for KillAfter<B> {
        type Inner = B;
        fn inner_ref(&self) -> &B {
            &self.inner
        }
        fn inner_mut(&mut self) -> &mut B {
            &mut self.inner
        }
        fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
            match self.writes_left {
                Some(0) => {
                    // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety
                    // preconditions; the process ends here, as a crash would end it.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                    return Err(BackendError::Transport("killed".into()));
                }
                Some(ref mut n) => *n -= 1,
                None => {}
            }
            self.inner.write_phys(gpa, data)
        }
    }
    vsplice_patcher::forward_backend!([B: Backend] KillAfter<B>);

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use super::*;
        use vsplice_patcher::model::backend::VcpuState;
        use vsplice_patcher::model::backend_wrap::Probe;

        /// Every Backend method reaches the inner backend (none falls back
        /// to the trait's default, e.g. the byte path for word reads).
        #[test]
        fn kill_after_forwards_every_method() {
            let mut k = KillAfter::new(Probe::default(), None);
            assert_eq!(Probe::call_all(&mut k), (true, 0x5eed));
            assert_eq!(*k.inner.calls.borrow(), Probe::ALL);
        }

        #[derive(Debug, Default)]
        struct Memory(Vec<(u64, Vec<u8>)>);

        impl Backend for Memory {
            fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
                Ok(Vec::new())
            }
            fn resume(&mut self) -> Result<(), BackendError> {
                Ok(())
            }
            fn read_phys(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
                buf.fill(0);
                Ok(())
            }
            fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
                self.0.push((gpa, data.to_vec()));
                Ok(())
            }
        }

        #[test]
        fn writes_before_the_limit_go_through() {
            // The kill itself cannot be exercised in-process: the CLI tests do that.
            let mut be = KillAfter::new(Memory::default(), Some(2));
            be.write_phys(0x1000, &[1]).unwrap();
            be.write_phys(0x2000, &[2, 3]).unwrap();
            assert_eq!(be.writes_left, Some(0));
            assert_eq!(be.inner.0, vec![(0x1000, vec![1]), (0x2000, vec![2, 3])]);
            let mut unlimited = KillAfter::new(Memory::default(), None);
            for i in 0..100 {
                unlimited.write_phys(i, &[0]).unwrap();
            }
            assert_eq!(unlimited.inner.0.len(), 100);
        }
    }
}

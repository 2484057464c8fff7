//! [`ResumeGuard`]: a stopped guest runs on whatever happens next.
//!
//! A front end that stops a guest (attach, identify, read the registry,
//! run a transaction) has many ways to fail after the stop: a kernel it
//! cannot patch, a wrong arena, a bad patch file, an I/O error, a panic.
//! Rather than resuming on each of those paths, it holds the backend in a
//! guard that resumes the guest when dropped. The one deliberate exception,
//! a half-written transaction that must not run until it is recovered, says
//! so explicitly with [`ResumeGuard::keep_stopped`].

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

use crate::gdb::{GdbBackend, GdbError};
use crate::model::backend::Backend;

/// A backend whose guest is resumed when the guard is dropped, unless
/// [`ResumeGuard::keep_stopped`] took it out first.
#[derive(Debug)]
pub struct ResumeGuard<B: Backend> {
    inner: B,
}

impl<B: Backend> ResumeGuard<B> {
    /// Guards `backend`: from now on, dropping the guard resumes the guest.
    pub fn new(backend: B) -> Self {
        Self { inner: backend }
    }

    /// Disarms the guard and hands the backend back as it is: the guest
    /// stays stopped if it is (a half-written transaction).
    pub fn keep_stopped(self) -> B {
        let me = ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped nor used again, so `inner` is moved
        // out exactly once and the guard's `Drop` (the resume) does not run.
        unsafe { std::ptr::read(&me.inner) }
    }
}

impl ResumeGuard<GdbBackend> {
    /// Lets the guest run and ends the debugging session (gdb `D`).
    pub fn detach(self) -> Result<(), GdbError> {
        self.keep_stopped().detach()
    }
}

impl<B: Backend> Drop for ResumeGuard<B> {
    fn drop(&mut self) {
        match self.inner.resume() {
            Ok(()) => tracing::debug!("the guest runs on"),
            Err(e) => tracing::warn!(error = %e, cause = e.cause(), "resuming the guest failed; it may stay stopped"),
        }
    }
}

impl<B: Backend> Deref for ResumeGuard<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B: Backend> DerefMut for ResumeGuard<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Backend> crate::model::backend_wrap::Wrapper for ResumeGuard<B> {
    type Inner = B;
    fn inner_ref(&self) -> &B {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}
crate::forward_backend!([B: Backend] ResumeGuard<B>);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::backend::{BackendError, VcpuState};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts resumes; "stopped" until resumed.
    #[derive(Debug, Default)]
    struct Counting {
        resumes: Arc<AtomicUsize>,
    }

    impl Backend for Counting {
        fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
            Ok(Vec::new())
        }
        fn resume(&mut self) -> Result<(), BackendError> {
            self.resumes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn read_phys(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
            buf.fill(0);
            Ok(())
        }
        fn write_phys(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn failing_command(g: &mut ResumeGuard<Counting>) -> Result<(), BackendError> {
        g.stop()?;
        Err(BackendError::WrongState("the command failed"))
    }

    #[test]
    fn an_error_path_resumes_on_drop() {
        let resumes = Arc::new(AtomicUsize::new(0));
        let mut g = ResumeGuard::new(Counting { resumes: resumes.clone() });
        assert!(failing_command(&mut g).is_err());
        assert_eq!(resumes.load(Ordering::SeqCst), 0, "nothing resumes before the guard goes");
        drop(g);
        assert_eq!(resumes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panic_resumes_too() {
        let resumes = Arc::new(AtomicUsize::new(0));
        let r = resumes.clone();
        let joined = std::thread::spawn(move || {
            let _g = ResumeGuard::new(Counting { resumes: r });
            panic!("a bug after the stop");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(resumes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn keep_stopped_disarms() {
        let resumes = Arc::new(AtomicUsize::new(0));
        let g = ResumeGuard::new(Counting { resumes: resumes.clone() });
        let inner = g.keep_stopped();
        drop(inner);
        assert_eq!(resumes.load(Ordering::SeqCst), 0, "a half-written transaction stays stopped");
    }
}

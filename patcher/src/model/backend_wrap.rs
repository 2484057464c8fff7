//! Backends that wrap another backend (fault injection, auto-stop, resume
//! guards, the arena holder): every [`Backend`] method forwarded by one
//! mechanism, so a wrapper cannot silently drop a method it did not list.
//!
//! A wrapper implements [`Wrapper`] — where its inner backend is, and the
//! methods it changes — and gets its [`Backend`] impl from
//! [`crate::forward_backend!`], which calls `Wrapper`'s version of *every*
//! `Backend` method. `Wrapper`'s defaults forward to the inner backend, so
//! a method the wrapper does not override reaches the inner one, never
//! `Backend`'s own default (which for `read_phys_words`, `direct_reads` and
//! `prefetch_phys` is the slow byte path: fault tests would then exercise
//! only the page-cache reads). A method added to [`Backend`] is added here,
//! to `Wrapper` and to the macro, in this one file;
//! `every_method_reaches_the_inner_backend` calls each through a wrapper.

use super::backend::{Backend, BackendError, VcpuState};

/// A backend around another: [`Backend`]'s methods, each forwarding to
/// [`Wrapper::inner_mut`] unless the wrapper overrides it.
pub trait Wrapper {
    /// The wrapped backend.
    type Inner: Backend + ?Sized;
    /// The wrapped backend.
    fn inner_ref(&self) -> &Self::Inner;
    /// The wrapped backend.
    fn inner_mut(&mut self) -> &mut Self::Inner;

    /// [`Backend::stop`].
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        self.inner_mut().stop()
    }
    /// [`Backend::resume`].
    fn resume(&mut self) -> Result<(), BackendError> {
        self.inner_mut().resume()
    }
    /// [`Backend::read_phys`].
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.inner_mut().read_phys(gpa, buf)
    }
    /// [`Backend::write_phys`].
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.inner_mut().write_phys(gpa, data)
    }
    /// [`Backend::read_phys_words`].
    fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        self.inner_mut().read_phys_words(gpa, out)
    }
    /// [`Backend::direct_reads`].
    fn direct_reads(&self) -> bool {
        self.inner_ref().direct_reads()
    }
    /// [`Backend::prefetch_phys`].
    fn prefetch_phys(&self, gpa: u64, len: usize) {
        self.inner_ref().prefetch_phys(gpa, len)
    }
}

/// `impl Backend` for a [`Wrapper`]: every method calls the wrapper's.
/// `forward_backend!([B: Backend] MyWrapper<B>);` (generics in brackets,
/// empty for none).
#[macro_export]
macro_rules! forward_backend {
    ([$($gen:tt)*] $t:ty) => {
        impl<$($gen)*> $crate::model::backend::Backend for $t {
            fn stop(&mut self) -> Result<Vec<$crate::model::backend::VcpuState>, $crate::model::backend::BackendError> {
                <Self as $crate::model::backend_wrap::Wrapper>::stop(self)
            }
            fn resume(&mut self) -> Result<(), $crate::model::backend::BackendError> {
                <Self as $crate::model::backend_wrap::Wrapper>::resume(self)
            }
            fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), $crate::model::backend::BackendError> {
                <Self as $crate::model::backend_wrap::Wrapper>::read_phys(self, gpa, buf)
            }
            fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), $crate::model::backend::BackendError> {
                <Self as $crate::model::backend_wrap::Wrapper>::write_phys(self, gpa, data)
            }
            fn read_phys_words(&mut self, gpa: u64, out: &mut [u64]) -> Result<(), $crate::model::backend::BackendError> {
                <Self as $crate::model::backend_wrap::Wrapper>::read_phys_words(self, gpa, out)
            }
            fn direct_reads(&self) -> bool {
                <Self as $crate::model::backend_wrap::Wrapper>::direct_reads(self)
            }
            fn prefetch_phys(&self, gpa: u64, len: usize) {
                <Self as $crate::model::backend_wrap::Wrapper>::prefetch_phys(self, gpa, len)
            }
        }
    };
}

/// A mutable reference to a backend is a backend, so readers that own their
/// backend (e.g. the virtual-memory reader) can also borrow one.
impl<B: Backend + ?Sized> Wrapper for &mut B {
    type Inner = B;
    fn inner_ref(&self) -> &B {
        self
    }
    fn inner_mut(&mut self) -> &mut B {
        self
    }
}
crate::forward_backend!([B: Backend + ?Sized] &mut B);

/// A backend that records which of its methods were called (with
/// non-default answers everywhere), to prove a wrapper forwards each.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct Probe {
    /// Method names, in call order.
    pub calls: std::cell::RefCell<Vec<&'static str>>,
}

#[cfg(any(test, feature = "testing"))]
impl Probe {
    fn saw(&self, m: &'static str) {
        self.calls.borrow_mut().push(m);
    }

    /// Calls every [`Backend`] method once on `b` (which wraps a probe) and
    /// returns what `b` answered for `direct_reads` and the first word read.
    pub fn call_all(b: &mut dyn Backend) -> (bool, u64) {
        let _ = (*b).stop();
        let mut buf = [0u8; 8];
        let _ = (*b).read_phys(0x1000, &mut buf);
        let _ = (*b).write_phys(0x1000, &buf);
        let mut w = [0u64; 1];
        let _ = (*b).read_phys_words(0x1000, &mut w);
        (*b).prefetch_phys(0x1000, 8);
        let direct = (*b).direct_reads();
        let _ = (*b).resume();
        (direct, w[0])
    }

    /// Every method [`Probe::call_all`] calls, in its order.
    pub const ALL: [&'static str; 7] = ["stop", "read_phys", "write_phys", "read_phys_words", "prefetch_phys", "direct_reads", "resume"];
}

#[cfg(any(test, feature = "testing"))]
impl Backend for Probe {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        self.saw("stop");
        Ok(vec![VcpuState::default()])
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.saw("resume");
        Ok(())
    }
    fn read_phys(&mut self, _gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.saw("read_phys");
        buf.fill(0x11);
        Ok(())
    }
    fn write_phys(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), BackendError> {
        self.saw("write_phys");
        Ok(())
    }
    fn read_phys_words(&mut self, _gpa: u64, out: &mut [u64]) -> Result<(), BackendError> {
        self.saw("read_phys_words");
        out.fill(0x5eed);
        Ok(())
    }
    fn direct_reads(&self) -> bool {
        self.saw("direct_reads");
        true
    }
    fn prefetch_phys(&self, _gpa: u64, _len: usize) {
        self.saw("prefetch_phys");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_method_reaches_the_inner_backend() {
        let mut p = Probe::default();
        let mut r = &mut p;
        assert_eq!(Probe::call_all(&mut r), (true, 0x5eed));
        assert_eq!(*p.calls.borrow(), Probe::ALL);
    }
}

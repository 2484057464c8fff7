//! Test fixtures shared by the patcher's unit tests and, with the `testing`
//! feature, by other crates' tests: a guest in host RAM behind the backend
//! seam, fault injection around any backend, a fake kernel target and patch
//! files for it. Nothing here needs KVM, QEMU or a compiler.
//!
//! - [`ram`]: [`ram::RamGuest`], guest-physical pages with their own page
//!   tables and scripted vCPUs;
//! - [`corrupt`]: [`corrupt::Corrupting`], a hostile guest on demand: chosen
//!   bytes in a real guest's memory while it is stopped, its own bytes back
//!   before it runs;
//! - [`faults`]: [`faults::Faulty`], writes that fail, or a backend that
//!   dies, after a budget of writes;
//! - [`kernel`]: [`kernel::FakeKernel`], a [`crate::kernels::TargetKernel`]
//!   with a settable task list;
//! - [`patch`]: [`patch::FakePatch`], `.vsp` patches for it.
//!
//! It sits above the layers it fakes (`patcher/tests/layers.rs`), and test
//! code of any layer may use it.

pub mod corrupt;
pub mod faults;
pub mod kernel;
pub mod patch;
pub mod ram;

pub use corrupt::{Corrupting, Corruption};
pub use faults::{Fault, Faulty};
pub use kernel::FakeKernel;
pub use patch::FakePatch;
pub use ram::RamGuest;

/// Every wrapper of this crate forwards every `Backend` method to the
/// backend inside (`model::backend_wrap`): none falls back to the trait's
/// default (e.g. the byte path for word reads, no direct reads).
#[cfg(test)]
mod wrapper_tests {
    use crate::arch::x86::guest::AutoStop;
    use crate::attach::ResumeGuard;
    use crate::model::backend::Backend;
    use crate::model::backend_wrap::{Probe, Wrapper};

    use super::{Corrupting, Faulty};

    /// Calls every method through `w` and checks the probe inside saw each.
    fn forwards<W: Backend>(mut w: W, probe: impl Fn(&W) -> &Probe) {
        assert_eq!(Probe::call_all(&mut w), (true, 0x5eed), "{}", std::any::type_name::<W>());
        assert_eq!(*probe(&w).calls.borrow(), Probe::ALL, "{}", std::any::type_name::<W>());
    }

    #[test]
    fn the_crates_wrappers_forward_every_method() {
        forwards(AutoStop(Probe::default()), |w| &w.0);
        forwards(ResumeGuard::new(Probe::default()), |w| w.inner_ref());
        forwards(Faulty::new(Probe::default()), |w| w.inner_ref());
        forwards(Corrupting::new(Probe::default(), false), |w| w.inner_ref());
    }
}

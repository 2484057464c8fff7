//! Every wrapper of this crate forwards every `Backend` method to the
//! backend inside (`model::backend_wrap`): none falls back to the trait's
//! default (e.g. the byte path for word reads, no direct reads). Here, in
//! the highest layer that has one ([`super::ResumeGuard`]), so that the
//! test sees every wrapper without a lower layer using a higher one.

use super::ResumeGuard;
use crate::arch::x86::guest::AutoStop;
use crate::model::backend::Backend;
use crate::model::backend_wrap::{Probe, Wrapper};
use crate::testing::{Corrupting, Faulty};

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

//! What the transaction tests share: a fake kernel in a RAM guest, a
//! patcher on it with no back-off, and reads of the text and the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::{Patcher, TxnConfig};
use crate::arena::codec;
use crate::arena::registry::Registry;
use crate::model::backend::Backend;
use crate::patch::PatchFile;
use crate::testing::kernel::{arena, START_KERNEL_MAP};
use crate::testing::{FakeKernel, FakePatch, RamGuest};

/// Pauses without back-off, at most `attempts` of them.
pub fn config(attempts: u32) -> TxnConfig {
    let mut c = TxnConfig::new(arena());
    c.max_attempts = attempts;
    c.backoff = Duration::ZERO;
    c.max_backoff = Duration::ZERO;
    c
}

/// A patcher on `backend` (a new process: nothing but the guest is shared).
pub fn patcher<B: Backend>(backend: B, k: &FakeKernel) -> Patcher<'_, B> {
    Patcher::new(backend, k, config(4))
}

/// A patch for the fake kernel.
pub fn patch(name: &str, funcs: &[&str]) -> PatchFile {
    funcs.iter().fold(FakePatch::new(name), |p, f| p.replace(f)).build(&FakeKernel::new()).unwrap()
}

/// The first `len` bytes of a kernel function as the guest holds them.
pub fn text(g: &RamGuest, k: &FakeKernel, func: &str, len: usize) -> Vec<u8> {
    g.bytes(k.addr(func) - START_KERNEL_MAP, len)
}

/// The jump site of a fake function (after its ftrace NOP).
pub fn site(k: &FakeKernel, func: &str) -> u64 {
    k.addr(func) + 5
}

/// The 7 bytes at a fake function's jump site.
pub fn site_bytes(g: &RamGuest, k: &FakeKernel, func: &str) -> Vec<u8> {
    g.bytes(site(k, func) - START_KERNEL_MAP, 7)
}

/// Where the jump at `func`'s site goes, if it holds one.
pub fn jump_target(g: &RamGuest, k: &FakeKernel, func: &str) -> Option<u64> {
    let b = site_bytes(g, k, func);
    (b[0] == 0xe9).then(|| (site(k, func) + 5).wrapping_add(i32::from_le_bytes([b[1], b[2], b[3], b[4]]) as i64 as u64))
}

/// The registry in the guest.
pub fn registry(g: &mut RamGuest) -> Option<Registry> {
    codec::load(g, arena().phys()).unwrap().map(|l| l.registry)
}

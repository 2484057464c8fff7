//! Apply and revert on the fake kernel: the jump is written and taken back
//! out, the registry records the patch and forgets it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testutil::{jump_target, patch, patcher, registry, site_bytes, text};
use super::Cause;
use crate::arena::registry::PatchState;
use crate::testing::FakeKernel;

#[test]
fn apply_writes_the_jump_and_revert_restores_the_bytes() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let pristine = text(&g, &k, "fake_a", 0x40);
    let p = patch("p1", &["fake_a"]);
    let r = patcher(&mut g, &k).apply(&p);
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!((r.timings.attempts, g.stops, g.resumes), (1, 1, 1));
    let reg = registry(&mut g).unwrap();
    assert!(reg.intent.is_none());
    assert_eq!(reg.patches.len(), 1);
    let rec = &reg.patches[0];
    assert_eq!((rec.id.as_str(), rec.state), (p.manifest.id.as_str(), PatchState::Applied));
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(rec.funcs[0].new_addr));
    assert_eq!(&site_bytes(&g, &k, "fake_a")[5..], &[0x90, 0x90]);
    assert_eq!(text(&g, &k, "fake_b", 0x40), k.pristine("fake_b"));
    let r = patcher(&mut g, &k).revert("p1");
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!(text(&g, &k, "fake_a", 0x40), pristine);
    let reg = registry(&mut g).unwrap();
    assert!(reg.patches.is_empty() && reg.intent.is_none());
    assert_eq!(reg.history[0].how, "reversed");
    assert_eq!(patcher(&mut g, &k).revert("p1").cause, Cause::AlreadyReversed);
}

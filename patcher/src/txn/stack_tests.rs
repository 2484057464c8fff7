//! Patches on patches: stacking on one function and reverting in order
//! (out of order is refused, naming the patch above), and a cumulative
//! patch that replaces every applied patch in one pause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testutil::{jump_target, patch, patcher, registry, text};
use super::Cause;
use crate::testing::{FakeKernel, FakePatch};

fn new_addr(g: &mut crate::testing::RamGuest, id: &str, func: &str) -> u64 {
    let reg = registry(g).unwrap();
    reg.patch(id).unwrap().funcs.iter().find(|f| f.name == func).unwrap().new_addr
}

#[test]
fn stacked_patches_revert_top_first_and_out_of_order_is_refused() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let (p1, p2) = (patch("p1", &["fake_a"]), patch("p2", &["fake_a"]));
    assert!(patcher(&mut g, &k).apply(&p1).is_ok());
    let r = patcher(&mut g, &k).apply(&p2);
    assert!(r.is_ok(), "{}", r.to_json());
    let (new1, new2) = (new_addr(&mut g, &p1.manifest.id, "fake_a"), new_addr(&mut g, &p2.manifest.id, "fake_a"));
    assert_ne!(new1, new2);
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(new2));
    // p2 matched fake_a as built (p1's jump taken out) and records p1's jump as what it covers.
    let reg = registry(&mut g).unwrap();
    assert_eq!(reg.patch(&p2.manifest.id).unwrap().funcs[0].site.orig, reg.patch(&p1.manifest.id).unwrap().funcs[0].site.new);
    let r = patcher(&mut g, &k).revert("p1");
    assert_eq!(r.cause, Cause::OutOfOrder, "{}", r.to_json());
    assert!(r.message.contains("revert p2 first"), "{}", r.message);
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(new2), "a refused revert writes nothing");
    assert!(patcher(&mut g, &k).revert("p2").is_ok());
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(new1), "p1's jump is back");
    assert!(patcher(&mut g, &k).revert("p1").is_ok());
    assert_eq!(text(&g, &k, "fake_a", 0x40), k.pristine("fake_a"));
    assert_eq!(patcher(&mut g, &k).apply(&p1).cause, Cause::Ok, "a reverted patch applies again");
    assert_eq!(patcher(&mut g, &k).apply(&p1).cause, Cause::AlreadyApplied);
}

#[test]
fn a_cumulative_patch_replaces_every_applied_patch_at_once() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let (p1, p2) = (patch("p1", &["fake_a"]), patch("p2", &["fake_b"]));
    let c = FakePatch::new("c").replace("fake_a").replace("fake_c").cumulative().build(&k).unwrap();
    assert!(patcher(&mut g, &k).apply(&p1).is_ok());
    assert!(patcher(&mut g, &k).apply(&p2).is_ok());
    let r = patcher(&mut g, &k).apply(&c);
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!(r.superseded, vec![p1.manifest.id.clone(), p2.manifest.id.clone()]);
    assert_eq!(jump_target(&g, &k, "fake_a"), Some(new_addr(&mut g, &c.manifest.id, "fake_a")));
    assert_eq!(jump_target(&g, &k, "fake_c"), Some(new_addr(&mut g, &c.manifest.id, "fake_c")));
    assert_eq!(text(&g, &k, "fake_b", 0x40), k.pristine("fake_b"), "p2's function got its own bytes back");
    let reg = registry(&mut g).unwrap();
    assert_eq!(reg.patches.len(), 1);
    // Reverting the cumulative patch restores the kernel's own bytes, not p1's jump.
    assert_eq!(reg.patches[0].funcs[0].site.orig, k.pristine("fake_a")[5..12].to_vec());
    let replaced: Vec<(&str, &str, Option<&str>)> = reg.history.iter().map(|h| (h.name.as_str(), h.how.as_str(), h.by.as_deref())).collect();
    let by = Some(c.manifest.id.as_str());
    assert_eq!(replaced, vec![("p1", "replaced", by), ("p2", "replaced", by)]);
    let r = patcher(&mut g, &k).revert(&p2.manifest.id);
    assert_eq!(r.cause, Cause::AlreadyReversed, "{}", r.to_json());
    assert!(r.message.contains("replaced"), "{}", r.message);
    assert!(patcher(&mut g, &k).revert("c").is_ok());
    for f in ["fake_a", "fake_b", "fake_c"] {
        assert_eq!(text(&g, &k, f, 0x40), k.pristine(f), "{f}");
    }
}

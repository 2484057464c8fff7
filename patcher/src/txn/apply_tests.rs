//! Apply and revert on the fake kernel: the jump is written and taken back
//! out, the registry records the patch and forgets it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testutil::{jump_target, patch, patcher, registry, site_bytes, text};
use super::Cause;
use crate::arena::registry::PatchState;
use crate::model::TargetKind;
use crate::testing::{FakeKernel, FakePatch};

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

#[test]
fn refusals_touch_nothing() {
    let k = FakeKernel::new();
    let fresh = k.guest();
    let p = patch("p1", &["fake_a"]);
    let mut other_build = p.clone();
    other_build.manifest.target.build_id = Some("00".repeat(20));
    let mut other_kind = p.clone();
    other_kind.manifest.target.kind = TargetKind::Linux;
    let mut unknown = p.clone();
    unknown.manifest.replacements[0].old = "fake_z".into();
    let mut changed = p.clone();
    changed.manifest.replacements[0].sha256 = "00".repeat(32);
    let mut moved = p.clone();
    moved.manifest.replacements[0].old_addr += 16;
    for (what, p, cause, reason) in [
        ("an address that is not the symbol's", moved, Cause::NoMatch, "old_addr"),
        ("another build", other_build, Cause::NoMatch, "build_id"),
        ("another kind", other_kind, Cause::NoMatch, "target_kind"),
        ("an unknown function", unknown, Cause::FailedToFind, "unknown_symbol"),
        ("changed code", changed, Cause::NoMatch, "run_pre"),
    ] {
        let mut g = fresh.clone();
        let r = patcher(&mut g, &k).apply(&p);
        assert_eq!((r.cause, r.reason.as_deref()), (cause, Some(reason)), "{what}: {}", r.to_json());
        assert_eq!((g.writes, g.stops), (0, 0), "{what}: the guest was touched");
    }
    // Not up: nothing is even read from the registry.
    let mut g = fresh.clone();
    k.set_up(false);
    assert_eq!(patcher(&mut g, &k).apply(&p).cause, Cause::NotUp);
    assert_eq!((g.reads, g.writes), (0, 0));
    k.set_up(true);
    // The arena is mapped once, by the first apply's pause: two page-directory
    // entries (a data and a code slot) more than the next single-site apply.
    let mut g = fresh.clone();
    assert!(patcher(&mut g, &k).apply(&p).is_ok());
    let first = g.writes;
    let q = FakePatch::new("p2").replace("fake_b").build(&k).unwrap();
    assert!(patcher(&mut g, &k).apply(&q).is_ok());
    assert_eq!(first - (g.writes - first), 2, "{first} writes, then {}", g.writes - first);
}

/// A build-id missing on either side is never a silent pass: a Linux patch
/// without one is refused, otherwise the report says it was not checked.
#[test]
fn a_missing_build_id_is_refused_for_linux_and_noted_otherwise() {
    let unnamed = |k: &FakeKernel| {
        let mut p = FakePatch::new("p1").replace("fake_a").build(k).unwrap();
        p.manifest.target.build_id = None;
        p
    };
    let linux = FakeKernel::new().with_kind(TargetKind::Linux);
    let mut g = linux.guest();
    let r = patcher(&mut g, &linux).apply(&unnamed(&linux));
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::NoMatch, Some("build_id_missing")), "{}", r.to_json());
    assert_eq!(text(&g, &linux, "fake_a", 0x40), linux.pristine("fake_a"));
    // The test-guest kind: applied, with a note.
    let k = FakeKernel::new();
    let mut g = k.guest();
    let r = patcher(&mut g, &k).apply(&unnamed(&k));
    assert!(r.is_ok(), "{}", r.to_json());
    assert!(r.notes.iter().any(|n| n.contains("the patch names no build-id") && n.contains("not checked")), "{:?}", r.notes);
    // A kernel without a build-id: applied, with a note.
    let k = FakeKernel::new().without_build_id();
    let mut g = k.guest();
    let r = patcher(&mut g, &k).apply(&patch("p2", &["fake_b"]));
    assert!(r.is_ok(), "{}", r.to_json());
    assert!(r.notes.iter().any(|n| n.contains("the guest kernel has no build-id")), "{:?}", r.notes);
    // Both named: no note.
    let mut g = FakeKernel::new().guest();
    let k = FakeKernel::new();
    let r = patcher(&mut g, &k).apply(&patch("p3", &["fake_c"]));
    assert!(r.is_ok() && r.notes.iter().all(|n| !n.contains("build-id")), "{:?}", r.notes);
}

/// The manifest's description, CVE ids and version are kept in the registry
/// and shown by `status` (GET /patches); a registry with no room for them
/// drops them (after the ORC rows), newest first, with a note.
#[test]
fn the_operator_fields_reach_the_status_and_give_way_when_the_registry_is_full() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let mut p = patch("p1", &["fake_a"]);
    p.manifest.info.description = Some("fixes fake_a".into());
    p.manifest.info.cves = vec!["CVE-2026-0001".into()];
    p.manifest.info.version = Some("3".into());
    let r = patcher(&mut g, &k).apply(&p);
    assert!(r.is_ok(), "{}", r.to_json());
    let st = patcher(&mut g, &k).status().unwrap();
    let s = &st.patches[0];
    assert_eq!((s.description.as_deref(), s.cves.as_slice(), s.version.as_deref()), (Some("fixes fake_a"), &["CVE-2026-0001".to_owned()][..], Some("3")));
    let json = st.to_json();
    assert!(json.contains("\"description\": \"fixes fake_a\"") && json.contains("CVE-2026-0001"), "{json}");
    // Without them the fields are absent from the JSON.
    let q = patch("p2", &["fake_b"]);
    assert!(patcher(&mut g, &k).apply(&q).is_ok());
    let st = patcher(&mut g, &k).status().unwrap();
    assert!(st.patches[1].description.is_none() && st.patches[1].cves.is_empty());
    // A registry with no room: the operator fields go, with a note.
    let mut reg = registry(&mut g).unwrap();
    for p in &mut reg.patches {
        p.orc = None;
        p.info = Some(crate::patch::manifest::PatchInfo { description: Some("x".repeat(200 << 10)), ..Default::default() });
    }
    let notes = crate::txn::orc::fit_rows(&mut reg);
    assert!(reg.patches.iter().all(|p| p.info.is_none()), "{notes:?}");
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("p2") && notes[0].contains("description"), "{notes:?}");
}

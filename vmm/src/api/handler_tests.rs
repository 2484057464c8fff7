//! The request handler on the patcher's fakes (no KVM): apply, list, one
//! patch, revert and recover answer as the API documents, edit the desired
//! list only on success, and refuse unknown patches without a transaction.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vsplice_patcher::model::CheckMode;
use vsplice_patcher::testing::kernel::arena;
use vsplice_patcher::testing::{FakeKernel, FakePatch};
use vsplice_patcher::txn::{Cause, Patcher, TxnConfig, TxnReport};

use super::handler::{serve, serve_with, Served};
use super::request::txn_http_status;
use vsplice_patcher::patch::sign;
use vsplice_patcher::patch::trust::{TrustPolicy, ALLOW_UNSIGNED_NOTE};
use super::request::{ApiCause, ApiRequest, ApiResponse, ApplyRequest, PatchSource};
use crate::livepatch::DesiredPatches;

fn config() -> TxnConfig {
    let mut c = TxnConfig::new(arena());
    c.max_attempts = 2;
    c.backoff = Duration::ZERO;
    c.max_backoff = Duration::ZERO;
    c
}

fn bytes(name: &str, func: &str) -> Vec<u8> {
    FakePatch::new(name).replace(func).build(&FakeKernel::new()).unwrap().to_bytes().unwrap()
}

fn apply(source: PatchSource) -> ApiRequest {
    ApiRequest::Apply(ApplyRequest { source, check: None, attempts: None, when_loaded: false })
}

fn txn(s: &Served) -> &TxnReport {
    match &s.response {
        ApiResponse::Txn(r) => r,
        other => panic!("not a report: {other:?}"),
    }
}

fn api_error(s: &Served) -> ApiCause {
    match &s.response {
        ApiResponse::Error(e) => e.cause,
        other => panic!("not an error: {other:?}"),
    }
}

#[test]
fn apply_list_get_revert_recover_and_the_desired_list() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let mut desired = DesiredPatches::new();
    let mut p = Patcher::new(&mut g, &k, config());
    let s = serve(&mut p, &mut desired, apply(PatchSource::Bytes(bytes("p1", "fake_a"))));
    assert!(txn(&s).is_ok(), "{}", txn(&s).to_json());
    assert_eq!(s.report.as_ref().map(|r| r.cause), Some(Cause::Ok));
    assert_eq!(s.status.as_ref().unwrap().patches.len(), 1);
    assert_eq!(desired.len(), 1);
    // The same again: refused, the list unchanged.
    let s = serve(&mut p, &mut desired, apply(PatchSource::Bytes(bytes("p1", "fake_a"))));
    assert_eq!(txn(&s).cause, Cause::AlreadyApplied);
    assert_eq!(desired.len(), 1);
    match serve(&mut p, &mut desired, ApiRequest::ListPatches).response {
        ApiResponse::Status(st) => assert_eq!(st.patches[0].name, "p1"),
        other => panic!("{other:?}"),
    }
    let id = desired[0].1.manifest.id.clone();
    match serve(&mut p, &mut desired, ApiRequest::GetPatch(id.clone())).response {
        ApiResponse::Patch(ps) => assert_eq!((ps.name.as_str(), ps.funcs[0].active), ("p1", true)),
        other => panic!("{other:?}"),
    }
    // Unknown patches: 404 causes, no transaction.
    let s = serve(&mut p, &mut desired, ApiRequest::GetPatch("nope".into()));
    assert_eq!(api_error(&s), ApiCause::UnknownPatch);
    let s = serve(&mut p, &mut desired, ApiRequest::Revert("nope".into()));
    assert_eq!(api_error(&s), ApiCause::UnknownPatch);
    assert!(s.report.is_none());
    // Revert by name: done, and gone from the desired list.
    let s = serve(&mut p, &mut desired, ApiRequest::Revert("p1".into()));
    assert!(txn(&s).is_ok(), "{}", txn(&s).to_json());
    assert!(desired.is_empty());
    assert!(s.status.unwrap().patches.is_empty());
    let s = serve(&mut p, &mut desired, ApiRequest::Recover);
    assert_eq!((txn(&s).op, txn(&s).cause), ("recover", Cause::Ok));
}

#[test]
fn bad_bytes_unreadable_files_and_file_requests() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let mut desired = DesiredPatches::new();
    let mut p = Patcher::new(&mut g, &k, config());
    let s = serve(&mut p, &mut desired, apply(PatchSource::Bytes(b"not a patch".to_vec())));
    assert_eq!(txn(&s).cause, Cause::BadPatch);
    assert!(desired.is_empty());
    let s = serve(&mut p, &mut desired, apply(PatchSource::Path("/nonexistent/p.vsp".into())));
    assert_eq!(api_error(&s), ApiCause::PatchFileUnreadable);
    let file = std::env::temp_dir().join(format!("vsplice-handler-{}.vsp", std::process::id()));
    std::fs::write(&file, bytes("p2", "fake_b")).unwrap();
    let req = ApplyRequest { source: PatchSource::Path(file.clone()), check: Some(CheckMode::Conservative), attempts: Some(1), when_loaded: false };
    let s = serve(&mut p, &mut desired, ApiRequest::Apply(req));
    assert!(txn(&s).is_ok(), "{}", txn(&s).to_json());
    assert_eq!(txn(&s).check.as_ref().map(|c| c.mode), Some(CheckMode::Conservative));
    assert_eq!(desired[0].0, file);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_busy_function_is_refused_and_not_desired() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let worker = k.sleeping_task(&mut g, 0, 300, "worker", &[k.ret_into("fake_a")]);
    k.set_tasks(vec![worker]);
    let mut desired = DesiredPatches::new();
    let mut p = Patcher::new(&mut g, &k, config());
    let req = ApplyRequest { source: PatchSource::Bytes(bytes("p1", "fake_a")), check: None, attempts: Some(3), when_loaded: false };
    let s = serve(&mut p, &mut desired, ApiRequest::Apply(req));
    assert_eq!((txn(&s).cause, txn(&s).timings.attempts), (Cause::CodeBusy, 3));
    assert!(desired.is_empty());
    assert!(s.status.unwrap().patches.is_empty());
}

#[test]
fn trusted_keys_refuse_unsigned_forged_and_foreign_patches_before_the_guest() {
    let k = FakeKernel::new();
    let mut g = k.guest();
    let mut desired = DesiredPatches::new();
    let mut p = Patcher::new(&mut g, &k, config());
    let ours = sign::SigningKey::from_bytes(&[9; 32]);
    let theirs = sign::SigningKey::from_bytes(&[10; 32]);
    let trust = TrustPolicy::with_keys(vec![ours.verifying_key()], false);
    let unsigned = bytes("p1", "fake_a");
    let mut forged = sign::sign(&unsigned, &ours).unwrap();
    forged[100] ^= 1;
    for (b, cause, http) in [
        (unsigned.clone(), Cause::Unsigned, 403),
        (forged, Cause::BadSignature, 422),
        (sign::sign(&unsigned, &theirs).unwrap(), Cause::UntrustedKey, 403),
    ] {
        let s = serve_with(&mut p, &mut desired, apply(PatchSource::Bytes(b)), &trust);
        assert_eq!((txn(&s).cause, txn_http_status(txn(&s))), (cause, http), "{}", txn(&s).to_json());
        // Refused before the guest: no registry read, nothing desired.
        assert!(s.status.is_none());
        assert!(desired.is_empty());
    }
    match serve(&mut p, &mut desired, ApiRequest::ListPatches).response {
        ApiResponse::Status(st) => assert!(st.patches.is_empty()),
        other => panic!("{other:?}"),
    }
    // Signed by our key: applied, with a note naming the key.
    let s = serve_with(&mut p, &mut desired, apply(PatchSource::Bytes(sign::sign(&unsigned, &ours).unwrap())), &trust);
    assert!(txn(&s).is_ok(), "{}", txn(&s).to_json());
    assert!(txn(&s).notes.iter().any(|n| n.contains("signature verified")), "{:?}", txn(&s).notes);
    // --allow-unsigned: applied, and the report says so.
    let loose = TrustPolicy::with_keys(vec![ours.verifying_key()], true);
    let s = serve_with(&mut p, &mut desired, apply(PatchSource::Bytes(bytes("p2", "fake_b"))), &loose);
    assert!(txn(&s).is_ok(), "{}", txn(&s).to_json());
    assert!(txn(&s).notes.iter().any(|n| n == ALLOW_UNSIGNED_NOTE));
}

/// A patch of `fake_b` as a function of module `fakemod` (not loaded in a plain FakeKernel).
fn module_patch_bytes() -> Vec<u8> {
    let mut p = FakePatch::new("m1").replace("fake_b").build(&FakeKernel::new()).unwrap();
    p.manifest.replacements[0].object = Some("fakemod".into());
    p.to_bytes().unwrap()
}

fn ask_handler(h: &mut super::handler::RequestHandler, k: &FakeKernel, g: &mut vsplice_patcher::testing::RamGuest, request: ApiRequest) -> ApiResponse {
    let (tx, rx) = std::sync::mpsc::channel();
    h.test_send(super::request::Envelope { request, reply: tx });
    h.serve_waiting(g, arena(), Ok(k), &mut DesiredPatches::new(), Duration::from_millis(10));
    rx.recv().unwrap()
}

#[test]
fn when_loaded_is_held_listed_and_cancelled_with_hooks_and_refused_without() {
    use super::handler::RequestHandler;
    use super::pending::ModuleHooks;
    let k = FakeKernel::new();
    let mut g = k.guest();
    let held = || ApiRequest::Apply(ApplyRequest { source: PatchSource::Bytes(module_patch_bytes()), check: None, attempts: None, when_loaded: true });
    // `vsplice run`: no hooks.
    let mut h = RequestHandler::for_tests();
    match ask_handler(&mut h, &k, &mut g, held()) {
        ApiResponse::Error(e) => assert_eq!(e.cause, ApiCause::PendingUnsupported, "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert!(h.wanted_breakpoints().is_empty());
    // With hooks: held, listed, the load hook wanted; cancelled: nothing wanted.
    let hooks = ModuleHooks { coming: 0xffff_ffff_8100_1000, going: 0xffff_ffff_8100_2000 };
    h.set_hooks(Ok(hooks));
    let id = match ask_handler(&mut h, &k, &mut g, held()) {
        ApiResponse::Pending(p) => {
            assert_eq!((p.state, p.modules.clone()), ("pending", vec!["fakemod".to_owned()]));
            p.id.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(h.wanted_breakpoints(), std::collections::BTreeSet::from([hooks.coming]));
    let last_words = h.pending_at_exit().expect("a pending patch is said at exit");
    assert!(last_words.contains("1 pending patch(es) dropped") && last_words.contains(&id) && last_words.contains("--pending-dir"), "{last_words}");
    match ask_handler(&mut h, &k, &mut g, ApiRequest::ListPatches) {
        ApiResponse::Status(s) => assert_eq!(s.pending.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [id.as_str()]),
        other => panic!("{other:?}"),
    }
    // Without the option the refusal stays, naming it.
    let plain = ApiRequest::Apply(ApplyRequest { source: PatchSource::Bytes(module_patch_bytes()), check: None, attempts: None, when_loaded: false });
    match ask_handler(&mut h, &k, &mut g, plain) {
        ApiResponse::Txn(r) => assert!(r.cause == Cause::ModuleNotLoaded && r.message.contains("--when-loaded"), "{}", r.to_json()),
        other => panic!("{other:?}"),
    }
    match ask_handler(&mut h, &k, &mut g, ApiRequest::Revert("m1".into())) {
        ApiResponse::Pending(p) => assert_eq!(p.state, "cancelled"),
        other => panic!("{other:?}"),
    }
    assert!(h.wanted_breakpoints().is_empty());
    assert_eq!(h.pending_at_exit(), None, "nothing pending: nothing to say");
    // A vmlinux patch with the option is simply applied.
    let now = ApiRequest::Apply(ApplyRequest { source: PatchSource::Bytes(bytes("v1", "fake_a")), check: None, attempts: None, when_loaded: true });
    match ask_handler(&mut h, &k, &mut g, now) {
        ApiResponse::Txn(r) => assert!(r.is_ok(), "{}", r.to_json()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn at_the_load_hook_a_pending_patch_is_applied_to_the_coming_module_and_at_the_unload_hook_dropped() {
    use super::handler::RequestHandler;
    use super::pending::ModuleHooks;
    use vsplice_patcher::model::backend::VcpuState;
    use vsplice_patcher::model::{MODULE_STATE_COMING, MODULE_STATE_GOING};
    const AT: u64 = 0xffff_ffff_c000_1000;
    let hooks = ModuleHooks { coming: 0xffff_ffff_8100_1000, going: 0xffff_ffff_8100_2000 };
    let absent = FakeKernel::new();
    let mut g = absent.guest();
    let mut h = RequestHandler::for_tests();
    h.set_hooks(Ok(hooks));
    let held = ApiRequest::Apply(ApplyRequest { source: PatchSource::Bytes(module_patch_bytes()), check: None, attempts: None, when_loaded: true });
    assert!(matches!(ask_handler(&mut h, &absent, &mut g, held), ApiResponse::Pending(_)));
    let mut desired = DesiredPatches::new();
    let hit = |rip: u64, module: u64| {
        let mut v = VcpuState { rip, ..VcpuState::default() };
        v.gprs[5] = module;
        v
    };
    // Another module loading (its struct module elsewhere): still pending, nothing written.
    let coming = FakeKernel::new().with_module("fakemod", AT, &["fake_b", "fake_c"]).with_module_state(MODULE_STATE_COMING);
    let writes = g.writes;
    h.module_hook(&mut g, arena(), &coming, &hit(hooks.coming, AT + 0x1000), &mut desired);
    assert_eq!(g.writes, writes, "nothing written for another module's load");
    assert_eq!(h.wanted_breakpoints(), std::collections::BTreeSet::from([hooks.coming]), "still pending");
    // Its own load: applied with the module COMING, in the desired list, the unload hook wanted.
    h.module_hook(&mut g, arena(), &coming, &hit(hooks.coming, AT), &mut desired);
    let mut p = Patcher::new(&mut g, &coming, config());
    let s = p.status().unwrap();
    assert_eq!(s.patches.len(), 1);
    assert!(s.patches[0].funcs.iter().all(|f| f.active && f.module.as_deref() == Some("fakemod")), "{s:?}");
    assert_eq!(desired.len(), 1);
    assert_eq!(h.wanted_breakpoints(), std::collections::BTreeSet::from([hooks.going]), "nothing pending; a module record");
    // A stop at the unload hook for that load: dropped, no text written.
    let going = FakeKernel::new().with_module("fakemod", AT, &["fake_b", "fake_c"]).with_module_state(MODULE_STATE_GOING);
    h.module_hook(&mut g, arena(), &going, &hit(hooks.going, AT), &mut desired);
    let s = Patcher::new(&mut g, &going, config()).status().unwrap();
    assert!(s.patches.is_empty() && s.history.iter().any(|e| e.how == "module_unloaded"), "{s:?}");
    assert!(desired.is_empty() && h.wanted_breakpoints().is_empty());
}

#[test]
fn the_pending_dir_mirrors_the_list_and_a_new_handler_holds_or_applies_what_it_kept() {
    use super::handler::RequestHandler;
    use super::pending::ModuleHooks;
    use super::pending_store::PendingStore;
    let dir = std::env::temp_dir().join(format!("vsplice-handler-pending-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hooks = ModuleHooks { coming: 0xffff_ffff_8100_1000, going: 0xffff_ffff_8100_2000 };
    let held = || ApiRequest::Apply(ApplyRequest { source: PatchSource::Bytes(module_patch_bytes()), check: Some(CheckMode::Conservative), attempts: None, when_loaded: true });
    let absent = FakeKernel::new();
    let mut g = absent.guest();

    // Held: kept in the dir; cancelled: gone from it.
    let mut h = RequestHandler::for_tests();
    h.set_hooks(Ok(hooks));
    h.set_pending_store(PendingStore::open(&dir).unwrap());
    h.restore_pending(&mut g, arena(), &absent, &mut DesiredPatches::new());
    assert!(matches!(ask_handler(&mut h, &absent, &mut g, held()), ApiResponse::Pending(_)));
    let kept = PendingStore::open(&dir).unwrap().load().0;
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].bytes.clone(), kept[0].check), (module_patch_bytes(), Some(CheckMode::Conservative)));
    assert!(matches!(ask_handler(&mut h, &absent, &mut g, ApiRequest::Revert("m1".into())), ApiResponse::Pending(_)));
    assert!(PendingStore::open(&dir).unwrap().ids().is_empty(), "cancelled: not kept");

    // Held again, then the handler is gone (a daemon killed, or ended: then it says where the patch is).
    assert!(matches!(ask_handler(&mut h, &absent, &mut g, held()), ApiResponse::Pending(_)));
    let last_words = h.pending_at_exit().unwrap();
    assert!(last_words.contains("1 pending patch(es) kept in") && last_words.contains(&dir.display().to_string()) && !last_words.contains("dropped"), "{last_words}");
    drop(h);

    // A handler that cannot hold patches leaves the dir alone.
    let mut h = RequestHandler::for_tests();
    h.set_pending_store(PendingStore::open(&dir).unwrap());
    h.restore_pending(&mut g, arena(), &absent, &mut DesiredPatches::new());
    assert!(h.wanted_breakpoints().is_empty());
    let _ = ask_handler(&mut h, &absent, &mut g, ApiRequest::ListPatches);
    assert_eq!(PendingStore::open(&dir).unwrap().ids().len(), 1, "kept for a daemon that can");

    // A new daemon, module still absent: held again, the load hook wanted.
    let mut h = RequestHandler::for_tests();
    h.set_hooks(Ok(hooks));
    h.set_pending_store(PendingStore::open(&dir).unwrap());
    h.restore_pending(&mut g, arena(), &absent, &mut DesiredPatches::new());
    assert_eq!(h.wanted_breakpoints(), std::collections::BTreeSet::from([hooks.coming]));
    match ask_handler(&mut h, &absent, &mut g, ApiRequest::ListPatches) {
        ApiResponse::Status(s) => assert_eq!(s.pending.len(), 1, "{s:?}"),
        other => panic!("{other:?}"),
    }
    drop(h);

    // A new daemon after the module loaded meanwhile: applied at once, the dir emptied.
    let loaded = FakeKernel::new().with_module("fakemod", 0xffff_ffff_c000_1000, &["fake_b", "fake_c"]);
    let mut g = loaded.guest();
    let mut h = RequestHandler::for_tests();
    h.set_hooks(Ok(hooks));
    h.set_pending_store(PendingStore::open(&dir).unwrap());
    let mut desired = DesiredPatches::new();
    h.restore_pending(&mut g, arena(), &loaded, &mut desired);
    let s = Patcher::new(&mut g, &loaded, config()).status().unwrap();
    assert_eq!(s.patches.len(), 1, "applied at once: {s:?}");
    assert_eq!(desired.len(), 1);
    assert!(PendingStore::open(&dir).unwrap().ids().is_empty(), "nothing left pending");
    let _ = std::fs::remove_dir_all(&dir);
}

//! `docs/openapi.yaml` against the replies the API's own types produce,
//! without a VM: each schema accepts what the code serializes, and the
//! validator rejects a reply with a wrong field type, a missing field, an
//! unknown cause or a status the document does not list (so the e2e tests'
//! conformance checks can fail).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use vsplice_patcher::txn::{Cause, Stage, Timings, TxnReport};
use vsplice_vmm::api::request::{ApiCause, ApiError};
use vsplice_tests::openapi::{template, OpenApi};

fn report() -> TxnReport {
    TxnReport {
        op: "apply",
        patch_id: Some("7f01a039bdf4f1a0".into()),
        patch_name: Some("step_b_v2".into()),
        stage: Stage::Check,
        cause: Cause::CodeBusy,
        reason: None,
        message: "busy".into(),
        conflicts: vec![vsplice_patcher::model::Conflict { task: Some("worker/0:0".into()), task_id: Some(1), vcpu: None, kind: "stack", addr: 0xffff_ffff_8100_0000, function: "tg_hold+0x12".into() }],
        superseded: Vec::new(),
        notes: vec!["a note".into()],
        check: Some(vsplice_patcher::model::CheckSummary::default()),
        timings: Timings { attempts: 3, ..Timings::default() },
    }
}

#[test]
fn the_code_s_replies_conform() {
    let api = OpenApi::load();
    let r = report();
    api.validate_reply("PUT", "/patches", 409, "application/json", r.to_json().as_bytes()).unwrap();
    api.validate_reply("DELETE", "/patches/abc", 409, "application/json", r.to_json().as_bytes()).unwrap();
    let err = ApiError::new(ApiCause::Busy, "another transaction");
    api.validate_reply("PUT", "/patches", 409, "application/json", err.to_json().as_bytes()).unwrap();
    for cause in [ApiCause::MalformedJson, ApiCause::BodyTooLarge, ApiCause::UnsupportedMediaType] {
        let e = ApiError::new(cause, "x");
        api.validate_reply("PUT", "/patches", cause.http_status(), "application/json", e.to_json().as_bytes()).unwrap();
    }
    let events = json!({"events": [{"seq": 1, "time_ms": 5, "kind": "txn", "txn": serde_json::to_value(&r).unwrap()},
                                   {"seq": 2, "time_ms": 6, "kind": "guest_state", "state": "exited", "detail": "power off"}], "next": 2});
    api.validate_reply("GET", "/events?since=0", 200, "application/json", events.to_string().as_bytes()).unwrap();
    api.validate_reply("GET", "/metrics", 200, "text/plain; version=0.0.4", b"vsplice_pauses_total 0\n").unwrap();
    let empty = json!({"arena": null, "patches": [], "history": [], "intent": null});
    api.validate_reply("GET", "/patches", 200, "application/json", empty.to_string().as_bytes()).unwrap();
    // A patch with the manifest's operator fields; a malformed CVE id is caught.
    let span = json!({"start": 0, "len": 0});
    let mut p = json!({"id": "a", "name": "a", "state": "applied", "cumulative": false, "code": span, "data": span, "funcs": [],
                       "description": "fixes a", "cves": ["CVE-2026-0001"], "version": "1"});
    api.validate_component("PatchStatus", &p).unwrap();
    p["cves"] = json!(["not-a-cve"]);
    assert!(api.validate_component("PatchStatus", &p).is_err());
    // A patch held until its module loads, and cancelled; listed; its events.
    let held = vsplice_patcher::txn::recover::PendingStatus { id: "c4bf".into(), name: "fix".into(), modules: vec!["nfsd".into()], state: "pending" };
    api.validate_reply("PUT", "/patches?when_loaded=true", 202, "application/json", serde_json::to_vec(&held).unwrap().as_slice()).unwrap();
    let cancelled = vsplice_patcher::txn::recover::PendingStatus { state: "cancelled", ..held.clone() };
    api.validate_reply("DELETE", "/patches/fix", 200, "application/json", serde_json::to_vec(&cancelled).unwrap().as_slice()).unwrap();
    api.validate_reply("DELETE", "/patches/fix", 200, "application/json", r.to_json().as_bytes()).unwrap();
    let e = ApiError::new(ApiCause::PendingUnsupported, "vsplice run");
    api.validate_reply("PUT", "/patches", 422, "application/json", e.to_json().as_bytes()).unwrap();
    let listed = json!({"arena": null, "patches": [], "history": [], "intent": null, "pending": [serde_json::to_value(&held).unwrap()]});
    api.validate_reply("GET", "/patches", 200, "application/json", listed.to_string().as_bytes()).unwrap();
    let module = json!({"events": [{"seq": 1, "time_ms": 5, "kind": "module", "state": "applied_at_load", "detail": "patch fix applied at load"}], "next": 1});
    api.validate_reply("GET", "/events?since=0", 200, "application/json", module.to_string().as_bytes()).unwrap();
    let mut bad = json!({"arena": null, "patches": [], "history": [], "intent": null, "pending": [{"id": "c4bf", "name": "fix", "modules": [], "state": "waiting"}]});
    assert!(api.validate_reply("GET", "/patches", 200, "application/json", bad.to_string().as_bytes()).is_err(), "an unknown pending state passes");
    bad["pending"] = json!([]);
    api.validate_reply("GET", "/patches", 200, "application/json", bad.to_string().as_bytes()).unwrap();
    assert_eq!(template("/patches/recover"), "/patches/recover");
    assert_eq!(template("/patches/x?y"), "/patches/{id}");
}

#[test]
fn the_validator_catches_bad_replies() {
    let api = OpenApi::load();
    let vm = json!({"state": "running", "hypervisor": "kvm", "vcpus": 2, "memory_mib": 64, "arena": "0x3c00000:4M",
                    "kernel": {"kind": "testguest", "build_id": null, "release": null, "kaslr_slide": null, "image": "/k"},
                    "agent": {"announced": false, "descriptor_gpa": null, "rings": 0},
                    "boot": 1, "uptime_ms": 10, "transaction_in_flight": false});
    api.validate_reply("GET", "/vm", 200, "application/json", vm.to_string().as_bytes()).unwrap();
    // Attached with the RAM file: said so, and how.
    let mut shm = vm.clone();
    shm["hypervisor"] = json!("gdbstub_shm");
    shm["shared_memory"] = json!({"mem_path": "/dev/shm/g.ram", "stop_via": "gdb", "writes": "gdbstub"});
    api.validate_reply("GET", "/vm", 200, "application/json", shm.to_string().as_bytes()).unwrap();
    shm["shared_memory"]["writes"] = json!("somewhere");
    assert!(api.validate_reply("GET", "/vm", 200, "application/json", shm.to_string().as_bytes()).is_err(), "an unknown write route");
    // A wrong field type.
    let mut bad = vm.clone();
    bad["vcpus"] = json!("2");
    let e = api.validate_reply("GET", "/vm", 200, "application/json", bad.to_string().as_bytes()).unwrap_err();
    assert!(e.contains("vcpus"), "{e}");
    // A missing field, an unknown state.
    let mut bad = vm.clone();
    bad.as_object_mut().unwrap().remove("arena");
    assert!(api.validate_reply("GET", "/vm", 200, "application/json", bad.to_string().as_bytes()).is_err());
    let mut bad = vm.clone();
    bad["state"] = json!("sleeping");
    assert!(api.validate_reply("GET", "/vm", 200, "application/json", bad.to_string().as_bytes()).is_err());
    // The console counts: optional, null when attached, counts when watched, nothing else.
    let mut with_console = vm.clone();
    with_console["console"] = json!({"lines": 3, "oops": 0, "bug": 1, "warning": 0, "panic": 0});
    api.validate_reply("GET", "/vm", 200, "application/json", with_console.to_string().as_bytes()).unwrap();
    with_console["console"] = json!(null);
    api.validate_reply("GET", "/vm", 200, "application/json", with_console.to_string().as_bytes()).unwrap();
    with_console["console"] = json!({"lines": 3, "bug": "1"});
    assert!(api.validate_reply("GET", "/vm", 200, "application/json", with_console.to_string().as_bytes()).is_err());
    // A transaction report with a cause the document does not know, or a string for a number.
    let mut r = serde_json::to_value(report()).unwrap();
    r["cause"] = json!("maybe");
    assert!(api.validate_reply("PUT", "/patches", 409, "application/json", r.to_string().as_bytes()).is_err());
    let mut r = serde_json::to_value(report()).unwrap();
    r["timings"]["attempts"] = json!("3");
    assert!(api.validate_reply("PUT", "/patches", 409, "application/json", r.to_string().as_bytes()).is_err());
    // An error body with an extra field; a status or route the document does not list; not JSON.
    let e = json!({"cause": "busy", "message": "m", "extra": 1});
    assert!(api.validate_reply("PUT", "/patches", 409, "application/json", e.to_string().as_bytes()).is_err());
    assert!(api.validate_reply("GET", "/vm", 418, "application/json", b"{}").is_err());
    assert!(api.validate_reply("GET", "/nowhere", 200, "application/json", b"{}").is_err());
    assert!(api.validate_reply("GET", "/vm", 200, "application/json", b"{").is_err());
    assert!(api.validate_reply("GET", "/vm", 200, "text/html", b"x").is_err());
}

#[test]
fn streamed_events_are_checked_line_by_line() {
    let api = OpenApi::load();
    let r = serde_json::to_value(report()).unwrap();
    let good = format!(
        "{}\n\n{}\n",
        json!({"seq": 1, "time_ms": 5, "kind": "guest_state", "state": "running", "detail": "boot 1"}),
        json!({"seq": 2, "time_ms": 6, "kind": "txn", "txn": r})
    );
    api.validate_reply("GET", "/events?follow=true", 200, "application/x-ndjson", good.as_bytes()).unwrap();
    // One bad line among good ones, a line that is not JSON, an Events object instead of an Event.
    let bad = format!("{good}{}\n", json!({"seq": 0, "time_ms": 7, "kind": "guest_state"}));
    let e = api.validate_reply("GET", "/events?follow=true", 200, "application/x-ndjson", bad.as_bytes()).unwrap_err();
    assert!(e.contains("line 4"), "{e}");
    assert!(api.validate_reply("GET", "/events", 200, "application/x-ndjson", b"{\"seq\": 1,\n").is_err());
    assert!(api.validate_reply("GET", "/events", 200, "application/x-ndjson", json!({"events": [], "next": 0}).to_string().as_bytes()).is_err());
    // A refused apply option (`bad_query`) is a documented reply of PUT /patches.
    let e = ApiError::new(ApiCause::BadQuery, "x");
    api.validate_reply("PUT", "/patches?attempts=0", 400, "application/json", e.to_json().as_bytes()).unwrap();
}

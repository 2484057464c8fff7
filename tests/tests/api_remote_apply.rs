//! `vsplice remote patch apply` options on the test guest under `vsplice
//! run --api-sock`: `--path` (the VMM reads the file, a relative path made
//! absolute by the client), `--check` and `--attempts` (JSON fields with
//! `--path`, query parameters with the bytes); exit codes 0, 3 and 1; the
//! JSON printed conforms to docs/openapi.yaml, and so do the raw replies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vsplice_tests::api::{build_example, build_patch, ApiVm};
use vsplice_tests::cli::{text, vsplice_bin};
use vsplice_tests::{livepatch, testguest};

/// `vsplice remote --api-sock SOCK args…` run from `vm.dir` (for relative paths).
fn remote_in_dir(vm: &ApiVm, args: &[&str]) -> Output {
    Command::new(vsplice_bin()).current_dir(&vm.dir).arg("remote").arg("--api-sock").arg(&vm.sock).args(args).stdin(Stdio::null()).output().unwrap()
}

/// The report printed by `--json`, checked against the document.
fn report(vm: &ApiVm, o: &Output) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", text(&o.stdout), text(&o.stderr)));
    vm.openapi().validate_component("TxnReport", &r).unwrap();
    r
}

#[test]
fn apply_by_path_with_check_and_attempts() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_remote_apply") {
        return;
    }
    // tg.hold: a task sits in tg_hold for good, so patching it is always `code_busy`.
    let vm = ApiVm::start("remote-apply", "tg.tasks=2 tg.wait=5 tg.hold", &[]);
    assert!(vm.wait_serial(Duration::from_secs(60), |s| s.contains("TG hold task=1 in tg_hold")));
    build_example(&vm.dir, "step_b_v2.c");
    let hold = build_patch(&vm.dir, "hold", livepatch::HOLD_PATCH);

    // By path, relative to the client's directory (the VMM's is elsewhere), with both options.
    let o = remote_in_dir(&vm, &["--json", "patch", "apply", "--path", "step_b_v2.vsp", "--check", "conservative", "--attempts", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
    let r = report(&vm, &o);
    assert_eq!((r["cause"].as_str(), r["patch_name"].as_str(), r["check"]["mode"].as_str()), (Some("ok"), Some("step_b_v2"), Some("conservative")), "{r}");
    assert!(r["timings"]["attempts"].as_u64().unwrap() <= 3, "{r}");
    // Again: refused by the guest's state, exit 3.
    let o = remote_in_dir(&vm, &["--json", "patch", "apply", "--path", "step_b_v2.vsp"]);
    assert_eq!(o.status.code(), Some(3), "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(report(&vm, &o)["cause"], "already_applied");
    // Text by default.
    let o = remote_in_dir(&vm, &["patch", "revert", "step_b_v2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = remote_in_dir(&vm, &["patch", "apply", "--path", "step_b_v2.vsp"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("apply step_b_v2: ok"), "{}", text(&o.stdout));

    // The bytes, with the options as query parameters: one pause only, the
    // conservative check; the held task makes it `code_busy`, exit 3.
    let o = vm.remote(&["--json", "patch", "apply", hold.to_str().unwrap(), "--attempts", "1", "--check", "conservative"]);
    assert_eq!(o.status.code(), Some(3), "{}{}", text(&o.stdout), text(&o.stderr));
    let r = report(&vm, &o);
    assert_eq!((r["cause"].as_str(), r["timings"]["attempts"].as_u64()), (Some("code_busy"), Some(1)), "{r}");
    assert_eq!(r["check"]["mode"], "conservative", "{r}");
    // By path, the same: the JSON fields.
    let o = vm.remote(&["--json", "patch", "apply", "--path", hold.to_str().unwrap(), "--attempts", "2"]);
    assert_eq!(o.status.code(), Some(3), "{}{}", text(&o.stdout), text(&o.stderr));
    let r = report(&vm, &o);
    assert_eq!((r["cause"].as_str(), r["timings"]["attempts"].as_u64()), (Some("code_busy"), Some(2)), "{r}");

    // A path the VMM cannot read: its refusal, bad input (exit 1), naming the absolute path.
    let o = remote_in_dir(&vm, &["patch", "apply", "--path", "missing.vsp"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    let missing = vm.dir.join("missing.vsp");
    assert!(text(&o.stderr).contains("refused [patch_file_unreadable]") && text(&o.stderr).contains(missing.to_str().unwrap()), "{}", text(&o.stderr));
    // A file the client cannot read: bad input before any request.
    let o = remote_in_dir(&vm, &["patch", "apply", "missing.vsp", "--attempts", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("error [patch_file_unreadable]"), "{}", text(&o.stderr));

    // Raw HTTP: bad options are `bad_query`, before the body is used.
    let bytes = std::fs::read(&hold).unwrap();
    for q in ["attempts=0", "check=fast", "retries=2"] {
        let r = vm.req("PUT", &format!("/patches?{q}"), Some("application/octet-stream"), &bytes);
        assert_eq!((r.status, r.json()["cause"].as_str()), (400, Some("bad_query")), "{q}: {}", r.text());
    }
    let body = serde_json::json!({"path": hold, "attempts": 1}).to_string();
    let r = vm.req("PUT", "/patches?attempts=1", Some("application/json"), body.as_bytes());
    assert_eq!((r.status, r.json()["cause"].as_str()), (400, Some("bad_query")), "{}", r.text());
    // Only step_b_v2 is applied; the guest runs on.
    let listed = vm.get_json("/patches");
    let names: Vec<&str> = listed["patches"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["step_b_v2"], "{listed}");
    assert_eq!(vm.get_json("/vm")["state"], "running");
}

//! The API of `vsplice run --api-sock` on the test guest under KVM: apply,
//! list, one patch, revert, recover, metrics, events and the VM, through
//! `vsplice remote` (text, `--json`, exit codes) and raw HTTP; the guest's
//! own output shows the patched value; every reply conforms to
//! docs/openapi.yaml; the socket is 0600 and gone when the VMM ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vsplice_tests::api::{build_example, build_example_with, ApiVm};
use vsplice_tests::cli::text;
use vsplice_tests::{livepatch, testguest};

const WAIT: Duration = Duration::from_secs(60);

/// True when, after `mark` bytes of output, every one of the 4 tasks
/// printed a line whose value `f` accepts.
fn every_task_after(serial: &str, mark: usize, f: impl Fn(u64, u64) -> bool) -> bool {
    let lines = testguest::parse_all(serial.get(mark..).unwrap_or("")).unwrap_or_default();
    let tasks: std::collections::BTreeSet<_> = lines.iter().filter(|l| f(l.iter, l.value)).map(|l| (l.cpu, l.task)).collect();
    tasks.len() == 4
}

#[test]
fn apply_list_revert_recover_metrics_events_through_remote_and_http() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_patches") {
        return;
    }
    let info = ["--description", "step B, version 2", "--cve", "CVE-2026-0042", "--version", "2.0"];
    let vsp = build_example_with(&vsplice_tests::scratch::tmp_dir("api-patches-patch"), "step_b_v2.c", &info);
    let mut vm = ApiVm::start("patches", "tg.tasks=2 tg.iters=400 tg.wait=5", &[]);
    assert_eq!(std::fs::metadata(&vm.sock).unwrap().permissions().mode() & 0o777, 0o600);

    // The VM.
    let info = vm.get_json("/vm");
    assert_eq!(info["state"], "running");
    assert_eq!(info["vcpus"], 2);
    assert_eq!(info["memory_mib"], 64);
    assert_eq!(info["kernel"]["kind"], "testguest");
    assert!(info["kernel"]["build_id"].as_str().is_some_and(|b| b.len() == 40), "{info}");
    assert!(info["arena"].as_str().unwrap().ends_with(":4M"), "{info}");
    let o = vm.remote(&["vm"]);
    assert!(o.status.success() && text(&o.stdout).contains("state: running"), "{}", text(&o.stdout));

    // Apply through `vsplice remote`: text, exit 0; the guest switches.
    assert_eq!(vm.get_json("/patches")["patches"], serde_json::json!([]));
    let mark = vm.serial_text().len();
    let o = vm.remote(&["patch", "apply", vsp.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("apply step_b_v2: ok"), "{}", text(&o.stdout));
    assert!(vm.wait_serial(WAIT, |s| every_task_after(s, mark, |i, v| v == livepatch::value_step_b_v2(i))), "not patched:\n{}", vm.serial_text());

    // List and one patch, by remote (text and JSON) and raw HTTP.
    let o = vm.remote(&["patch", "list"]);
    assert!(o.status.success() && text(&o.stdout).contains("step_b_v2  applied  tg_step_b"), "{}", text(&o.stdout));
    let o = vm.remote(&["--json", "patch", "list"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    vm.openapi().validate_component("Status", &listed).unwrap();
    let id = listed["patches"][0]["id"].as_str().unwrap().to_owned();
    // What operators look for, from the manifest, in GET /patches and GET /patches/{id}.
    let p = &vm.get_json("/patches")["patches"][0];
    assert_eq!((&p["description"], &p["cves"], &p["version"]), (&serde_json::json!("step B, version 2"), &serde_json::json!(["CVE-2026-0042"]), &serde_json::json!("2.0")), "{p}");
    vm.openapi().validate_component("PatchStatus", &vm.get_json(&format!("/patches/{id}"))).unwrap();
    assert_eq!(vm.get_json(&format!("/patches/{id}"))["cves"][0], "CVE-2026-0042");
    assert_eq!(vm.get_json(&format!("/patches/{id}"))["name"], "step_b_v2");
    assert_eq!(vm.get_json("/patches/step_b_v2")["id"], id.as_str());

    // The same again: refused, exit 3, the report's cause.
    let o = vm.remote(&["--json", "patch", "apply", vsp.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stdout));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    vm.openapi().validate_component("TxnReport", &r).unwrap();
    assert_eq!(r["cause"], "already_applied");
    // Raw HTTP: the JSON body form.
    let body = serde_json::json!({"path": vsp, "check": "conservative", "attempts": 5}).to_string();
    let r = vm.req("PUT", "/patches", Some("application/json"), body.as_bytes());
    assert_eq!((r.status, r.json()["cause"].as_str()), (409, Some("already_applied")), "{}", r.text());

    // Revert by raw HTTP; the guest goes back.
    let mark = vm.serial_text().len();
    let r = vm.req("DELETE", &format!("/patches/{id}"), None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["op"], "revert");
    assert!(vm.wait_serial(WAIT, |s| every_task_after(s, mark, |i, v| v == livepatch::value_orig(i))), "not reverted:\n{}", vm.serial_text());
    assert_eq!(vm.get_json("/patches")["patches"], serde_json::json!([]));

    // Apply by raw bytes, revert by remote, recover by both.
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), &std::fs::read(&vsp).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    let o = vm.remote(&["patch", "revert", "step_b_v2"]);
    assert!(o.status.success() && text(&o.stdout).contains("revert"), "{}", text(&o.stdout));
    let o = vm.remote(&["patch", "recover"]);
    assert!(o.status.success(), "{}", text(&o.stdout));
    let r = vm.req("POST", "/patches/recover", None, b"");
    assert_eq!((r.status, r.json()["cause"].as_str()), (200, Some("ok")));
    let o = vm.remote(&["patch", "revert", "step_b_v2"]);
    assert_eq!(o.status.code(), Some(3), "unknown patch is refused: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("[unknown_patch]"), "{}", text(&o.stderr));

    // Metrics: by op and cause, phases, pauses, patches, state.
    let m = vm.req("GET", "/metrics", None, b"").text();
    for want in [
        "vsplice_transactions_total{op=\"apply\",cause=\"ok\"} 2",
        "vsplice_transactions_total{op=\"apply\",cause=\"already_applied\"} 2",
        "vsplice_transactions_total{op=\"revert\",cause=\"ok\"} 2",
        "vsplice_transactions_total{op=\"recover\",cause=\"ok\"} 2",
        "vsplice_txn_phase_seconds_count{phase=\"downtime\"} 4",
        "vsplice_txn_phase_seconds_bucket{phase=\"check\",le=\"+Inf\"} 4",
        "vsplice_patches_applied 0",
        "vsplice_guest_state{state=\"running\"} 1",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
    let o = vm.remote(&["metrics"]);
    assert!(o.status.success() && text(&o.stdout).contains("vsplice_pauses_total"), "{}", text(&o.stdout));

    // Events: every transaction, in order, after the boot.
    let ev = vm.get_json("/events?since=0&timeout=0");
    let all: Vec<String> = ev["events"].as_array().unwrap().iter().map(|e| format!("{}:{}", e["kind"].as_str().unwrap(), e["txn"]["op"].as_str().or(e["state"].as_str()).unwrap())).collect();
    // The kernel's identification comes once, when it is up (its place among
    // the transactions depends on when the test's first request came).
    assert_eq!(all.iter().filter(|k| k.starts_with("kernel:")).collect::<Vec<_>>(), ["kernel:identified"], "{ev}");
    let kinds: Vec<&String> = all.iter().filter(|k| !k.starts_with("kernel:")).collect();
    assert_eq!(kinds, ["guest_state:running", "txn:apply", "txn:apply", "txn:apply", "txn:revert", "txn:apply", "txn:revert", "txn:recover", "txn:recover"]);
    let next = ev["next"].as_u64().unwrap();
    let o = vm.remote(&["events", "--since", &(next - 1).to_string()]);
    assert!(o.status.success() && text(&o.stdout).contains("txn recover: ok"), "{}", text(&o.stdout));
    // A long poll with nothing new returns empty after its wait.
    let t0 = std::time::Instant::now();
    let ev = vm.get_json(&format!("/events?since={next}&timeout=1"));
    assert!(ev["events"].as_array().unwrap().is_empty() && t0.elapsed() >= Duration::from_millis(900), "{ev}");

    // The guest powers off: exit 0, an `exited` event was published, the socket is gone.
    let st = vm.wait_exit(Duration::from_secs(120)).expect("the guest powers off");
    assert!(st.success(), "{st:?}\n{}", vm.stderr_text());
    assert!(!vm.sock.exists(), "socket left behind");
    assert!(!vm.serial_text().contains("TG panic"));
}

#[test]
fn api_patches_are_the_desired_state_after_a_reboot() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_desired_state") {
        return;
    }
    // tg.reboot: after 40 iterations the guest asks for a reboot; the VMM boots it again.
    // The patch is built first: it must be applied in the first boot.
    let vsp = build_example(&vsplice_tests::scratch::tmp_dir("api-reboot-patch"), "step_b_v2.c");
    let vm = ApiVm::start("reboot", "tg.tasks=2 tg.iters=100 tg.wait=5 tg.reboot", &["--on-reboot", "restart"]);
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), &std::fs::read(&vsp).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(vm.get_json("/vm")["boot"], 1, "applied in the first boot");
    assert!(vm.wait_serial(WAIT, |s| s.matches("TG ready").count() >= 2), "no second boot:\n{}", vm.stderr_text());
    let mark = vm.serial_text().rfind("TG ready").unwrap();
    assert!(vm.wait_serial(WAIT, |s| every_task_after(s, mark, |i, v| v == livepatch::value_step_b_v2(i))), "not re-applied:\n{}", vm.serial_text());
    let info = vm.get_json("/vm");
    assert_eq!(info["boot"], 2, "{info}");
    let listed = vm.get_json("/patches");
    assert_eq!(listed["patches"][0]["name"], "step_b_v2", "{listed}");
    // Reverted through the API: not re-applied after the next reboot.
    let r = vm.req("DELETE", "/patches/step_b_v2", None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(vm.wait_serial(WAIT, |s| s.matches("TG ready").count() >= 3), "no third boot:\n{}", vm.stderr_text());
    let mark = vm.serial_text().rfind("TG ready").unwrap();
    assert!(vm.wait_serial(WAIT, |s| every_task_after(s, mark, |i, v| v == livepatch::value_orig(i) && i >= 3)), "{}", vm.serial_text());
    assert!(vm.get_json("/patches")["patches"].as_array().unwrap().is_empty());
    let ev = vm.get_json("/events?timeout=0");
    let boots = ev["events"].as_array().unwrap().iter().filter(|e| e["state"] == "running").count();
    assert!(boots >= 3, "{ev}");
}

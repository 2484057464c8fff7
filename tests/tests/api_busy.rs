//! One transaction at a time on `vsplice run --api-sock`: while an apply is
//! retrying against a task that sits in the function (`tg.hold`), another
//! apply, a revert and a recover get `409 busy` and GETs are served; a
//! client that disconnects mid-apply leaves nothing paused or half-done:
//! the transaction ends, its result is in /events and the metrics, and the
//! guest runs on (patched, when the apply succeeded).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vsplice_tests::api::{build_example, build_patch, ApiVm};
use vsplice_tests::{livepatch, testguest};

/// Waits for the first `txn` event after `since`; returns it.
fn next_txn(vm: &ApiVm, since: u64) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(60);
    let mut since = since;
    while Instant::now() < end {
        let ev = vm.get_json(&format!("/events?since={since}&timeout=5"));
        if let Some(e) = ev["events"].as_array().unwrap().iter().find(|e| e["kind"] == "txn") {
            return e.clone();
        }
        since = ev["next"].as_u64().unwrap();
    }
    panic!("no transaction event");
}

fn in_flight(vm: &ApiVm) -> bool {
    vm.get_json("/vm")["transaction_in_flight"].as_bool().unwrap()
}

#[test]
fn concurrent_transactions_are_busy_and_gets_are_served() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_busy") {
        return;
    }
    let vm = ApiVm::start("busy", "tg.tasks=2 tg.wait=5 tg.hold", &[]);
    assert!(vm.wait_serial(Duration::from_secs(60), |s| s.contains("TG hold task=1 in tg_hold")));
    let hold = build_patch(&vm.dir, "hold", livepatch::HOLD_PATCH);
    let b2 = build_example(&vm.dir, "step_b_v2.c");
    let body = serde_json::json!({"path": hold, "attempts": 20}).to_string();
    let first = std::thread::scope(|s| {
        let first = s.spawn(|| vm.req("PUT", "/patches", Some("application/json"), body.as_bytes()));
        let end = Instant::now() + Duration::from_secs(30);
        while !in_flight(&vm) {
            assert!(Instant::now() < end, "the first apply never showed as in flight");
            std::thread::sleep(Duration::from_millis(5));
        }
        for (method, path, ct, b) in [
            ("PUT", "/patches", Some("application/octet-stream"), std::fs::read(&b2).unwrap()),
            ("DELETE", "/patches/hold", None, Vec::new()),
            ("POST", "/patches/recover", None, Vec::new()),
        ] {
            let r = vm.req(method, path, ct, &b);
            assert_eq!((r.status, r.json()["cause"].as_str()), (409, Some("busy")), "{method} {path}: {}", r.text());
        }
        // GETs meanwhile: served, the transaction still in flight after them.
        assert!(vm.get_json("/patches")["patches"].as_array().unwrap().is_empty());
        assert_eq!(vm.req("GET", "/metrics", None, b"").status, 200);
        assert!(in_flight(&vm), "the first apply ended too early for this test");
        first.join().unwrap()
    });
    assert_eq!((first.status, first.json()["cause"].as_str()), (409, Some("code_busy")), "{}", first.text());
    assert!(first.json()["conflicts"].as_array().unwrap().iter().any(|c| c["function"].as_str().unwrap().starts_with("tg_hold")), "{}", first.text());
    // The slot is free again.
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), &std::fs::read(&b2).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    let m = vm.req("GET", "/metrics", None, b"").text();
    assert!(m.contains("vsplice_transactions_total{op=\"apply\",cause=\"code_busy\"} 1"), "{m}");
    let pauses: u64 = m.lines().find_map(|l| l.strip_prefix("vsplice_pauses_total ")).unwrap().parse().unwrap();
    assert!(pauses >= 21, "20 attempts and at least 1: {m}");
}

#[test]
fn a_client_that_disconnects_mid_apply_leaves_the_guest_whole() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_disconnect") {
        return;
    }
    let vm = ApiVm::start("disconnect", "tg.tasks=2 tg.wait=5 tg.hold", &[]);
    assert!(vm.wait_serial(Duration::from_secs(60), |s| s.contains("TG hold task=1 in tg_hold")));
    let hold = build_patch(&vm.dir, "hold", livepatch::HOLD_PATCH);
    let b2 = std::fs::read(build_example(&vm.dir, "step_b_v2.c")).unwrap();

    // A retrying apply whose client is gone at once: it ends (code_busy), the guest runs.
    let since = vm.get_json("/events?timeout=0")["next"].as_u64().unwrap();
    let body = serde_json::json!({"path": hold, "attempts": 8}).to_string();
    let head = format!("PUT /patches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    vm.send_and_disconnect(&head, body.as_bytes());
    let e = next_txn(&vm, since);
    assert_eq!((e["txn"]["op"].as_str(), e["txn"]["cause"].as_str()), (Some("apply"), Some("code_busy")), "{e}");
    let info = vm.get_json("/vm");
    assert_eq!((info["state"].as_str(), info["transaction_in_flight"].as_bool()), (Some("running"), Some(false)), "{info}");
    let before = vm.serial_text().len();
    assert!(vm.wait_serial(Duration::from_secs(30), |s| s.len() > before + 200), "the guest stopped printing");

    // A successful apply whose client is gone at once: applied all the same.
    let since = e["seq"].as_u64().unwrap();
    let mark = vm.serial_text().len();
    let head = format!("PUT /patches HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", b2.len());
    vm.send_and_disconnect(&head, &b2);
    let e = next_txn(&vm, since);
    assert_eq!(e["txn"]["cause"], "ok", "{e}");
    assert_eq!(vm.get_json("/patches")["patches"][0]["name"], "step_b_v2");
    let patched = |s: &str| {
        let lines = testguest::parse_all(s.get(mark..).unwrap_or("")).unwrap_or_default();
        // Task 1 of CPU 0 sits in tg_hold; the other three print.
        let tasks: std::collections::BTreeSet<_> = lines.iter().filter(|l| l.value == livepatch::value_step_b_v2(l.iter)).map(|l| (l.cpu, l.task)).collect();
        tasks.len() >= 3
    };
    assert!(vm.wait_serial(Duration::from_secs(60), patched), "not patched:\n{}", vm.serial_text());
    assert!(!vm.serial_text().contains("TG panic"));
}

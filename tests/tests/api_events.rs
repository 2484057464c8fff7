//! The event stream of `vsplice run --api-sock` on the test guest
//! (`GET /events?follow=true`, `vsplice remote events --follow`): a follower
//! sees the apply and revert of another client as they happen, each line
//! conforming to docs/openapi.yaml; streams are capped (`503
//! too_many_requests`) without starving other requests; followers that
//! disconnect disturb nothing; every stream ends cleanly when the VM exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use vsplice_tests::api::{build_example, ApiVm};
use vsplice_tests::cli::text;
use vsplice_tests::testguest;
use vsplice_vmm::api::http::follow::MAX_STREAMS;

fn is_txn(e: &serde_json::Value, op: &str) -> bool {
    e["kind"] == "txn" && e["txn"]["op"] == op
}

#[test]
fn followers_see_transactions_as_they_happen_and_the_end_of_the_vm() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_events_follow") {
        return;
    }
    let vsp = build_example(&vsplice_tests::scratch::tmp_dir("api-events-patch"), "step_b_v2.c");
    let mut vm = ApiVm::start("events", "tg.tasks=2 tg.iters=300 tg.wait=5", &[]);

    // A follower from the start sees the boot first.
    let mut follower = vm.follow(0).unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
    let first = follower.next_event().unwrap();
    assert_eq!((first["seq"].as_u64(), first["state"].as_str()), (Some(1), Some("running")), "{first}");

    // Two `vsplice remote events --follow`, JSON and text; each is streaming
    // once its first line (the boot) is out.
    let mut json_cli = vm.remote_spawn(&["--json", "events", "--follow"]);
    let mut text_cli = vm.remote_spawn(&["events", "--follow"]);
    let mut json_out = BufReader::new(json_cli.stdout.take().unwrap());
    let mut text_out = BufReader::new(text_cli.stdout.take().unwrap());
    let (mut json_lines, mut text_lines) = (String::new(), String::new());
    json_out.read_line(&mut json_lines).unwrap();
    text_out.read_line(&mut text_lines).unwrap();
    assert!(text_lines.starts_with("1 guest running (boot 1)"), "{text_lines}");

    // The streams left, taken; one more is refused; other requests are served meanwhile.
    let extra: Vec<_> = (3..MAX_STREAMS).map(|_| vm.follow(0).unwrap_or_else(|r| panic!("{} {}", r.status, r.text()))).collect();
    let refused = vm.follow(0).expect_err("one stream more than the cap");
    assert_eq!((refused.status, refused.json()["cause"].as_str()), (503, Some("too_many_requests")), "{}", refused.text());
    assert_eq!(vm.get_json("/vm")["state"], "running");
    // Those followers go away; later requests do not notice.
    drop(extra);

    // Another client applies and reverts; the follower sees both, in order.
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), &std::fs::read(&vsp).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    let applied = follower.until(|e| e["kind"] == "txn");
    assert!(is_txn(&applied, "apply") && applied["txn"]["cause"] == "ok", "{applied}");
    let r = vm.req("DELETE", "/patches/step_b_v2", None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let reverted = follower.until(|e| e["kind"] == "txn");
    assert!(is_txn(&reverted, "revert") && reverted["txn"]["cause"] == "ok", "{reverted}");
    assert!(reverted["seq"].as_u64() > applied["seq"].as_u64());
    assert_eq!(vm.get_json("/vm")["state"], "running");

    // The slots of the followers that went away come back (each finds out
    // its client is gone at its next write: an event or a keep-alive).
    let end = Instant::now() + Duration::from_secs(60);
    let late = loop {
        match vm.follow(reverted["seq"].as_u64().unwrap()) {
            Ok(f) => break f,
            Err(r) if Instant::now() < end => assert_eq!(r.status, 503, "{}", r.text()),
            Err(r) => panic!("no stream slot came back: {} {}", r.status, r.text()),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(late);

    // The guest powers off: every stream gives the `exited` event, then ends cleanly.
    let st = vm.wait_exit(Duration::from_secs(180)).expect("the guest powers off");
    assert!(st.success(), "{st:?}\n{}", vm.stderr_text());
    let mut last = reverted;
    while let Some(e) = follower.next_event() {
        last = e;
    }
    assert_eq!((last["kind"].as_str(), last["state"].as_str()), (Some("guest_state"), Some("exited")), "{last}");

    json_out.read_to_string(&mut json_lines).unwrap();
    text_out.read_to_string(&mut text_lines).unwrap();
    for (name, child) in [("json", json_cli), ("text", text_cli)] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    }
    vm.openapi().validate_lines(&vm.event_line_schema(), json_lines.as_bytes()).unwrap();
    let events: Vec<serde_json::Value> = json_lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ops: Vec<String> = events
        .iter()
        .map(|e| format!("{}:{}", e["kind"].as_str().unwrap(), e["txn"]["op"].as_str().or(e["state"].as_str()).unwrap()))
        .filter(|k| k != "kernel:identified")
        .collect();
    assert_eq!(ops, ["guest_state:running", "txn:apply", "txn:revert", "guest_state:exited"], "{json_lines}");
    assert!(text_lines.contains("txn apply step_b_v2: ok") && text_lines.contains("txn revert step_b_v2: ok"), "{text_lines}");
    assert!(text_lines.trim_end().ends_with(')') && text_lines.contains("guest exited"), "{text_lines}");
}

#[test]
fn a_bad_follow_query_is_refused() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_events_bad_follow") {
        return;
    }
    let vm = ApiVm::start("events-bad", "tg.tasks=1 tg.wait=5", &[]);
    for path in ["/events?follow=maybe", "/events?follow=true&timeout=3"] {
        let r = vm.req("GET", path, None, b"");
        assert_eq!((r.status, r.json()["cause"].as_str()), (400, Some("bad_query")), "{path}: {}", r.text());
    }
}

//! Bad requests to `vsplice run --api-sock` on the test guest: malformed
//! JSON, unknown fields, unknown patch, oversized bodies (declared and
//! streamed), wrong method, unknown route, wrong content type, an
//! unreadable patch file, a file that is not a patch, a bad query; each
//! answered with its status and stable cause, conforming to
//! docs/openapi.yaml, and the guest never disturbed. A second VMM on the
//! same live socket is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;

use vsplice_tests::api::ApiVm;
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::testguest;
use vsplice_vmm::api::client::read_response;
use vsplice_vmm::api::MAX_BODY;

fn cause(vm: &ApiVm, method: &str, path: &str, ct: Option<&str>, body: &[u8]) -> (u16, String) {
    let r = vm.req(method, path, ct, body);
    (r.status, r.json()["cause"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn bad_requests_get_their_status_and_cause() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_bad_requests") {
        return;
    }
    let vm = ApiVm::start("bad", "tg.tasks=2 tg.wait=5", &[]);
    let json = Some("application/json");
    assert_eq!(cause(&vm, "PUT", "/patches", json, b"{\"path\": "), (400, "malformed_json".into()));
    assert_eq!(cause(&vm, "PUT", "/patches", json, b"[1,2]"), (400, "malformed_json".into()));
    assert_eq!(cause(&vm, "PUT", "/patches", json, br#"{"path":"/x","bogus":1}"#), (400, "malformed_json".into()));
    assert_eq!(cause(&vm, "PUT", "/patches", json, br#"{"path":"/x","check":"fast"}"#), (400, "malformed_json".into()));
    assert_eq!(cause(&vm, "PUT", "/patches", json, br#"{"path":"/nonexistent/x.vsp"}"#), (400, "patch_file_unreadable".into()));
    assert_eq!(cause(&vm, "PUT", "/patches", Some("text/plain"), b"x"), (415, "unsupported_media_type".into()));
    assert_eq!(cause(&vm, "PUT", "/patches", None, b"x"), (415, "unsupported_media_type".into()));
    // Not a patch: the transaction's own `bad_patch` report, as the CLI prints it.
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), b"definitely not a patch");
    assert_eq!((r.status, r.json()["cause"].as_str(), r.json()["op"].as_str()), (422, Some("bad_patch"), Some("apply")), "{}", r.text());
    assert_eq!(cause(&vm, "GET", "/patches/nope", None, b""), (404, "unknown_patch".into()));
    assert_eq!(cause(&vm, "DELETE", "/patches/nope", None, b""), (404, "unknown_patch".into()));
    assert_eq!(cause(&vm, "GET", "/nowhere", None, b""), (404, "not_found".into()));
    assert_eq!(cause(&vm, "GET", "/patches/a/b", None, b""), (404, "not_found".into()));
    assert_eq!(cause(&vm, "POST", "/vm", None, b""), (405, "method_not_allowed".into()));
    assert_eq!(cause(&vm, "DELETE", "/patches", None, b""), (405, "method_not_allowed".into()));
    assert_eq!(cause(&vm, "GET", "/patches/recover", None, b""), (405, "method_not_allowed".into()));
    assert_eq!(cause(&vm, "PUT", "/metrics", None, b""), (405, "method_not_allowed".into()));
    assert_eq!(cause(&vm, "GET", "/events?since=x", None, b""), (400, "bad_query".into()));

    // Oversized, declared: refused before a byte of the body is read.
    let mut s = UnixStream::connect(&vm.sock).unwrap();
    let head = format!("PUT /patches HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
    s.write_all(head.as_bytes()).unwrap();
    let r = read_response(&mut s).unwrap();
    vm.conforms("PUT", "/patches", &r);
    assert_eq!((r.status, r.json()["cause"].as_str()), (413, Some("body_too_large")), "{}", r.text());
    // Oversized, streamed (chunked, no length): cut at the limit.
    let mut s = UnixStream::connect(&vm.sock).unwrap();
    let head = "PUT /patches HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..=(MAX_BODY >> 20) {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).and_then(|_| s.write_all(&chunk)).and_then(|_| s.write_all(b"\r\n")).is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    // The server answers 413 and closes with the rest of the stream unread,
    // which a Unix socket may report to this side as a reset before the answer
    // is read; either way nothing is applied (the events below).
    match read_response(&mut s) {
        Ok(r) => {
            vm.conforms("PUT", "/patches", &r);
            assert_eq!((r.status, r.json()["cause"].as_str()), (413, Some("body_too_large")), "{}", r.text());
        }
        Err(e) => assert_eq!(e.cause(), "api_io", "{e}"),
    }
    // Garbage instead of HTTP: the server survives it.
    let mut s = UnixStream::connect(&vm.sock).unwrap();
    let _ = s.write_all(b"\x00\x01 not http at all\r\n\r\n");
    let _ = read_response(&mut s);

    // Nothing of that touched the guest.
    assert!(vm.get_json("/patches")["patches"].as_array().unwrap().is_empty());
    assert_eq!(vm.get_json("/vm")["state"], "running");
    let ev = vm.get_json("/events?timeout=0");
    let txns: Vec<_> = ev["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "txn").collect();
    assert_eq!(txns.len(), 1, "only the bad patch ran a transaction: {ev}");
    let o = vm.remote(&["patch", "apply", "/nonexistent.vsp"]);
    assert_eq!(o.status.code(), Some(1), "bad input: {}", text(&o.stderr));

    // A second VMM on the live socket is refused; the first keeps its socket.
    let o = vsplice(&["run", "--kernel", &testguest::image().to_string_lossy(), "--memory", "64", "--serial", "null", "--api-sock", &vm.sock.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("[api_socket_in_use]"), "{}", text(&o.stderr));
    assert_eq!(vm.get_json("/vm")["state"], "running");
    // `vsplice remote` at a socket nobody serves: bad input.
    let o = vsplice(&["remote", "--api-sock", "/nonexistent/api.sock", "vm"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("[api_unreachable]"), "{}", text(&o.stderr));
}

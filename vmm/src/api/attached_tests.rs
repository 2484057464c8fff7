//! The `vsplice attach` loop on the patcher's fakes (no gdbstub, no KVM):
//! it serves the API over the attached guest until told to stop, says
//! `gdbstub` and the kernel it identified in `GET /vm`, ends with
//! `gdbstub_gone` when the connection dies, answers a request still waiting
//! at the end `guest_gone`, and removes its socket; a debug stop at none of
//! its breakpoints is resumed (with an event), a stop someone else made is
//! left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vsplice_patcher::gdb::{GdbError, OwnStop};
use vsplice_patcher::model::backend::{Backend, BackendError, VcpuState};
use vsplice_patcher::model::CheckMode;
use vsplice_patcher::testing::kernel::arena;
use vsplice_patcher::testing::{FakeKernel, FakePatch, RamGuest};

use super::attached::{AttachedService, AttachedVm, Attachment};
use super::client::{self, ClientResponse};

/// The fake guest as the daemon holds it: alive for `turns` liveness checks (or for ever).
#[derive(Debug)]
struct Fake {
    guest: RamGuest,
    running: bool,
    turns: Option<usize>,
    /// Reported once, as the guest stops on its own, by the next `own_stop`.
    stop: Option<OwnStop>,
    /// What `clear_stray` was asked to clear.
    cleared: Vec<u64>,
}

impl Backend for Fake {
    fn stop(&mut self) -> Result<Vec<VcpuState>, BackendError> {
        self.guest.stop()
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.running = true;
        self.guest.resume()
    }
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.guest.read_phys(gpa, buf)
    }
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), BackendError> {
        self.guest.write_phys(gpa, data)
    }
}

impl Attachment for Fake {
    fn running(&self) -> bool {
        self.running
    }
    fn check_alive(&mut self) -> Result<(), GdbError> {
        match &mut self.turns {
            Some(0) => Err(GdbError::Closed),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
    fn own_stop(&mut self) -> Result<Option<OwnStop>, GdbError> {
        let s = self.stop.take();
        if s.is_some() {
            self.running = false;
        }
        Ok(s)
    }
    fn clear_stray(&mut self, rips: &[u64]) -> Vec<u64> {
        self.cleared.extend_from_slice(rips);
        rips.to_vec()
    }
}

/// Sets the loop's stop flag when dropped, so that a failed assertion in a
/// scope ends the loop thread instead of leaving the scope waiting for it.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Waits (bounded) until `GET /vm` says `want`.
fn wait_state(path: &Path, want: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = ask(path, "GET", "/vm", b"").json()["state"].as_str().map(str::to_owned);
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(std::time::Instant::now() < end, "never {want} (last {now:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sock(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vsplice-attached-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn ask(sock: &Path, method: &str, path: &str, body: &[u8]) -> ClientResponse {
    let ct = (!body.is_empty()).then_some("application/octet-stream");
    client::request(sock, method, path, ct, body, Some(Duration::from_secs(30))).unwrap()
}

#[test]
fn serves_the_api_over_the_attached_guest_until_stopped_then_removes_its_socket() {
    let k = FakeKernel::new();
    let path = sock("serve");
    let mut service = AttachedService::start(&path, AttachedVm::new(&k, 2, arena(), CheckMode::Conservative)).unwrap();
    let mut fake = Fake { guest: k.guest(), running: true, turns: None, stop: None, cleared: Vec::new() };
    let stop = AtomicBool::new(false);
    let patch = FakePatch::new("p1").replace("fake_a").build(&k).unwrap().to_bytes().unwrap();
    std::thread::scope(|s| {
        let server = s.spawn(|| service.run(&mut fake, &k, &stop));
        let _stop = StopOnDrop(&stop);
        let vm = ask(&path, "GET", "/vm", b"").json();
        assert_eq!(vm["hypervisor"], "gdbstub");
        assert_eq!(vm["memory_mib"], serde_json::Value::Null);
        assert_eq!(vm["shared_memory"], serde_json::Value::Null, "the gdbstub alone");
        assert_eq!((vm["vcpus"].as_u64(), vm["boot"].as_u64(), vm["state"].as_str()), (Some(2), Some(1), Some("running")));
        assert_eq!(vm["kernel"]["image"], serde_json::Value::Null);
        assert_eq!(vm["arena"], arena().to_string());
        let applied = ask(&path, "PUT", "/patches", &patch);
        assert_eq!(applied.status, 200, "{}", applied.text());
        // The daemon's --check applies to a request that names none.
        assert_eq!(applied.json()["check"]["mode"], "conservative", "{}", applied.text());
        let list = ask(&path, "GET", "/patches", b"").json();
        assert_eq!(list["patches"][0]["name"], "p1");
        let reverted = ask(&path, "DELETE", "/patches/p1", b"");
        assert_eq!(reverted.status, 200, "{}", reverted.text());
        stop.store(true, Ordering::Release);
        server.join().unwrap().unwrap();
    });
    assert!(path.exists(), "the socket stays until finish");
    service.finish();
    assert!(!path.exists(), "the socket is removed");
}

#[test]
fn a_dead_gdbstub_ends_the_loop_as_gdbstub_gone_and_the_vm_exited() {
    let k = FakeKernel::new();
    let path = sock("gone");
    let mut service = AttachedService::start(&path, AttachedVm::new(&k, 1, arena(), CheckMode::Orc)).unwrap();
    // Kept stopped at attach (a half-written transaction): `paused` until it dies.
    let mut fake = Fake { guest: k.guest(), running: false, turns: Some(3), stop: None, cleared: Vec::new() };
    let stop = AtomicBool::new(false);
    let e = service.run(&mut fake, &k, &stop).unwrap_err();
    assert_eq!(e.cause(), "gdbstub_gone");
    assert!(vsplice_patcher::model::chain(&e).contains("closed"), "{}", vsplice_patcher::model::chain(&e));
    let vm = ask(&path, "GET", "/vm", b"").json();
    assert_eq!(vm["state"], "exited");
    let events = ask(&path, "GET", "/events?since=0", b"").json();
    let states: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["state"].as_str()).collect();
    assert_eq!(states, ["paused", "exited"], "{events}");
    service.finish();
    assert!(!path.exists());
}

#[test]
fn a_request_waiting_when_the_daemon_ends_is_answered_guest_gone() {
    let k = FakeKernel::new();
    let path = sock("pending");
    let service = AttachedService::start(&path, AttachedVm::new(&k, 1, arena(), CheckMode::Orc)).unwrap();
    let patch = FakePatch::new("p1").replace("fake_a").build(&k).unwrap().to_bytes().unwrap();
    std::thread::scope(|s| {
        let client = s.spawn(|| ask(&path, "PUT", "/patches", &patch));
        // The transaction slot is claimed before the request goes to the (idle) loop.
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !service.shared().busy() {
            assert!(std::time::Instant::now() < end, "the request never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        service.finish();
        let r = client.join().unwrap();
        assert_eq!((r.status, r.json()["cause"].as_str()), (503, Some("guest_gone")), "{}", r.text());
    });
    assert!(!path.exists());
}

#[test]
fn a_guest_kept_stopped_is_paused_until_a_transaction_lets_it_run() {
    let k = FakeKernel::new();
    let path = sock("kept");
    let mut service = AttachedService::start(&path, AttachedVm::new(&k, 1, arena(), CheckMode::Orc)).unwrap();
    let mut fake = Fake { guest: k.guest(), running: false, turns: None, stop: None, cleared: Vec::new() };
    let stop = AtomicBool::new(false);
    let patch = FakePatch::new("p1").replace("fake_a").build(&k).unwrap().to_bytes().unwrap();
    std::thread::scope(|s| {
        let server = s.spawn(|| service.run(&mut fake, &k, &stop));
        let _stop = StopOnDrop(&stop);
        // The loop publishes `paused` at its first turn (the service starts out `running`).
        wait_state(&path, "paused");
        assert_eq!(ask(&path, "PUT", "/patches", &patch).status, 200);
        // The transaction resumed the guest; the loop publishes it at its next turn.
        wait_state(&path, "running");
        let events = ask(&path, "GET", "/events?since=0", b"").json();
        let states: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["state"].as_str()).collect();
        assert_eq!(states, ["paused", "running"], "{events}");
        stop.store(true, Ordering::Release);
        server.join().unwrap().unwrap();
    });
    service.finish();
}

/// Runs the loop over `fake` until `GET /events` has an event whose detail
/// contains `want` (or ~2 s pass when `want` is empty); returns the details.
fn run_until_event(path: &Path, vm: AttachedVm, k: &FakeKernel, fake: &mut Fake, want: &str) -> Vec<String> {
    let mut service = AttachedService::start(path, vm).unwrap();
    let stop = AtomicBool::new(false);
    let details = std::thread::scope(|s| {
        let server = s.spawn(|| service.run(fake, k, &stop));
        let _stop = StopOnDrop(&stop);
        let end = std::time::Instant::now() + Duration::from_secs(if want.is_empty() { 2 } else { 30 });
        let details = loop {
            let ev = ask(path, "GET", "/events?since=0&timeout=0", b"").json();
            let details: Vec<String> = ev["events"].as_array().unwrap().iter().filter_map(|e| e["detail"].as_str().map(str::to_owned)).collect();
            if (!want.is_empty() && details.iter().any(|d| d.contains(want))) || std::time::Instant::now() > end {
                break details;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        stop.store(true, Ordering::Release);
        server.join().unwrap().unwrap();
        details
    });
    service.finish();
    details
}

#[test]
fn a_stray_debug_stop_is_resumed_and_said_a_stop_someone_else_made_is_left() {
    let k = FakeKernel::new();
    const LEFT: u64 = 0xffff_ffff_8110_4000;
    let mut fake = Fake { guest: k.guest(), running: true, turns: None, stop: Some(OwnStop::Stray(vec![LEFT])), cleared: Vec::new() };
    let ev = run_until_event(&sock("stray"), AttachedVm::new(&k, 1, arena(), CheckMode::Orc), &k, &mut fake, "resumed a debug stop");
    assert!(ev.iter().any(|d| d.contains("resumed a debug stop") && d.contains("0xffffffff81104000")), "{ev:?}");
    assert!(fake.running, "the guest runs on after a stray stop");
    assert_eq!(fake.cleared, vec![LEFT], "the breakpoint left there is cleared first");

    let mut fake = Fake { guest: k.guest(), running: true, turns: None, stop: Some(OwnStop::External(2)), cleared: Vec::new() };
    let ev = run_until_event(&sock("external"), AttachedVm::new(&k, 1, arena(), CheckMode::Orc), &k, &mut fake, "");
    assert!(ev.iter().any(|d| d.contains("stopped outside vsplice")), "{ev:?}");
    assert!(!fake.running, "a stop someone else made stays");
    assert!(fake.cleared.is_empty());
}

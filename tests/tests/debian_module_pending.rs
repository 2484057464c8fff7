//! Issue 13, item 2, the not-yet-loaded case: the Debian nfsd fix (6.1.0-56
//! → -57, `tests/src/modcorpus.rs`) sent to a `vsplice attach` daemon while
//! nfsd is not loaded, held as pending, and applied as the module loads.
//!
//! - Without `when_loaded` the apply is refused `module_not_loaded`, and the
//!   message names the option.
//! - With it: `202 pending`, listed by `GET /patches`; `DELETE` cancels it,
//!   and nfsd then loads unpatched (its entries read after the daemon
//!   detached: no jump; no record).
//! - Sent again, then nfsd loaded: the daemon, stopped on the load hook,
//!   applies it with the module COMING (event `applied_at_load`; the txn's
//!   note says so); `GET /patches` lists it with every site active in
//!   module nfsd and nothing pending; nfsd serves the SEQUENCE call through
//!   the patched `nfsd4_sequence` (NFS4ERR_BADSESSION); the entries read
//!   after the daemon detached jump out of the functions.
//! - nfsd unloaded with the daemon attached again: the record is dropped at
//!   the unload hook (event `module_unloaded`, history `module_unloaded`,
//!   nothing listed), before any other request.
//! - Sent again, then a different build of nfsd loaded (one byte of
//!   `client_info_show` changed, unsigned: `tests/src/ko_tamper.rs`): the
//!   apply at the load hook is refused `no_match` (event `failed_at_load`
//!   with the cause), the patch is no longer pending, nothing is listed,
//!   and nfsd loads and runs unpatched (no jump at its entries; it serves
//!   the SEQUENCE call).
//! - A daemon with `--pending-dir` holding a pending patch (its load hook
//!   set, the patch kept in the dir) is SIGKILLed; a new daemon with the
//!   same dir attaches, holds the patch again without its being sent
//!   (event `restored`), and nfsd is loaded at once: the load completes (no
//!   guest left stopped on a hook nobody serves), the patch is applied at
//!   the load, the dir is empty again; any stop the new daemon could not
//!   place was resumed and said (`guest_state` event).
//! - A daemon that ends (SIGTERM) with a patch held says on stderr that it
//!   dropped it (no pending dir) or kept it in the dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vsplice_tests::attach::AttachDaemon;
use vsplice_tests::cli::text;
use vsplice_tests::linuxpatch;
use vsplice_tests::nfsd::{sequence, BADSESSION, ENTRIES, MODULES, SERVE};
use vsplice_tests::ko_tamper::tamper;
use vsplice_tests::modcorpus::{assert_jumps, corpus_or_skip, initramfs_with_files, insmod_all, module_entries, Entry};
use vsplice_tests::qemu::{Guest, RunOptions};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

/// nfsd unloaded when it was never started.
const UNLOAD_IDLE: &str = "set -e; rmmod nfsd; ! grep -q '^nfsd ' /proc/modules";
const UNLOAD: &str = "set -e; echo 0 > /proc/fs/nfsd/threads; umount /proc/fs/nfsd; rmmod nfsd; ! grep -q '^nfsd ' /proc/modules";

fn daemon(g: &Guest, dir: &Path, n: u32) -> AttachDaemon {
    daemon_with(g, dir, n, &[])
}

fn daemon_with(g: &Guest, dir: &Path, n: u32, extra: &[&str]) -> AttachDaemon {
    let d = dir.join(format!("daemon{n}"));
    std::fs::create_dir_all(&d).unwrap();
    let args = [&["--tasks", "agentless"][..], extra].concat();
    AttachDaemon::start(&d, g.gdb_addr().unwrap(), &linuxpatch::arena_arg(g), &args, Duration::from_secs(300)).unwrap()
}

fn stop(mut d: AttachDaemon) {
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(120)).expect("the daemon ends on SIGTERM");
    assert!(st.success(), "{st}: {}", d.stderr_text());
}

fn put(d: &AttachDaemon, vsp: &Path, when_loaded: bool) -> (u16, Value) {
    let body = serde_json::json!({ "path": vsp, "when_loaded": when_loaded }).to_string();
    let r = d.req("PUT", "/patches", Some("application/json"), body.as_bytes());
    (r.status, r.json())
}

fn events(d: &AttachDaemon) -> Vec<Value> {
    d.req("GET", "/events?since=0&timeout=0", None, b"").json()["events"].as_array().cloned().unwrap_or_default()
}

fn module_event<'a>(ev: &'a [Value], state: &str) -> Option<&'a Value> {
    ev.iter().find(|e| e["kind"] == "module" && e["state"] == state)
}

/// The daemon's events once one of them is a `module` event `state`
/// (polled for up to 60 s; panics with the events and the daemon's stderr).
fn wait_module_event(d: &AttachDaemon, state: &str) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let ev = events(d);
        if module_event(&ev, state).is_some() {
            return ev;
        }
        assert!(Instant::now() < end, "no {state} event: {ev:?}\n{}", d.stderr_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn entries(g: &Guest) -> Vec<Entry> {
    module_entries(g, "nfsd", &ENTRIES).unwrap()
}

#[test]
fn a_patch_for_nfsd_waits_for_the_module_and_is_applied_as_it_loads() {
    let _l = vm_lock();
    let label = "module_nfsd_pending";
    let Some(fix) = corpus_or_skip(label, "6.1.0-56-amd64", "images/debian-fix-source.sh --from 56 --to 57 amd64", &MODULES) else { return };
    let dir = tmp_dir(label);
    let vsp = dir.join("nfsd-fix.vsp");
    let modules = fix.modules().to_string_lossy().into_owned();
    let o = fix.build_fix(&vsp, &["--modules", &modules]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let manifest: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (id, name) = (manifest["id"].as_str().unwrap().to_owned(), manifest["name"].as_str().unwrap().to_owned());
    // A local rebuild of nfsd: one byte of client_info_show differs.
    let ko = std::fs::read(fix.modules().join("kernel/fs/nfsd/nfsd.ko")).unwrap();
    let other = tamper(&ko, "client_info_show").unwrap();
    eprintln!("  tampered nfsd.ko: client_info_show+{:#x} {:#04x} -> {:#04x}", other.offset, other.was, other.now);
    let initrd = initramfs_with_files(&fix, &MODULES, "nfsd", &dir, &[("modules/tampered/nfsd.ko", &other.bytes)]).unwrap();
    let Some(mut g) = fix.boot(label, initrd) else { return };
    let load = insmod_all(&MODULES, "nfsd");

    // Refused without the option; held with it; cancelled.
    let d = daemon(&g, &dir, 1);
    let (st, v) = put(&d, &vsp, false);
    assert_eq!((st, v["cause"].as_str()), (409, Some("module_not_loaded")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("when_loaded") || v["message"].as_str().unwrap().contains("--when-loaded"), "the refusal names the option: {v}");
    let (st, v) = put(&d, &vsp, true);
    assert_eq!((st, v["state"].as_str(), v["id"].as_str()), (202, Some("pending"), Some(id.as_str())), "{v}");
    assert!(v["modules"].as_array().unwrap().iter().any(|m| m == "nfsd"), "{v}");
    let listed = d.req("GET", "/patches", None, b"").json();
    assert_eq!(listed["pending"][0]["id"], id.as_str(), "pending listed: {listed}");
    let r = d.req("DELETE", &format!("/patches/{name}"), None, b"");
    assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("cancelled")), "{}", r.text());
    let listed = d.req("GET", "/patches", None, b"").json();
    assert!(listed.get("pending").is_none() && listed["patches"].as_array().unwrap().is_empty(), "nothing left: {listed}");
    g.run_ok(&load).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let ev = events(&d);
    assert!(module_event(&ev, "cancelled").is_some() && module_event(&ev, "applied_at_load").is_none(), "{ev:?}");
    assert!(d.req("GET", "/patches", None, b"").json()["patches"].as_array().unwrap().is_empty());
    stop(d);
    let unpatched = entries(&g);
    assert_eq!(unpatched.len(), ENTRIES.len(), "nfsd loaded");
    g.run_ok(&format!("rmmod nfsd; {}", "! grep -q '^nfsd ' /proc/modules")).unwrap();

    // Held, then applied as nfsd loads.
    let d = daemon(&g, &dir, 2);
    let (st, v) = put(&d, &vsp, true);
    assert_eq!((st, v["state"].as_str()), (202, Some("pending")), "{v}");
    let t = Instant::now();
    g.run_ok(&format!("{}; grep -c '^nfsd ' /proc/modules", insmod_all(&MODULES[5..], "nfsd"))).unwrap();
    eprintln!("  nfsd loaded with the hook set in {:.1} s", t.elapsed().as_secs_f64());
    let ev = events(&d);
    let applied = module_event(&ev, "applied_at_load").unwrap_or_else(|| panic!("no applied_at_load event: {ev:?}\n{}", d.stderr_text()));
    let detail = applied["detail"].as_str().unwrap();
    assert!(detail.contains("COMING") && detail.contains(&name), "{detail}");
    let txn = ev.iter().rev().find(|e| e["kind"] == "txn").expect("the apply's txn event");
    assert_eq!(txn["txn"]["cause"], "ok", "{txn}");
    assert!(txn["txn"]["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap_or("").contains("state COMING")), "{txn}");
    eprintln!("  {detail}; downtime {} us", txn["txn"]["timings"]["downtime_us"]);
    let listed = d.req("GET", "/patches", None, b"").json();
    let p = listed["patches"].as_array().unwrap().iter().find(|p| p["id"] == id.as_str()).unwrap_or_else(|| panic!("not listed: {listed}"));
    let funcs = p["funcs"].as_array().unwrap();
    assert!(!funcs.is_empty() && funcs.iter().all(|f| f["active"] == true && f["module"] == "nfsd"), "every site active in nfsd: {p}");
    assert!(listed.get("pending").is_none(), "nothing pending: {listed}");
    g.run_ok(SERVE).unwrap();
    assert_eq!(sequence(&mut g), BADSESSION, "NFS4ERR_BADSESSION through the patched nfsd4_sequence");
    let problems = g.console_problems();
    assert!(problems.is_empty(), "console after the patched run: {problems:?}");
    stop(d);
    assert_jumps(&unpatched, &entries(&g));

    // Unloaded with the daemon attached: dropped at the unload hook.
    let d = daemon(&g, &dir, 3);
    assert_eq!(d.req("GET", "/patches", None, b"").json()["patches"].as_array().unwrap().len(), 1);
    g.run_ok(UNLOAD).unwrap();
    let ev = wait_module_event(&d, "module_unloaded");
    let gone = module_event(&ev, "module_unloaded").expect("waited for");
    assert!(gone["detail"].as_str().unwrap().contains(&id), "{gone}");
    assert!(!ev.iter().any(|e| e["kind"] == "txn"), "dropped without a transaction: {ev:?}");
    let listed = d.req("GET", "/patches", None, b"").json();
    assert!(listed["patches"].as_array().unwrap().is_empty(), "the record is gone: {listed}");
    assert!(listed["history"].as_array().unwrap().iter().any(|h| h["id"] == id.as_str() && h["how"] == "module_unloaded"), "{listed}");
    stop(d);

    // Another build of nfsd loaded: refused at the load hook, loads unpatched.
    let d = daemon(&g, &dir, 4);
    let (st, v) = put(&d, &vsp, true);
    assert_eq!((st, v["state"].as_str()), (202, Some("pending")), "{v}");
    g.run_ok("set -e; insmod /modules/tampered/nfsd.ko; grep -c '^nfsd ' /proc/modules").unwrap();
    let ev = events(&d);
    let failed = module_event(&ev, "failed_at_load").unwrap_or_else(|| panic!("no failed_at_load event: {ev:?}\n{}", d.stderr_text()));
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.contains("no_match") && detail.contains(&name) && detail.contains("loads unpatched"), "{detail}");
    assert!(module_event(&ev, "applied_at_load").is_none(), "{ev:?}");
    let txn = ev.iter().rev().find(|e| e["kind"] == "txn").expect("the refused apply's txn event");
    assert_eq!(txn["txn"]["cause"], "no_match", "{txn}");
    eprintln!("  {detail}");
    let listed = d.req("GET", "/patches", None, b"").json();
    assert!(listed.get("pending").is_none() && listed["patches"].as_array().unwrap().is_empty(), "nothing pending or applied: {listed}");
    stop(d);
    let now = entries(&g);
    assert_eq!(now.len(), ENTRIES.len(), "the other nfsd loaded");
    for ((n, _, was), (_, _, is)) in unpatched.iter().zip(&now) {
        assert_eq!(was, is, "{n}: the refused patch left a change at its entry");
    }
    g.run_ok(SERVE).unwrap();
    assert_eq!(sequence(&mut g), BADSESSION, "the unpatched nfsd4_sequence answers");
    g.run_ok(UNLOAD).unwrap();

    // A daemon that dies with its load hook set; a new one; nfsd loads.
    let kept = dir.join("pending");
    let kept_arg = kept.to_str().unwrap();
    let mut dead = daemon_with(&g, &dir, 5, &["--pending-dir", kept_arg]);
    let (st, v) = put(&dead, &vsp, true);
    assert_eq!((st, v["state"].as_str()), (202, Some("pending")), "{v}");
    assert!(kept.join(format!("{id}.vsp")).exists() && kept.join(format!("{id}.json")).exists(), "kept in the pending dir");
    dead.signal(libc::SIGKILL);
    dead.wait_exit(Duration::from_secs(30)).expect("SIGKILL ends the daemon");
    let d = daemon_with(&g, &dir, 6, &["--pending-dir", kept_arg]);
    let end = Instant::now() + Duration::from_secs(60);
    while d.req("GET", "/patches", None, b"").json().get("pending").is_none() {
        assert!(Instant::now() < end, "not held again: {:?}\n{}", events(&d), d.stderr_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = module_event(&events(&d), "restored").cloned().unwrap_or_else(|| panic!("no restored event: {:?}", events(&d)));
    assert!(restored["detail"].as_str().unwrap().contains("held again"), "{restored}");
    let t = Instant::now();
    let loaded = g.run_with(&format!("{}; grep -c '^nfsd ' /proc/modules", insmod_all(&MODULES[5..], "nfsd")), RunOptions::new(Duration::from_secs(120)));
    let ev = events(&d);
    let loaded = loaded.unwrap_or_else(|e| panic!("nfsd did not load after the daemon died: {e}\nevents: {ev:?}\n{}", d.stderr_text()));
    assert_eq!(loaded.status, 0, "{}", loaded.text());
    eprintln!("  nfsd loaded {:.1} s after the new daemon started; its guest_state events: {:?}", t.elapsed().as_secs_f64(),
        ev.iter().filter(|e| e["kind"] == "guest_state").map(|e| e["detail"].as_str().unwrap_or("")).collect::<Vec<_>>());
    assert!(module_event(&ev, "applied_at_load").is_some(), "the new daemon applied it at the load: {ev:?}");
    let listed = d.req("GET", "/patches", None, b"").json();
    assert!(listed.get("pending").is_none() && listed["patches"].as_array().unwrap().iter().any(|p| p["id"] == id.as_str()), "{listed}");
    assert_eq!(d.req("GET", "/vm", None, b"").json()["state"], "running");
    assert!(!kept.join(format!("{id}.json")).exists() && !kept.join(format!("{id}.vsp")).exists(), "applied: no longer kept");
    // Unloaded with it attached: dropped at the unload hook, as above.
    g.run_ok(UNLOAD_IDLE).unwrap();
    wait_module_event(&d, "module_unloaded");
    stop(d);

    // A daemon that ends with a patch held says what becomes of it.
    for (n, extra, says) in [(7, vec![], "1 pending patch(es) dropped"), (8, vec!["--pending-dir", kept_arg], "1 pending patch(es) kept in")] {
        let mut d = daemon_with(&g, &dir, n, &extra);
        let (st, v) = put(&d, &vsp, true);
        assert_eq!((st, v["state"].as_str()), (202, Some("pending")), "{v}");
        d.signal(libc::SIGTERM);
        let st = d.wait_exit(Duration::from_secs(120)).expect("the daemon ends on SIGTERM");
        let err = d.stderr_text();
        assert!(st.success() && err.contains(says) && err.contains(&id), "{st}: {err}");
    }
    assert!(kept.join(format!("{id}.json")).exists(), "left in the dir by the daemon that ended");
    g.check_console().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

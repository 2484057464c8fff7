//! Targets registering themselves in the store (`vsplice run --api-sock …
//! --register etcd://…|dir:… --label host=a`), and `vsplice fleet
//! --inventory etcd://…|dir:…` rolling out over what is registered:
//! - etcd (a three-member loopback cluster started by the test; skipped
//!   loudly only when etcd cannot be installed): six test-guest VMs in two
//!   hosts register; the plan shows where each target came from; a
//!   rollout with the selector `host=a` patches exactly the three of host
//!   `a`, each once (the journal and the registries agree), the others
//!   untouched; a selected VMM SIGKILLed mid-rollout (the canary's probe
//!   gate holds the rollout until its key has gone) is reported
//!   `unreachable`, not a failure (the budget is 0); each record carries the
//!   kernel's build-id and the VMM's pid; a VMM that powers off removes its
//!   key at once; bad labels are refused before anything starts; an
//!   unreachable store does not stop the VM.
//! - a directory store on one host: the same selection, a killed VMM's
//!   file reported stale and left out, SIGTERM and a clean exit removing
//!   the file.
//!
//! Measured (printed): registration latency (VMM start → key visible) and
//! the time for a SIGKILLed VMM's key to vanish.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vsplice_tests::api::{build_example, ApiVm};
use vsplice_tests::etcd::{etcd_or_skip, Cluster};
use vsplice_tests::fleet::{count, fleet, holding_probe, outcome, register_args, registered, said, steps, wait_registered, Fleet, QUIET};
use vsplice_tests::scratch::free_port;
use vsplice_tests::{cli, testguest};
use vsplice_vmm::fleet::journal::Op;

const N: usize = 6;
const TTL_S: u64 = 2;
/// Generous: TCG is not involved, but the host is shared and loaded.
const LONG: Duration = Duration::from_secs(90);

fn sigkill(pid: u32) {
    // SAFETY: kill(2) with SIGKILL on a pid the store says is one of this test's VMMs.
    let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(r, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// Bad labels are refused before the VMM starts anything (nothing registered).
fn bad_labels_refused(store: &str) {
    for (labels, cause) in [(&["host=a", "host=b"][..], "[label_duplicate]"), (&["bad key=v"][..], "[label_bad_key]"), (&["novalue"][..], "[label_malformed]")] {
        let mut cmd = Command::new(cli::vsplice_bin());
        cmd.args(["run", "--kernel"]).arg(testguest::image()).args(["--serial", "null", "--api-sock", "/nonexistent/bad.sock", "--register", store, "--register-id", "bad"]);
        for l in labels {
            cmd.args(["--label", l]);
        }
        let o = cmd.stdin(Stdio::null()).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{labels:?}: {}", said(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(cause), "{labels:?}: {}", said(&o));
    }
    assert!(!registered(store).0.contains_key("bad"));
}

#[test]
fn registered_targets_rolled_out_by_label_from_etcd() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_register") {
        return;
    }
    let Some(bin) = etcd_or_skip("fleet_register") else { return };
    let cluster = Cluster::start(&bin, "register", 3);
    let store = cluster.url("dc1");
    bad_labels_refused(&store);

    // An unreachable store does not stop the VM: a warning with its cause.
    let nowhere = format!("etcd://127.0.0.1:{}/dc1", free_port());
    let lonely = ApiVm::start_with("register-nowhere", 1, QUIET, &["--register", &nowhere, "--label", "host=c"]);
    assert!(lonely.stderr_text().contains("[store_unreachable]"), "{}", lonely.stderr_text());
    drop(lonely);

    // Registration latency: from the VMM's start to its key in etcd.
    let (latency, f) = std::thread::scope(|s| {
        let boot = s.spawn(|| Fleet::boot_with("register", N, |_| QUIET.to_owned(), |i| register_args(&store, i, TTL_S)));
        let seen = wait_registered(&store, LONG, |r| r.contains_key("vm0"));
        (seen, boot.join().unwrap())
    });
    let latency = latency.expect("vm0 never registered");
    eprintln!("fleet_register: registration latency (six VMMs starting at once, VMM spawn -> key visible): {} ms", latency.as_millis());
    let all = wait_registered(&store, LONG, |r| r.len() == N).map(|_| registered(&store).0).unwrap_or_else(|| panic!("not all registered: {:?}", registered(&store)));
    for (i, vm) in f.vms.iter().enumerate() {
        let r = &all[&Fleet::name(i)];
        assert_eq!(r.api_sock, std::path::absolute(&vm.sock).unwrap());
        assert_eq!(r.labels["host"], if i % 2 == 0 { "a" } else { "b" });
        assert_eq!(r.labels["zone"], "z1");
        assert_eq!(r.vsplice_version, env!("CARGO_PKG_VERSION"));
    }
    // The kernel's build-id follows once the VMM knows it (as GET /vm says it).
    let build_id = f.vms[0].get_json("/vm")["kernel"]["build_id"].as_str().expect("the test guest's build-id").to_owned();
    let known = wait_registered(&store, LONG, |r| r.values().all(|r| r.kernel.as_ref().and_then(|k| k.build_id.as_deref()) == Some(&build_id)));
    assert!(known.is_some(), "the records never carried the build-id: {:?}", registered(&store));

    // The plan: only host a, and where each target came from.
    let patch = build_example(&f.dir, "step_b_v2.c");
    let release = f.dir.join("release-canary");
    let plan = f.plan("a-only", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "selector": {"host": "a"}, "canary": {"count": 1}, "parallelism": 1, "failure_budget": 0, "gates": holding_probe(&release)}));
    let journal = f.dir.join("a-only.redb");
    let o = fleet(&journal, &["plan", "--inventory", &store, "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for i in 0..N {
        let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{} ", Fleet::name(i))));
        if i % 2 == 0 {
            let line = line.unwrap_or_else(|| panic!("vm{i} not planned: {text}"));
            let pid = all[&Fleet::name(i)].pid;
            assert!(line.contains(&format!("from etcd /dc1/targets/vm{i} (pid {pid} on ")), "{line}");
        } else {
            assert!(line.is_none(), "vm{i} is not host a: {text}");
        }
    }

    // The rollout, held at the canary's gate while vm4 is SIGKILLed and its key expires.
    let child = Command::new(cli::vsplice_bin())
        .args(["fleet", "--journal"])
        .arg(&journal)
        .args(["start", "--inventory", &store, "--plan", plan.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + LONG;
    while f.registry(0).is_empty() {
        assert!(Instant::now() < end, "the canary was never patched");
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(all["vm4"].pid);
    let gone = wait_registered(&store, LONG, |r| !r.contains_key("vm4")).expect("vm4's key never vanished");
    eprintln!("fleet_register: a SIGKILLed VMM's key vanished {} ms after the kill (lease TTL {TTL_S} s, kept alive every {} ms)", gone.as_millis(), TTL_S * 1000 / 3);
    std::fs::write(&release, "").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "the rollout ends done (vm4 is not a failure against the budget of 0): {}", said(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("target vm4 is unreachable"), "{}", said(&o));
    let s = steps(&journal);
    for i in [0, 2] {
        let n = Fleet::name(i);
        assert_eq!((outcome(&s, &n), count(&s, &n, Op::Apply, "ok")), (Some("patched"), 1), "{n}: {s:#?}");
        assert_eq!(f.registry(i), ["step_b_v2"], "{n}");
    }
    assert_eq!(outcome(&s, "vm4"), Some("unreachable"), "{s:#?}");
    assert!(s.iter().all(|st| st.target != "vm4" || st.op == Op::Outcome), "nothing but its outcome for vm4: {s:#?}");
    for i in [1, 3, 5] {
        assert!(s.iter().all(|st| st.target != Fleet::name(i)), "vm{i} untouched");
        assert!(f.registry(i).is_empty(), "vm{i} untouched");
    }
    let o = fleet(&journal, &["--json", "status"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!((v["state"].as_str(), v["counts"]["patched"].as_u64(), v["counts"]["unreachable"].as_u64()), (Some("done"), Some(2), Some(1)), "{}", said(&o));

    // A VMM that ends cleanly (the guest powers off) removes its key at once.
    let mut short = ApiVm::start_with("register-poweroff", 1, &format!("{QUIET} tg.iters=100"), &register_args(&store, 9, TTL_S)[..].iter().map(String::as_str).collect::<Vec<_>>());
    assert!(wait_registered(&store, LONG, |r| r.contains_key("vm9")).is_some(), "vm9 never registered");
    let status = short.wait_exit(LONG).expect("the guest never powered off");
    assert!(status.success(), "{}", short.stderr_text());
    assert!(!registered(&store).0.contains_key("vm9"), "the key is removed by the clean exit itself, not by the lease");
}

#[test]
fn registered_targets_in_a_directory_store() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_register_dir") {
        return;
    }
    let base = vsplice_tests::scratch::tmp_dir("register-dir-store");
    let store = format!("dir:{}", base.join("targets").display());
    let f = Fleet::boot_with("register-dir", 4, |_| QUIET.to_owned(), |i| register_args(&store, i, TTL_S));
    let (all, notes) = registered(&store);
    assert_eq!(all.len(), 4, "{all:?} {notes:?}");
    // vm3 dies: its file stays, stale, and is left out and reported.
    sigkill(all["vm3"].pid);
    let end = Instant::now() + LONG;
    while registered(&store).1.iter().all(|n| !n.contains("vm3.json")) {
        assert!(Instant::now() < end, "vm3's file never reported stale");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(base.join("targets/vm3.json").is_file(), "a killed VMM cannot remove its file");
    let patch = build_example(&f.dir, "step_b_v2.c");
    let plan = f.plan("b", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "selector": {"host": "b"}}));
    let journal = f.dir.join("b.redb");
    let o = fleet(&journal, &["start", "--inventory", &store, "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("vm3.json: stale"), "{}", said(&o));
    let s = steps(&journal);
    assert_eq!((outcome(&s, "vm1"), count(&s, "vm1", Op::Apply, "ok")), (Some("patched"), 1), "{s:#?}");
    assert_eq!(f.registry(1), ["step_b_v2"]);
    assert!(s.iter().all(|st| st.target.is_empty() || st.target == "vm1"), "only vm1 (host b, alive): {s:#?}");
    for i in [0, 2] {
        assert!(f.registry(i).is_empty(), "vm{i} untouched");
    }
    // SIGTERM: the VMM removes its file, then ends as the signal would (128 + 15).
    let mut f = f;
    // SAFETY: kill(2) with SIGTERM on a pid the store says is one of this test's VMMs.
    assert_eq!(unsafe { libc::kill(all["vm2"].pid as i32, libc::SIGTERM) }, 0);
    let status = f.vms[2].wait_exit(LONG).expect("vm2 never ended on SIGTERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", f.vms[2].stderr_text());
    assert!(!base.join("targets/vm2.json").exists(), "SIGTERM removes the registration");
    // A clean exit removes the file.
    let mut short = ApiVm::start_with("register-dir-poweroff", 1, &format!("{QUIET} tg.iters=100"), &register_args(&store, 7, TTL_S)[..].iter().map(String::as_str).collect::<Vec<_>>());
    assert!(base.join("targets/vm7.json").is_file());
    assert!(short.wait_exit(LONG).expect("never powered off").success(), "{}", short.stderr_text());
    assert!(!base.join("targets/vm7.json").exists(), "removed on a clean exit");
}

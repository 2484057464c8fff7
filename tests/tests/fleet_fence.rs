//! An etcd controller that lost its lease sends nothing more to the
//! targets: the controller (`--lease-ttl 7`, checked in etcd) is held at
//! its canary's probe gate while its lease is revoked behind its back (as
//! when it expires during a partition); released, it stops
//! (`journal_failed`, exit 1) without touching another target, and a
//! standby `resume` finishes the rollout from the journal, each target
//! applied exactly once. A one-member etcd cluster on loopback started by
//! the test (skipped loudly only when etcd cannot be installed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vsplice_tests::api::build_example;
use vsplice_tests::etcd::{etcd_or_skip, Cluster};
use vsplice_tests::fleet::{count, etcd_steps, fleet, holding_probe, outcome, said, Fleet, QUIET};
use vsplice_tests::{cli, testguest};
use vsplice_vmm::fleet::journal::Op;
use vsplice_vmm::store::Etcd;

#[test]
fn a_controller_that_lost_its_lease_sends_nothing_more() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_fence") {
        return;
    }
    let Some(bin) = etcd_or_skip("fleet_fence") else { return };
    let cluster = Cluster::start(&bin, "fence", 1);
    let f = Fleet::boot("fence", 3, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let inv = f.inventory(&[]);
    let release = f.dir.join("release");
    let plan = f.plan("p", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "canary": {"count": 1}, "parallelism": 1, "gates": holding_probe(&release)}));
    let url = cluster.url("fence/r1");
    let child = Command::new(cli::vsplice_bin())
        .args(["fleet", "--journal", &url, "--lease-ttl", "7", "start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    while f.registry(0).is_empty() {
        assert!(Instant::now() < end, "the canary was never patched");
        std::thread::sleep(Duration::from_millis(50));
    }
    let etcd = Etcd::parse(&url).unwrap();
    let lease = etcd.lease_of(&etcd.key("lock")).unwrap().expect("the controller holds the lock");
    assert_eq!(etcd.granted_ttl(lease).unwrap(), Some(7), "the lease has --lease-ttl's TTL");
    etcd.revoke(lease).unwrap();
    std::fs::write(&release, "").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("[journal_failed]") && stderr.contains("lease is lost"), "{}", said(&o));
    let s = etcd_steps(&url);
    for n in ["vm1", "vm2"] {
        assert!(s.iter().all(|st| st.target != n), "{n} untouched by the controller without its lease: {s:#?}");
    }
    assert!(f.registry(1).is_empty() && f.registry(2).is_empty());

    // A standby finishes from the journal; the canary is not applied again.
    let r = fleet(Path::new(&url), &["resume", "--wait", "30"], None);
    assert!(r.status.success(), "{}", said(&r));
    let s = etcd_steps(&url);
    for i in 0..3 {
        let n = Fleet::name(i);
        assert_eq!((outcome(&s, &n), count(&s, &n, Op::Apply, "ok")), (Some("patched"), 1), "{n}: {s:#?}");
        assert_eq!(f.registry(i), ["step_b_v2"], "{n}");
    }
}

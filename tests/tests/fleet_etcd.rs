//! `vsplice fleet` with etcd as its store: a three-member cluster on
//! loopback started by the test (Debian's `etcd-server`; skipped loudly only
//! when it cannot be installed).
//! - One member killed mid-rollout: the controller passes to the next
//!   endpoint and the rollout goes on; a second controller meanwhile is
//!   kept out (`journal_busy`) by the first one's lease.
//! - The controller SIGKILLed mid-rollout: a standby `resume --wait` takes
//!   over once the lease expires and finishes from the journal, each target
//!   patched exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vsplice_tests::api::build_example;
use vsplice_tests::etcd::{etcd_or_skip, Cluster};
use vsplice_tests::fleet::{count, etcd_steps, fleet, outcome, said, Fleet, QUIET};
use vsplice_tests::{cli, testguest};
use vsplice_vmm::fleet::journal::{open_intents, Op, Step};

fn check_all_patched_once(f: &Fleet, steps: &[Step], n: usize) {
    assert!(open_intents(steps).is_empty(), "open steps: {:?}", open_intents(steps));
    for i in 0..n {
        let name = Fleet::name(i);
        assert_eq!((outcome(steps, &name), count(steps, &name, Op::Apply, "ok")), (Some("patched"), 1), "{name}");
        assert_eq!(f.registry(i), ["step_b_v2"], "{name}");
    }
}

#[test]
fn etcd_member_killed_mid_rollout_and_controller_takeover_after_the_lease() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_etcd") {
        return;
    }
    let Some(bin) = etcd_or_skip("fleet_etcd") else { return };
    let mut cluster = Cluster::start(&bin, "fleet", 3);
    let f = Fleet::boot("etcd", 4, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let inv = f.inventory(&[]);
    // Four targets one at a time, 1.5 s each: the rollout outlives the lease's TTL (3 s) twice, kept alive.
    let plan = f.plan("p", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "soak_ms": 1500, "parallelism": 1}));
    // Part 1 checks a second controller while the first still runs: after the
    // first target is patched, 3 × 5 s of soak remain, room for a loaded host
    // to poll, kill a member and start the second (1.5 s was not always enough).
    let long_plan = f.plan("p-long", &serde_json::json!({"patches": [&patch], "allow_unsigned": true, "soak_ms": 5000, "parallelism": 1}));

    // 1. A member dies mid-rollout.
    let url = cluster.url("vsplice/rollout1");
    let child = Command::new(cli::vsplice_bin())
        .args(["fleet", "--journal", &url, "start", "--inventory", inv.to_str().unwrap(), "--plan", long_plan.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let o = fleet(Path::new(&url), &["--json", "status"], None);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["counts"]["patched"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < end, "never one patched: {}", said(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(0);
    let second = fleet(Path::new(&url), &["resume"], None);
    assert_eq!(second.status.code(), Some(1), "a second controller is kept out: {}", said(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("[journal_busy]"), "{}", said(&second));
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}\n{}", said(&o), cluster.logs());
    let s = etcd_steps(&url);
    let took = s.last().unwrap().time_ms - s.first().unwrap().time_ms;
    assert!(took > 2 * vsplice_vmm::fleet::etcd::LEASE_TTL_S * 1000, "the rollout ran longer than the lease ({took} ms): the keep-alive is what kept it");
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("fleet_etcd: {}", stderr.lines().find(|l| l.contains("journal:")).unwrap_or("-"));
    check_all_patched_once(&f, &etcd_steps(&url), 4);
    assert!(fleet(Path::new(&url), &["rollback"], None).status.success());
    assert!((0..4).all(|i| f.registry(i).is_empty()));

    // 2. The controller is killed after its 8th record (vm0 settled, vm1 in flight); a standby takes over after the lease.
    let url = cluster.url("vsplice/rollout2");
    let o = fleet(Path::new(&url), &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], Some(8));
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", said(&o));
    let t = Instant::now();
    let r = fleet(Path::new(&url), &["resume", "--wait", "30"], None);
    assert!(r.status.success(), "the standby took over: {}", said(&r));
    let steps = etcd_steps(&url);
    let first_new = steps.iter().position(|s| s.detail.contains("reconciled")).expect("the standby reconciled the step left open");
    let gap = steps[first_new].time_ms - steps[first_new - 1].time_ms;
    eprintln!("fleet_etcd: the standby's first record {gap} ms after the killed controller's last (lease TTL {} s); the rest of the rollout done {:.2} s after the kill", vsplice_vmm::fleet::etcd::LEASE_TTL_S, t.elapsed().as_secs_f64());
    check_all_patched_once(&f, &steps, 4);
}

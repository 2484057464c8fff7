//! `vsplice fleet` over 16 test-guest VMs in two hosts: a dry run of a plan
//! whose only patch is for another kernel build (every target
//! `no_patch_for_kernel`, nothing touched), then a full rollout with a
//! canary and waves at parallelism 4, at most 2 per host: every target
//! patched exactly once (the journal and each registry agree), the canary
//! settled before any other target was touched, the per-host limit kept,
//! and an unreachable inventory entry reported and never touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use vsplice_patcher::patch::PatchFile;
use vsplice_tests::api::build_example;
use vsplice_tests::fleet::{count, fleet, outcome, said, steps, Fleet, QUIET};
use vsplice_tests::testguest;
use vsplice_vmm::fleet::journal::Op;

const N: usize = 16;

#[test]
fn a_canary_then_waves_patch_every_target_exactly_once() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_rollout") {
        return;
    }
    let f = Fleet::boot("rollout", N, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let down = serde_json::json!({"name": "down", "api_sock": f.dir.join("nobody.sock"), "labels": {"host": "b"}});
    let inv = f.inventory(&[down]);

    // The same patch, said to be for another build: nothing to do anywhere.
    let mut other = PatchFile::parse(&std::fs::read(&patch).unwrap()).unwrap();
    other.manifest.target.build_id = Some("00".repeat(20));
    let other_file = f.dir.join("other-build.vsp");
    std::fs::write(&other_file, other.to_bytes().unwrap()).unwrap();
    let none = f.plan("none", &serde_json::json!({"patches": [other_file], "allow_unsigned": true}));
    let o = fleet(&f.dir.join("none.redb"), &["--json", "plan", "--inventory", inv.to_str().unwrap(), "--plan", none.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let skips: Vec<&str> = r["targets"].as_array().unwrap().iter().map(|t| t["skip"].as_str().unwrap_or("-")).collect();
    assert_eq!(skips.iter().filter(|s| **s == "no_patch_for_kernel").count(), N, "{skips:?}");
    assert_eq!(skips.iter().filter(|s| **s == "unreachable").count(), 1, "{skips:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("UNSIGNED"), "allow_unsigned is loud: {}", said(&o));

    // An unsigned patch without allow_unsigned is refused before anything is touched.
    let strict = f.plan("strict", &serde_json::json!({"patches": [&patch]}));
    let o = fleet(&f.dir.join("strict.redb"), &["start", "--inventory", inv.to_str().unwrap(), "--plan", strict.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[unsigned]"), "{}", said(&o));

    let plan = f.plan(
        "full",
        &serde_json::json!({
            "patches": [&patch], "allow_unsigned": true,
            "canary": {"count": 1, "soak_ms": 300}, "waves": ["25%", "100%"], "soak_ms": 100,
            "parallelism": 4, "per_host": 2, "pause_ms": 50, "failure_budget": 0
        }),
    );
    let journal = f.dir.join("full.redb");
    let started = Instant::now();
    let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
    let took = started.elapsed();
    assert!(o.status.success(), "{}", said(&o));
    eprintln!("fleet_rollout: {N} targets patched in {:.2} s at parallelism 4 ({:.2} targets/s)", took.as_secs_f64(), N as f64 / took.as_secs_f64());

    let steps = steps(&journal);
    for i in 0..N {
        let name = Fleet::name(i);
        assert_eq!(f.registry(i), ["step_b_v2"], "{name}'s registry");
        assert_eq!(count(&steps, &name, Op::Apply, "ok"), 1, "{name} applied once");
        assert_eq!(steps.iter().filter(|s| s.target == name && s.op == Op::Apply && s.phase == "intent").count(), 1, "{name}: one apply taken");
        assert_eq!(outcome(&steps, &name), Some("patched"), "{name}");
    }
    assert!(steps.iter().all(|s| s.target != "down"), "the unreachable target is never touched");
    // The canary settled before any other target was touched.
    let first_apply = steps.iter().find(|s| s.op == Op::Apply).unwrap();
    assert_eq!(first_apply.target, "vm0");
    let canary_done = steps.iter().position(|s| s.target == "vm0" && s.op == Op::Outcome).unwrap();
    assert!(steps[..canary_done].iter().all(|s| s.target.is_empty() || s.target == "vm0"), "only the canary before its outcome");
    // Waves: c, 25% of 15 (4), the rest; at most 2 targets in flight per host, more than 1 at once somewhere.
    let waves: Vec<&str> = steps.iter().filter(|s| s.op == Op::Wave).map(|s| s.patch.as_str()).collect();
    assert_eq!(waves, ["0", "1", "2"]);
    let mut in_flight: BTreeMap<&str, i32> = BTreeMap::new();
    let mut max_total = 0;
    for s in &steps {
        let host = if s.target.trim_start_matches("vm").parse::<usize>().map_or(true, |i| i % 2 == 0) { "a" } else { "b" };
        match (s.op, s.phase.as_str()) {
            (Op::Apply, "intent") => *in_flight.entry(host).or_default() += 1,
            (Op::Outcome, _) => *in_flight.entry(host).or_default() -= 1,
            _ => continue,
        }
        assert!(in_flight.values().all(|n| *n <= 2), "per_host 2 kept: {in_flight:?} at step {}", s.seq);
        max_total = max_total.max(in_flight.values().sum::<i32>());
    }
    assert!(max_total > 1, "targets were patched in parallel");

    // status: every target patched; the metrics say so.
    let table = fleet(&journal, &["status"], None);
    eprintln!("{}", String::from_utf8_lossy(&table.stdout));
    let o = fleet(&journal, &["status", "--json"], None);
    assert!(o.status.success(), "{}", said(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((st["state"].as_str(), st["counts"]["patched"].as_u64(), st["counts"]["unreachable"].as_u64()), (Some("done"), Some(N as u64), Some(1)), "{st}");
    let m = fleet(&journal, &["status", "--metrics"], None);
    assert!(String::from_utf8_lossy(&m.stdout).contains(&format!("vsplice_fleet_targets{{status=\"patched\"}} {N}")), "{}", said(&m));
    // The guests compute with the patch.
    assert!(f.vms[N - 1].get_json("/vm")["console"]["bug"] == 0);

    // rollback: every target reverted, once.
    let o = fleet(&journal, &["rollback"], None);
    assert!(o.status.success(), "{}", said(&o));
    let steps = vsplice_tests::fleet::steps(&journal);
    for i in 0..N {
        assert!(f.registry(i).is_empty(), "vm{i} reverted");
        assert_eq!(count(&steps, &Fleet::name(i), Op::Revert, "ok"), 1);
    }
}

fn keygen(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let keys = dir.join(format!("{name}-trusted"));
    std::fs::create_dir_all(&keys).unwrap();
    let secret = dir.join(name);
    let o = vsplice_tests::cli::vsplice(&["patch", "keygen", "-o", secret.to_str().unwrap()]);
    assert!(o.status.success(), "keygen: {}", said(&o));
    std::fs::rename(dir.join(format!("{name}.pub")), keys.join(format!("{name}.pub"))).unwrap();
    (secret, keys)
}

#[test]
fn signed_patches_roll_out_and_another_key_is_refused_before_any_target() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_signed") {
        return;
    }
    let dir = vsplice_tests::scratch::tmp_dir("fleet-signed-keys");
    let (ours, keys) = keygen(&dir, "ours");
    let (theirs, _) = keygen(&dir, "theirs");
    // The VMMs check signatures too (--trusted-keys): the controller's check is not the only one.
    let f = {
        let keys = keys.to_str().unwrap().to_owned();
        let vms = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2).map(|i| {
                let keys = keys.clone();
                s.spawn(move || vsplice_tests::api::ApiVm::start_with(&format!("signed-vm{i}"), 1, QUIET, &["--trusted-keys", &keys]))
            }).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        Fleet { vms, dir: dir.clone() }
    };
    let vsp = build_example(&f.dir, "step_b_v2.c");
    let sign = |key: &std::path::Path, out: &str| {
        let out = f.dir.join(out);
        let o = vsplice_tests::cli::vsplice(&["patch", "sign", "--key", key.to_str().unwrap(), "-o", out.to_str().unwrap(), vsp.to_str().unwrap()]);
        assert!(o.status.success(), "sign: {}", said(&o));
        out
    };
    let (good, bad) = (sign(&ours, "ours.vsp"), sign(&theirs, "theirs.vsp"));
    let inv = f.inventory(&[]);
    let refused = f.plan("theirs", &serde_json::json!({"patches": [bad], "trusted_keys": keys}));
    let o = fleet(&f.dir.join("theirs.redb"), &["start", "--inventory", inv.to_str().unwrap(), "--plan", refused.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[untrusted_key]"), "{}", said(&o));
    assert!(!f.dir.join("theirs.redb").exists(), "refused before a journal was made");
    let plan = f.plan("ours", &serde_json::json!({"patches": [good], "trusted_keys": keys, "canary": {"count": 1}}));
    let journal = f.dir.join("ours.redb");
    let o = fleet(&journal, &["start", "--inventory", inv.to_str().unwrap(), "--plan", plan.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", said(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("UNSIGNED"), "{}", said(&o));
    let s = steps(&journal);
    for i in 0..2 {
        assert_eq!(f.registry(i), ["step_b_v2"]);
        assert_eq!(count(&s, &Fleet::name(i), Op::Apply, "ok"), 1);
    }
}

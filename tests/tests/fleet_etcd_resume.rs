//! `vsplice fleet` with its journal in etcd, SIGKILLed right after each of
//! its journal records in turn, then `resume --wait`: the killed
//! controller's lease must expire first (its lock is fenced by it), then the
//! new controller reconciles the journal with every target's registry and
//! finishes. Every time, each target ends exactly once patched, or (the one
//! whose probe gate fails) applied once and reverted once; the journal has
//! no open step and agrees with every registry. The same plan as the file
//! journal's `fleet_resume`. One etcd member (started by the test; each
//! kill point gets its own key prefix, so nothing is restarted): a member's
//! failure and the three-member cluster are `fleet_etcd`'s. The controller
//! kills itself through the test-only `VSPLICE_FLEET_KILL_AT_STEP` (built
//! with `fault-injection`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Instant;

use vsplice_tests::api::build_example;
use vsplice_tests::etcd::{etcd_or_skip, Cluster};
use vsplice_tests::fleet::{etcd_steps, fleet, said, Fleet, QUIET};
use vsplice_tests::testguest;
use vsplice_vmm::fleet::journal::open_intents;

#[test]
fn etcd_journal_killed_at_every_record_then_resumed_each_target_ends_once() {
    let _g = testguest::vm_lock();
    if !testguest::ready("fleet_etcd_resume") {
        return;
    }
    let Some(bin) = etcd_or_skip("fleet_etcd_resume") else { return };
    let cluster = Cluster::start(&bin, "fleet-resume", 1);
    let f = Fleet::boot("etcd-resume", 3, |_| QUIET.to_owned());
    let patch = build_example(&f.dir, "step_b_v2.c");
    let (inv, plan) = f.resume_plan(&patch);
    let mut kills = 0;
    let mut takeover = Vec::new();
    for k in 1.. {
        assert!(k < 200, "the rollout never ran to its end");
        let url = cluster.url(&format!("vsplice/kill{k}"));
        let journal = Path::new(&url);
        let o = fleet(journal, &["start", "--inventory", &inv, "--plan", &plan], Some(k));
        let killed = o.status.signal() == Some(libc::SIGKILL);
        if killed {
            kills += 1;
            let t = Instant::now();
            // The killed controller's lease still holds the lock for up to its TTL.
            let r = fleet(journal, &["resume", "--wait", "60"], None);
            assert!(r.status.success(), "resume after a kill at record {k}: {}\n{}", said(&r), cluster.logs());
            takeover.push(t.elapsed().as_secs_f64());
        } else {
            assert!(o.status.success(), "{}", said(&o));
        }
        let steps = etcd_steps(&url);
        assert!(open_intents(&steps).is_empty(), "k={k}: open steps {:?}", open_intents(&steps));
        // Nothing committed before the kill is lost or overwritten (a record's key is its sequence number).
        assert!(!killed || steps.len() >= k as usize, "k={k}: {} records", steps.len());
        assert!(steps.windows(2).all(|w| w[0].seq < w[1].seq), "k={k}: sequence numbers unique and ordered");
        f.check_resumed(&steps, k);
        // Clean slate for the next kill point.
        let r = fleet(journal, &["rollback"], None);
        assert!(r.status.success(), "{}", said(&r));
        assert!((0..3).all(|i| f.registry(i).is_empty()));
        if !killed {
            break;
        }
    }
    let (lo, hi) = takeover.iter().fold((f64::MAX, 0f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    eprintln!("fleet_etcd_resume: killed at each of {kills} journal records, resumed each time (resume --wait, lease TTL {} s included: {lo:.2}-{hi:.2} s)", vsplice_vmm::fleet::etcd::LEASE_TTL_S);
    assert!(kills >= 15, "a kill at every record: {kills}");
}

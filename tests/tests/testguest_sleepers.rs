//! The safety check on the test guest with 10,000 sleeping tasks
//! (`tg.sleepers=10000`, each parked on its own stack), under the vsplice
//! VMM: a patch of a function none of them sleeps in applies, with the full
//! check (every stack scanned) and with the incremental check (`on` and
//! `compare`: the sleepers keep the verdict of the pre-check made with the
//! guest running); a patch of `tg_nap`, where `tg.nappers=3` of them sleep,
//! is refused code_busy naming those three in every mode, the text
//! untouched; on a guest where none sleeps in `tg_nap` the same patch
//! applies. Timing is measured by `benches/benches/downtime_vs_pause.rs`,
//! never asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::mem::KernelMemory;
use vsplice_patcher::model::Incremental;
use vsplice_patcher::txn::Cause;
use vsplice_tests::livepatch;
use vsplice_tests::testguest::{self, Capture};

const WAIT: Duration = Duration::from_secs(180);
const SLEEPERS: u64 = 10_000;

/// A replacement of `tg_nap` (same body): whoever sleeps in `tg_nap` keeps it busy.
const NAP_PATCH: &str = r#"
#include <vsplice.h>
typedef unsigned long u64;
void tg_park(u64 *saved_sp);
void tg_nap_v2(u64 *saved_sp)
{
	tg_park(saved_sp);
	for (;;)
		__asm__ __volatile__("hlt" ::: "memory");
}
VSPLICE_REPLACE(tg_nap, tg_nap_v2);
"#;

const MODES: [Incremental; 3] = [Incremental::Off, Incremental::On, Incremental::Compare];

fn boot(nappers: u64) -> (vsplice_vmm::vmm::Vmm, Capture) {
    boot_with(nappers, "")
}

/// [`boot`] with more `tg.` options.
fn boot_with(nappers: u64, more: &str) -> (vsplice_vmm::vmm::Vmm, Capture) {
    let (vmm, out) = livepatch::boot(2, &format!("tg.tasks=2 tg.wait=2 tg.quiet tg.sleepers={SLEEPERS} tg.nappers={nappers} {more}"));
    let want = format!("TG sleepers={SLEEPERS} nappers={nappers} ");
    assert!(out.wait_for(WAIT, |t| t.contains(&want) && t.contains("TG ready")), "{}", out.text());
    (vmm, out)
}

fn tg_nap_bytes(p: &mut vsplice_patcher::txn::Patcher<'_, &mut vsplice_vmm::vmm::Vmm>, target: &vsplice_patcher::kernels::testguest::TestGuest) -> (Vec<u8>, Vec<u8>) {
    let s = target.symbols().resolve("tg_nap", None).unwrap().clone();
    let now = p.guest().read_vec(s.addr, s.size as usize).unwrap();
    (now, target.image().bytes_at(s.addr, s.size).unwrap().to_vec())
}

#[test]
fn ten_thousand_sleepers_apply_elsewhere_and_code_busy_where_three_sleep() {
    let _g = testguest::vm_lock();
    if !testguest::ready("testguest_sleepers_code_busy") {
        return;
    }
    let step_b = livepatch::build_example("step_b_v2.c");
    let nap = livepatch::build_text("nap", NAP_PATCH, true).unwrap();
    let target = livepatch::target();
    let (mut vmm, out) = boot(3);
    let all = (2 * 2 + SLEEPERS) as usize;
    for mode in MODES {
        let mut p = livepatch::patcher(&mut vmm, &target);
        p.config_mut().incremental = mode;
        p.config_mut().max_attempts = 40;
        let r = p.apply(&step_b);
        assert!(r.is_ok(), "{mode}: {}", r.to_json());
        let check = r.check.clone().unwrap();
        match check.incremental.as_ref() {
            None => assert!(check.scanned >= all, "{mode}: every stack scanned: {check:?}"),
            Some(inc) => {
                assert_eq!(inc.rechecked + inc.reused, all, "{mode}: {inc:?}");
                // All the sleepers but the three in tg_nap are clean and did not run.
                assert!(inc.reused >= SLEEPERS as usize - 3, "{mode}: sleepers reused: {inc:?}");
                eprintln!("{mode}: pre-check {} us, {} reused, {} checked under the pause; downtime {} us", inc.pre_check_us, inc.reused, inc.rechecked, r.timings.downtime_us);
            }
        }
        let r = p.revert(&step_b.manifest.id);
        assert!(r.is_ok(), "{mode}: {}", r.to_json());

        p.config_mut().max_attempts = 3;
        p.config_mut().backoff = Duration::from_millis(2);
        // Refused every time; a refusal's last pause may have caught the
        // table mid-update (tasks_inconsistent, no conflicts listed): the
        // refusal that names conflicts must name exactly the three.
        let mut r = p.apply(&nap);
        for _ in 0..10 {
            assert_eq!(r.cause, Cause::CodeBusy, "{mode}: {}", r.to_json());
            if !r.conflicts.is_empty() {
                break;
            }
            r = p.apply(&nap);
        }
        let mut nappers: Vec<&str> = r.conflicts.iter().filter_map(|c| c.task.as_deref()).filter(|t| t.starts_with("napper/")).collect();
        nappers.sort_unstable();
        nappers.dedup();
        assert_eq!(nappers, ["napper/0", "napper/1", "napper/2"], "{mode}: {}", r.to_json());
        assert!(r.conflicts.iter().all(|c| c.function.starts_with("tg_nap+")), "{mode}: {:?}", r.conflicts);
        if mode != Incremental::Off {
            let inc = r.check.clone().unwrap().incremental.unwrap();
            assert!(inc.rechecked >= 3, "{mode}: the nappers are never reused: {inc:?}");
        }
        let (now, orig) = tg_nap_bytes(&mut p, &target);
        assert_eq!(now, orig, "{mode}: tg_nap untouched");
        let st = p.status().unwrap();
        assert!(st.patches.is_empty() && st.intent.is_none(), "{mode}: {st:?}");
    }
    drop(out);
    vmm.shutdown();
}

#[test]
fn ten_thousand_sleepers_none_in_tg_nap_lets_the_nap_patch_in() {
    let _g = testguest::vm_lock();
    if !testguest::ready("testguest_sleepers_apply") {
        return;
    }
    let nap = livepatch::build_text("nap", NAP_PATCH, true).unwrap();
    let target = livepatch::target();
    let (mut vmm, _out) = boot(0);
    for mode in MODES {
        let mut p = livepatch::patcher(&mut vmm, &target);
        p.config_mut().incremental = mode;
        let r = p.apply(&nap);
        assert!(r.is_ok(), "{mode}: {}", r.to_json());
        let (now, orig) = tg_nap_bytes(&mut p, &target);
        assert_ne!(now, orig, "{mode}: tg_nap patched");
        let r = p.revert(&nap.manifest.id);
        assert!(r.is_ok(), "{mode}: {}", r.to_json());
        let (now, orig) = tg_nap_bytes(&mut p, &target);
        assert_eq!(now, orig, "{mode}: tg_nap restored");
    }
    vmm.shutdown();
}

/// The task table's change ring under the pause, checked against a whole
/// read at every apply (`compare` reads both and refuses any difference,
/// `incremental_mismatch`) while the guest's tasks switch: with the default
/// ring (256 slots) the pause reads only the entries that changed; with a
/// one-slot ring and a 250 Hz timer it overflows between the pre-check and
/// the pause (any switch writes two slots) and the whole table is read.
/// (Not 1 kHz: on an idle host the guest then switches more often than the
/// pre-check reads the 10,004 entries with the guest running, every one of
/// its reads finds the table's seq moved, and no verdict can be kept.)
/// Either way every apply is the full check's `ok`.
#[test]
fn the_change_ring_matches_a_whole_read_and_an_overflowed_one_reads_the_table() {
    let _g = testguest::vm_lock();
    if !testguest::ready("testguest_sleepers_ring") {
        return;
    }
    let step_b = livepatch::build_example("step_b_v2.c");
    let target = livepatch::target();
    let all = (2 * 2 + SLEEPERS) as usize;
    for (more, overflow) in [("", false), ("tg.ring=1 tg.hz=250", true)] {
        let (mut vmm, _out) = boot_with(0, more);
        let mut read = Vec::new();
        for round in 0..6 {
            let mut p = livepatch::patcher(&mut vmm, &target);
            p.config_mut().incremental = if round % 2 == 0 { Incremental::Compare } else { Incremental::On };
            p.config_mut().max_attempts = 40;
            let r = p.apply(&step_b);
            assert!(r.is_ok(), "{more}: {}", r.to_json());
            let inc = r.check.clone().unwrap().incremental.unwrap();
            assert_eq!(inc.rechecked + inc.reused, all, "{more}: {inc:?}");
            assert!(inc.reused >= SLEEPERS as usize, "{more}: {inc:?}");
            read.push(inc.records_read);
            let r = p.revert(&step_b.manifest.id);
            assert!(r.is_ok(), "{more}: {}", r.to_json());
        }
        eprintln!("{more:?}: records read under the pause per apply (None: the whole table): {read:?}");
        // A ring of n slots never names more than n records.
        let slots = if overflow { 1 } else { 256 };
        assert!(read.iter().flatten().all(|&n| n <= slots), "{more}: {read:?}");
        if overflow {
            assert!(read.iter().any(Option::is_none), "{more}: the one-slot ring never overflowed: {read:?}");
        } else {
            assert!(read.iter().any(Option::is_some), "{more}: the ring was never used: {read:?}");
        }
        vmm.shutdown();
    }
}

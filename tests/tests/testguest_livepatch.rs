//! Live patching the test guest under the vsplice VMM (KVM), end to end:
//! apply/revert under timer preemption, 1,000 cycles, code_busy, no_match,
//! bad patches (each with its own cause), stacking and out-of-order revert,
//! cumulative replace, new global data, calls to a static target function,
//! and crash safety of the registry/intent logic (a "process" that dies after
//! each write, then recovery by a fresh patcher).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use vsplice_patcher::testing::Faulty;
use vsplice_patcher::txn::Cause;
use vsplice_tests::livepatch::{self, value_orig, value_step_b_v2, value_two_sites, TWO_SITES};
use vsplice_tests::testguest::{self, Capture, TgLine};

const WAIT: Duration = Duration::from_secs(120);

/// Per task: lines in order; checks no line lost and that each value is
/// either `old(iter)` or `new(iter)`, switching at most once (old -> new).
fn check_switch(lines: &[TgLine], old: impl Fn(u64) -> u64, new: impl Fn(u64) -> u64) -> BTreeMap<(u64, u64), Option<u64>> {
    let mut per: BTreeMap<(u64, u64), Vec<&TgLine>> = BTreeMap::new();
    for l in lines {
        per.entry((l.cpu, l.task)).or_default().push(l);
    }
    let mut switched = BTreeMap::new();
    for (k, ls) in per {
        let mut first_new = None;
        for w in ls.windows(2) {
            assert_eq!(w[1].iter, w[0].iter + 1, "task {k:?}: line lost or repeated: {:?} then {:?}", w[0], w[1]);
        }
        for l in ls {
            let is_old = l.value == old(l.iter);
            let is_new = l.value == new(l.iter);
            assert!(is_old || is_new, "task {k:?}: value {:#x} at iter {} is neither old nor new", l.value, l.iter);
            if is_new && first_new.is_none() {
                first_new = Some(l.iter);
            }
            if first_new.is_some() {
                assert!(is_new, "task {k:?}: old value after the switch at iter {}", l.iter);
            }
        }
        switched.insert(k, first_new);
    }
    switched
}

/// Waits until every task printed a line after `mark` that satisfies `pred`.
fn wait_every_task(out: &Capture, mark: usize, tasks: usize, pred: impl Fn(&TgLine) -> bool) {
    let ok = out.wait_for(WAIT, |text| {
        let lines = testguest::parse_all(&text[mark.min(text.len())..]).unwrap_or_default();
        let seen: std::collections::BTreeSet<(u64, u64)> = lines.iter().filter(|l| pred(l)).map(|l| (l.cpu, l.task)).collect();
        seen.len() >= tasks
    });
    assert!(ok, "not every task printed the expected value:\n{}", &out.text()[mark.min(out.text().len())..]);
}

#[test]
fn apply_under_preemption_switches_every_task_and_revert_switches_back() {
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_apply_revert") {
        return;
    }
    let patch = livepatch::build_example("step_b_v2.c");
    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=3 tg.wait=1 tg.work=20");
    livepatch::wait_tasks(&out, 2, 3, 2);
    let mut p = livepatch::patcher(&mut vmm, &target);
    let r = p.apply(&patch);
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!(r.timings.attempts.max(1), r.timings.attempts);
    assert!(r.timings.downtime_us > 0 && r.timings.downtime_us >= r.timings.write_us);
    let mark = out.text().len();
    wait_every_task(&out, mark, 6, |l| l.value == value_step_b_v2(l.iter));
    let status = p.status().unwrap();
    assert_eq!(status.patches.len(), 1);
    assert!(status.patches[0].funcs.iter().all(|f| f.active));
    let before_revert = out.text().len();
    let r = p.revert(&patch.manifest.id);
    assert!(r.is_ok(), "{}", r.to_json());
    let mark2 = out.text().len();
    wait_every_task(&out, mark2, 6, |l| l.value == value_orig(l.iter));
    let lines = testguest::parse_all(&out.text()).expect("no torn line");
    // Up to the revert: old then new, never anything else, no line lost.
    let upto = testguest::parse_all(&out.text()[..before_revert]).unwrap();
    let switched = check_switch(&upto, value_orig, value_step_b_v2);
    assert!(switched.values().all(Option::is_some), "a task never switched: {switched:?}");
    assert!(lines.len() > upto.len());
    assert!(p.status().unwrap().patches.is_empty());
    drop(p);
    assert!(vmm.exit_status().is_none(), "guest died: {:?}\n{}", vmm.exit_status(), out.text());
    assert!(!out.text().contains("TG panic"), "{}", out.text());
    vmm.shutdown();
}

/// Bytes of a target function in the running guest (through its page tables).
fn func_bytes(p: &mut vsplice_patcher::txn::Patcher<'_, &mut vsplice_vmm::vmm::Vmm>, target: &vsplice_patcher::kernels::testguest::TestGuest, name: &str) -> Vec<u8> {
    use vsplice_patcher::model::mem::KernelMemory;
    use vsplice_patcher::kernels::TargetKernel;
    let s = target.symbols().resolve(name, None).unwrap().clone();
    p.guest().read_vec(s.addr, s.size as usize).unwrap()
}

fn image_bytes(target: &vsplice_patcher::kernels::testguest::TestGuest, name: &str) -> Vec<u8> {
    use vsplice_patcher::kernels::TargetKernel;
    let s = target.symbols().resolve(name, None).unwrap();
    target.image().bytes_at(s.addr, s.size).unwrap().to_vec()
}

#[test]
fn thousand_apply_revert_cycles_are_clean() {
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_1000_cycles") {
        return;
    }
    let patch = livepatch::build_example("step_b_v2.c");
    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=2 tg.wait=1 tg.work=10");
    livepatch::wait_tasks(&out, 2, 2, 1);
    let before = testguest::progress(&testguest::parse_all(&out.text()).unwrap());
    let mut p = livepatch::patcher(&mut vmm, &target);
    let mut retries = 0;
    for i in 0..1000 {
        let a = p.apply(&patch);
        assert!(a.is_ok(), "apply {i}: {}", a.to_json());
        let r = p.revert(&patch.manifest.id);
        assert!(r.is_ok(), "revert {i}: {}", r.to_json());
        retries += a.timings.attempts - 1 + r.timings.attempts - 1;
    }
    eprintln!("1000 apply/revert cycles: {retries} retries after conflicts");
    assert_eq!(func_bytes(&mut p, &target, "tg_step_b"), image_bytes(&target, "tg_step_b"), "original bytes back");
    assert!(p.status().unwrap().patches.is_empty());
    drop(p);
    let ok = out.wait_for(WAIT, |text| {
        let now = testguest::progress(&testguest::parse_all(text).unwrap_or_default());
        before.iter().all(|(k, it)| now.get(k).is_some_and(|n| n > it))
    });
    assert!(ok, "a task stopped progressing:\n{}", out.text());
    let lines = testguest::parse_all(&out.text()).expect("no torn line");
    let mut last = BTreeMap::new();
    for l in &lines {
        assert!(l.value == value_orig(l.iter) || l.value == value_step_b_v2(l.iter), "bad value {l:?}");
        if let Some(prev) = last.insert((l.cpu, l.task), l.iter) {
            assert_eq!(l.iter, prev + 1, "line lost for {l:?}");
        }
    }
    assert!(!out.text().contains("TG panic"));
    vmm.shutdown();
}

#[test]
fn code_busy_names_the_task_leaves_the_guest_untouched_and_apply_succeeds_once_it_left() {
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_code_busy") {
        return;
    }
    let patch = livepatch::build_text("hold", livepatch::HOLD_PATCH, true).unwrap();
    let target = livepatch::target();
    let (_, release_phys) = testguest::symbol("tg_hold_release").unwrap();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=2 tg.wait=2 tg.hold");
    assert!(out.wait_for(WAIT, |t| t.contains("TG hold task=1 in tg_hold")), "{}", out.text());
    livepatch::wait_tasks(&out, 2, 1, 2);
    let mut p = livepatch::patcher(&mut vmm, &target);
    p.config_mut().max_attempts = 4;
    p.config_mut().backoff = Duration::from_millis(2);
    let r = p.apply(&patch);
    assert_eq!(r.cause, Cause::CodeBusy, "{}", r.to_json());
    assert_eq!(r.timings.attempts, 4, "bounded retries");
    let c = r.conflicts.iter().find(|c| c.task_id == Some(1)).unwrap_or_else(|| panic!("task 1 not named: {}", r.to_json()));
    assert_eq!(c.task.as_deref(), Some("worker/0:0"));
    assert!(c.function.starts_with("tg_hold"), "{c:?}");
    assert!(r.message.contains("worker/0:0"), "{}", r.message);
    // Untouched: original bytes, nothing in the registry.
    assert_eq!(func_bytes(&mut p, &target, "tg_hold"), image_bytes(&target, "tg_hold"));
    let st = p.status().unwrap();
    assert!(st.patches.is_empty() && st.intent.is_none(), "{st:?}");
    // Let the task leave tg_hold; then the same patch applies.
    p.guest().write_phys(release_phys, &1u64.to_le_bytes()).unwrap();
    drop(p);
    assert!(out.wait_for(WAIT, |t| t.contains("TG hold released task=1")), "{}", out.text());
    let mut p = livepatch::patcher(&mut vmm, &target);
    let r = p.apply(&patch);
    assert!(r.is_ok(), "{}", r.to_json());
    drop(p);
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_orig(l.iter));
    assert!(!out.text().contains("TG panic"));
    vmm.shutdown();
}

/// Copies the test guest image and changes it: `what` is `code` (one byte
/// of tg_step_b) or `build_id` (the last byte of the build-id note).
fn modified_image(what: &str) -> std::path::PathBuf {
    use object::{Object, ObjectSection, ObjectSymbol};
    let mut data = std::fs::read(testguest::image()).unwrap();
    let (off, _) = {
        let f = object::File::parse(&*data).unwrap();
        match what {
            "code" => {
                let s = f.symbols().find(|s| s.name() == Ok("tg_step_b")).unwrap();
                let text = f.section_by_name(".text").unwrap();
                let (foff, _) = text.file_range().unwrap();
                ((foff + (s.address() - text.address()) + 10) as usize, ())
            }
            _ => {
                let n = f.section_by_name(".notes").unwrap();
                let (foff, size) = n.file_range().unwrap();
                ((foff + size - 1) as usize, ())
            }
        }
    };
    data[off] ^= 0x01;
    let path = vsplice_tests::scratch::tmp(&format!("{what}.elf"));
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn patches_for_another_build_are_no_match_and_leave_the_guest_untouched() {
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_no_match") {
        return;
    }
    let src = livepatch::example("step_b_v2.c");
    let code = livepatch::build_source(&src, Some(modified_image("code")));
    let build_id = livepatch::build_source(&src, Some(modified_image("build_id")));
    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(1, "tg.tasks=2 tg.wait=1");
    livepatch::wait_tasks(&out, 1, 2, 1);
    let mut p = livepatch::patcher(&mut vmm, &target);
    for (patch, reason) in [(&code, "run_pre"), (&build_id, "build_id")] {
        let r = p.apply(patch);
        assert_eq!((r.cause, r.reason.as_deref()), (Cause::NoMatch, Some(reason)), "{}", r.to_json());
        assert_eq!(r.timings.attempts, 0, "no pause for a patch that does not match");
        assert_eq!(func_bytes(&mut p, &target, "tg_step_b"), image_bytes(&target, "tg_step_b"));
        assert!(p.status().unwrap().patches.is_empty());
    }
    drop(p);
    let mark = out.text().len();
    wait_every_task(&out, mark, 2, |l| l.value == value_orig(l.iter));
    vmm.shutdown();
}

#[test]
fn bad_patches_each_have_their_own_cause_and_leave_the_guest_untouched() {
    use vsplice_patcher::patch::PatchFile;
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_bad_patches") {
        return;
    }
    let good = livepatch::build_example("step_b_v2.c");
    let good_bytes = good.to_bytes().unwrap();
    let mut not_elf = PatchFile { manifest: good.manifest.clone(), object: b"this is not an ELF object at all, just some text bytes......".to_vec() };
    // The id is the name's and the object's (the writer checks it as the reader does).
    not_elf.manifest.id = vsplice_patcher::patch::manifest::patch_id(&not_elf.manifest.name, &not_elf.object);
    let unknown = livepatch::build_text(
        "unknown",
        "#include <vsplice.h>\ntypedef unsigned long u64;\nu64 tg_no_such_function(u64);\nu64 f(u64 x) { return tg_no_such_function(x); }\nVSPLICE_REPLACE(tg_step_b, f);\n",
        false,
    )
    .unwrap();
    let ambiguous = livepatch::build_text(
        "ambiguous",
        "#include <vsplice.h>\ntypedef unsigned long u64;\nu64 tg_scale(u64);\nu64 f(u64 x) { return tg_scale(x); }\nVSPLICE_REPLACE(tg_step_b, f);\n",
        false,
    )
    .unwrap();
    let ex_table = livepatch::build_text(
        "ex_table",
        "#include <vsplice.h>\ntypedef unsigned long u64;\nstatic const int fixup[2] __attribute__((section(\"__ex_table\"), used)) = {1, 2};\nu64 f(u64 x) { return x + 1; }\nVSPLICE_REPLACE(tg_step_b, f);\n",
        false,
    )
    .unwrap();
    let tiny = livepatch::build_text("tiny", "#include <vsplice.h>\ntypedef unsigned long u64;\nu64 f(u64 x) { return x + 1; }\nVSPLICE_REPLACE(tg_tiny, f);\n", true)
        .unwrap();
    // The build refuses what it can see (unless asked not to check).
    let e = livepatch::build_text("ambiguous2", "#include <vsplice.h>\ntypedef unsigned long u64;\nu64 tg_scale(u64);\nu64 f(u64 x) { return tg_scale(x); }\nVSPLICE_REPLACE(tg_step_b, f);\n", true).unwrap_err();
    assert_eq!(e.cause(), "bad_patch", "{e}");

    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(1, "tg.tasks=2 tg.wait=1");
    livepatch::wait_tasks(&out, 1, 2, 1);
    let mut p = livepatch::patcher(&mut vmm, &target);
    let cases: Vec<(&str, Vec<u8>, Cause, &str)> = vec![
        ("truncated", good_bytes[..good_bytes.len() - 100].to_vec(), Cause::BadPatch, "truncated"),
        ("not a patch", b"\x7fELF garbage".to_vec(), Cause::BadPatch, "not_a_patch"),
        ("not ELF", not_elf.to_bytes().unwrap(), Cause::BadPatch, "not_elf"),
        ("unknown symbol", unknown.to_bytes().unwrap(), Cause::FailedToFind, "unknown_symbol"),
        ("ambiguous local", ambiguous.to_bytes().unwrap(), Cause::BadPatch, "ambiguous_symbol"),
        ("__ex_table", ex_table.to_bytes().unwrap(), Cause::UnsupportedSection, "ex_table"),
        ("target too small", tiny.to_bytes().unwrap(), Cause::BadPatch, "target_too_small"),
    ];
    for (what, bytes, cause, reason) in cases {
        let r = p.apply_bytes(&bytes);
        assert_eq!((r.cause, r.reason.as_deref()), (cause, Some(reason)), "{what}: {}", r.to_json());
        assert!(!r.message.is_empty(), "{what}: no message");
        assert_eq!(r.timings.attempts, 0, "{what}: paused the guest");
        let st = p.status().unwrap();
        assert!(st.patches.is_empty() && st.intent.is_none(), "{what}: registry changed: {st:?}");
    }
    for f in ["tg_step_b", "tg_tiny"] {
        assert_eq!(func_bytes(&mut p, &target, f), image_bytes(&target, f), "{f} changed");
    }
    let amb = p.apply(&ambiguous);
    assert!(amb.message.contains("tg_scale") && amb.message.contains("file:"), "{}", amb.message);
    let ex = p.apply(&ex_table);
    assert!(ex.message.contains("__ex_table"), "{}", ex.message);
    drop(p);
    let mark = out.text().len();
    wait_every_task(&out, mark, 2, |l| l.value == value_orig(l.iter));
    vmm.shutdown();
}

const STEP_B_2C: &str = "#include <vsplice.h>\ntypedef unsigned long u64;\nu64 tg_step_b_2c(u64 x) { return x * 0x10001 + 0x2c; }\nVSPLICE_REPLACE(tg_step_b, tg_step_b_2c);\n";

fn value_step_b(add: u64) -> impl Fn(u64) -> u64 {
    move |iter| ((iter * 0x10001 + add) ^ 0xa5a5) + 0x1000
}

#[test]
fn patches_stack_per_function_and_out_of_order_revert_is_refused() {
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_stacking") {
        return;
    }
    let p1 = livepatch::build_example("step_b_v2.c");
    let p2 = livepatch::build_text("step_b_2c", STEP_B_2C, true).unwrap();
    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=2 tg.wait=1");
    livepatch::wait_tasks(&out, 2, 2, 1);
    let mut p = livepatch::patcher(&mut vmm, &target);
    assert!(p.apply(&p1).is_ok());
    let r = p.apply(&p1);
    assert_eq!(r.cause, Cause::AlreadyApplied, "{}", r.to_json());
    let r = p.apply(&p2);
    assert!(r.is_ok(), "{}", r.to_json());
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_step_b(0x2c)(l.iter));
    let r = p.revert(&p1.manifest.id);
    assert_eq!((r.cause, r.reason.as_deref()), (Cause::OutOfOrder, Some("out_of_order")), "{}", r.to_json());
    assert!(r.message.contains("step_b_2c"), "{}", r.message);
    assert!(p.revert(&p2.manifest.id).is_ok());
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_step_b(0x2b)(l.iter));
    let r = p.revert(&p2.manifest.id);
    assert_eq!(r.cause, Cause::AlreadyReversed, "{}", r.to_json());
    assert!(p.revert("step_b_v2").is_ok(), "revert by name");
    let r = p.revert("0123456789abcdef");
    assert_eq!(r.cause, Cause::NotApplied);
    assert_eq!(func_bytes(&mut p, &target, "tg_step_b"), image_bytes(&target, "tg_step_b"));
    drop(p);
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_orig(l.iter));
    assert!(!out.text().contains("TG panic"));
    vmm.shutdown();
}

#[test]
fn new_global_data_static_calls_and_a_cumulative_patch_replacing_all() {
    use vsplice_patcher::patch::build::BuildOptions;
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_data_static_cumulative") {
        return;
    }
    let b2 = livepatch::build_example("step_b_v2.c");
    let scaled = livepatch::build_example("step_a_static_call.c");
    let counter = livepatch::build_example("compute_counter.c");
    let mut opts = BuildOptions::testguest(testguest::image(), livepatch::example("compute_counter.c"));
    opts.cumulative = true;
    opts.name = Some("cumulative_counter".into());
    let cumulative = vsplice_patcher::patch::build::build_patch(&opts).unwrap();
    assert!(scaled.manifest.symbols.iter().any(|s| s.name == "tg_scale"), "{:?}", scaled.manifest.symbols);

    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=2 tg.wait=1");
    livepatch::wait_tasks(&out, 2, 2, 1);
    let mut p = livepatch::patcher(&mut vmm, &target);
    // A static function of the target, the one from patchable.c (x * 3).
    assert!(p.apply(&b2).is_ok());
    let r = p.apply(&scaled);
    assert!(r.is_ok(), "{}", r.to_json());
    let scaled_value = |i: u64| (((i * 0x10001 + 0x2b) * 3) ^ 0xa5a5) + 0x1000;
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == scaled_value(l.iter));
    // New global data in the arena: the counter grows.
    let r = p.apply(&counter);
    assert!(r.is_ok(), "{}", r.to_json());
    let counted = |i: u64| scaled_value(i) - 0x1000 + 0x1000 + 0x100000;
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == counted(l.iter));
    assert_eq!(p.status().unwrap().patches.len(), 3);
    // The cumulative patch replaces all three at once: only its tg_compute remains.
    let r = p.apply(&cumulative);
    assert!(r.is_ok(), "{}", r.to_json());
    assert_eq!(r.superseded.len(), 3, "{}", r.to_json());
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_orig(l.iter) + 0x100000);
    let st = p.status().unwrap();
    assert_eq!(st.patches.len(), 1);
    assert_eq!(st.patches[0].name, "cumulative_counter");
    for f in ["tg_step_a", "tg_step_b"] {
        assert_eq!(func_bytes(&mut p, &target, f), image_bytes(&target, f), "{f} not restored by the cumulative patch");
    }
    let r = p.revert(&b2.manifest.id);
    assert_eq!(r.cause, Cause::AlreadyReversed, "{}", r.to_json());
    assert!(r.message.contains("replaced"), "{}", r.message);
    assert!(p.revert("cumulative_counter").is_ok());
    assert_eq!(func_bytes(&mut p, &target, "tg_compute"), image_bytes(&target, "tg_compute"));
    drop(p);
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_orig(l.iter));
    assert!(!out.text().contains("TG panic"));
    vmm.shutdown();
}


/// After a death: a fresh patcher reports the registry, recovers, and the
/// text is either fully patched or fully original, in agreement with the registry.
fn recover_and_check(
    vmm: &mut vsplice_vmm::vmm::Vmm,
    target: &vsplice_patcher::kernels::testguest::TestGuest,
    id: &str,
    step: usize,
    seen: &mut std::collections::BTreeSet<String>,
) -> bool {
    let mut p = livepatch::patcher(vmm, target);
    let st = p.status().unwrap_or_else(|f| panic!("status after death at write {step}: {}", f.message));
    if let Some(i) = &st.intent {
        assert_eq!(i.patch, id, "step {step}");
        seen.insert(format!("{:?}:{:?}", i.op, i.text));
    }
    let r = p.recover();
    assert!(r.is_ok(), "recover after death at write {step}: {}", r.to_json());
    let st = p.status().unwrap();
    assert!(st.intent.is_none(), "intent left after recovery at step {step}");
    let applied = st.patches.iter().any(|x| x.id == id);
    let b = func_bytes(&mut p, target, "tg_step_b") != image_bytes(target, "tg_step_b");
    let a = func_bytes(&mut p, target, "tg_step_a") != image_bytes(target, "tg_step_a");
    assert_eq!((a, b), (applied, applied), "step {step}: text (a patched {a}, b patched {b}) disagrees with the registry (applied {applied})");
    if applied {
        assert!(st.patches[0].funcs.iter().all(|f| f.active), "step {step}");
    }
    drop(p);
    // A death inside a pause leaves the VM paused: it resumes only now, whole.
    vmm.resume().unwrap();
    applied
}

#[test]
fn a_process_killed_after_any_write_leaves_a_state_the_next_one_completes_or_rolls_back() {
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_crash_safety") {
        return;
    }
    let patch = livepatch::build_text("two_sites", TWO_SITES, true).unwrap();
    let id = patch.manifest.id.clone();
    let target = livepatch::target();
    let (mut vmm, out) = livepatch::boot(2, "tg.tasks=2 tg.wait=1");
    livepatch::wait_tasks(&out, 2, 2, 1);
    let arena = vmm.arena();
    // Apply, killed after 0, 1, 2, ... writes until one apply gets through.
    let mut steps = 0;
    let mut seen = std::collections::BTreeSet::new();
    for kill_at in 0..64 {
        // The process "dies" at its kill_at-th guest-memory write: that write and everything after it fail.
        let mut d = Faulty::new(&mut vmm).die_after_writes(kill_at);
        let r = vsplice_patcher::txn::Patcher::new(&mut d, &target, vsplice_patcher::txn::TxnConfig::new(arena)).apply(&patch);
        let died = d.is_dead();
        let applied = recover_and_check(&mut vmm, &target, &id, kill_at, &mut seen);
        if !died {
            assert!(r.is_ok(), "{}", r.to_json());
            assert!(applied);
            steps = kill_at;
            break;
        }
        if applied {
            // Rolled forward: take it off again for the next round.
            let r = livepatch::patcher(&mut vmm, &target).revert(&id);
            assert!(r.is_ok(), "{}", r.to_json());
        }
    }
    assert!(steps >= 6, "an apply should take several writes, got {steps}");
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_two_sites(l.iter));
    // Revert, killed after each write in turn (re-applying whenever it got through).
    for kill_at in 0.. {
        // The process "dies" at its kill_at-th guest-memory write: that write and everything after it fail.
        let mut d = Faulty::new(&mut vmm).die_after_writes(kill_at);
        let r = vsplice_patcher::txn::Patcher::new(&mut d, &target, vsplice_patcher::txn::TxnConfig::new(arena)).revert(&id);
        let died = d.is_dead();
        let applied = recover_and_check(&mut vmm, &target, &id, 100 + kill_at, &mut seen);
        if !died {
            assert!(r.is_ok(), "{}", r.to_json());
            assert!(!applied);
            break;
        }
        if !applied {
            let r = livepatch::patcher(&mut vmm, &target).apply(&patch);
            assert!(r.is_ok(), "{}", r.to_json());
        }
        assert!(kill_at < 64, "revert never got through");
    }
    // Every kind of interrupted state was met and recovered.
    for want in ["Apply:NotStarted", "Apply:Partial", "Apply:Complete", "Revert:NotStarted", "Revert:Partial", "Revert:Complete"] {
        assert!(seen.contains(want), "never saw {want}: {seen:?}");
    }
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_orig(l.iter));
    let lines = testguest::parse_all(&out.text()).expect("no torn line");
    for l in &lines {
        assert!(l.value == value_orig(l.iter) || l.value == value_two_sites(l.iter), "half-patched value {l:?}");
    }
    assert!(!out.text().contains("TG panic"));
    vmm.shutdown();
}

#[test]
fn vcpus_that_do_not_park_in_time_are_pause_timeout_and_the_guest_is_untouched() {
    use vsplice_vmm::config::{SerialConfig, VmConfig};
    let _g = testguest::vm_lock();
    if !testguest::ready("livepatch_pause_timeout") {
        return;
    }
    let patch = livepatch::build_example("step_b_v2.c");
    let target = livepatch::target();
    let out = Capture::default();
    let mut config = VmConfig::new(testguest::image());
    config.vcpus = 2;
    config.memory_mib = 128;
    config.cmdline = "tg.tasks=2 tg.wait=1".into();
    config.serial = SerialConfig::Writer(Box::new(out.clone()));
    // A bound no real pause can meet.
    config.pause_timeout = Duration::from_nanos(1);
    let mut vmm = vsplice_vmm::builder::build(config).unwrap();
    livepatch::wait_tasks(&out, 2, 2, 1);
    let mut p = livepatch::patcher(&mut vmm, &target);
    let r = p.apply(&patch);
    assert_eq!((r.cause, r.stage), (Cause::PauseTimeout, vsplice_patcher::txn::Stage::Pause), "{}", r.to_json());
    assert_eq!(r.timings.attempts, 1, "a pause time-out is not retried");
    let st = p.status().unwrap();
    assert!(st.patches.is_empty() && st.intent.is_none(), "{st:?}");
    assert_eq!(func_bytes(&mut p, &target, "tg_step_b"), image_bytes(&target, "tg_step_b"));
    drop(p);
    let mark = out.text().len();
    wait_every_task(&out, mark, 4, |l| l.value == value_orig(l.iter));
    vmm.shutdown();
}

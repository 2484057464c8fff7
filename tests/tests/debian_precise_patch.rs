//! Issue 5 with real live patches on the generic Debian kernel under QEMU
//! (attached through the gdbstub, the guest agent loaded by /init):
//!
//! - a stale address inside `cmdline_proc_show` left on a sleeping kernel
//!   thread's stack (`vsplice_stale.ko target=`): with `--check
//!   conservative` the cmdline patch ends `code_busy` naming that thread and
//!   the guest is untouched; with `--check orc` it applies (the report's
//!   check summary shows the stacks unwound), works, and reverts;
//! - a fork storm plus readers of the patched file while the patch is
//!   applied and reverted in a loop: every transaction ends `ok` or
//!   `code_busy` (a reader inside the function), never anything else, the
//!   task list always came from the agent checked against the walk, every
//!   line read is the old or the new text, no Oops/BUG/WARNING.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agentlive;

use vsplice_patcher::model::CheckMode;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;

use vsplice_tests::testguest::vm_lock;

#[test]
fn stale_word_blocks_the_conservative_check_not_orc_and_patches_survive_a_fork_storm() {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(mut g) = agentlive::boot(flavour, "precise-patch") else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let sym = g.run_ok("grep ' cmdline_proc_show$' /proc/kallsyms").unwrap();
    let addr = u64::from_str_radix(sym.split_whitespace().next().unwrap(), 16).unwrap();
    g.run_ok(&format!("insmod /modules/extra/vsplice_stale.ko target={:#x}", addr + 4)).unwrap();
    let stale_pid: u64 = g.run_ok("cat /sys/module/vsplice_stale/parameters/stale_pid").unwrap().trim().parse().unwrap();
    let before = g.run_ok("cat /proc/cmdline").unwrap();
    let after = format!("{} vsplice.marker=cmdline\n", before.trim_end());
    let (mut be, target) = linuxpatch::attach(&g).unwrap();

    // Conservative: the stale word is a conflict, retried, then code_busy.
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        p.config_mut().check = CheckMode::Conservative;
        p.config_mut().max_attempts = 3;
        let r = p.apply(&patch);
        eprintln!("conservative: {}", r.to_json());
        assert_eq!(r.cause.name(), "code_busy", "{}", r.to_json());
        assert!(r.conflicts.iter().any(|c| c.task_id == Some(stale_pid) && c.function.starts_with("cmdline_proc_show")), "{:?}", r.conflicts);
    }
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), before, "the guest was touched");
    // ORC: no conflict; applies, works, reverts.
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.apply(&patch);
        eprintln!("orc: {}", r.to_json());
        assert!(r.is_ok(), "{}", r.to_json());
        let check = r.check.as_ref().expect("the report carries the check summary");
        assert_eq!(check.mode, CheckMode::Orc);
        assert!(check.unwound > 20 && check.scanned * 20 <= check.unwound, "{check:?}");
    }
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), after);
    {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = p.revert(&patch.manifest.id);
        assert!(r.is_ok(), "{}", r.to_json());
    }
    assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), before);

    // Fork storm and readers while the patch goes in and out.
    g.run_ok(
        "cat >/tmp/storm.sh <<'EOF'\nwhile [ ! -e /tmp/stop ]; do /bin/true & /bin/true & /bin/true & wait; done\nEOF\n\
         cat >/tmp/reader.sh <<'EOF'\nwhile [ ! -e /tmp/stop ]; do cat /proc/cmdline >>/tmp/read.$1; done\nEOF\n\
         rm -f /tmp/stop /tmp/read.*; sh /tmp/storm.sh >/dev/null 2>&1 & sh /tmp/storm.sh >/dev/null 2>&1 & sh /tmp/reader.sh a >/dev/null 2>&1 & sh /tmp/reader.sh b >/dev/null 2>&1 &",
    )
    .unwrap();
    let (mut ok, mut busy, mut other) = (0, 0, Vec::new());
    let mut applied = false;
    // Where the last task list came from (each report's check summary says).
    let mut agent_in_use = false;
    for i in 0..12 {
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        let r = if applied { p.revert(&patch.manifest.id) } else { p.apply(&patch) };
        // One line per transaction, so that a failure below says what led to it.
        eprintln!(
            "storm {i} {}: {} after {} attempt(s), tasks from {}, fallbacks {:?}",
            if applied { "revert" } else { "apply" },
            r.cause.name(),
            r.timings.attempts,
            r.check.as_ref().map_or("-", |c| c.task_source.as_str()),
            r.check.as_ref().map(|c| c.fallbacks.iter().map(|f| f.reason.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
        );
        match r.cause.name() {
            "ok" => {
                ok += 1;
                applied = !applied;
                // Give the readers time to see each state.
                std::thread::sleep(std::time::Duration::from_millis(800));
            }
            "code_busy" => busy += 1,
            _ => other.push(r.to_json()),
        }
        if let Some(c) = &r.check {
            assert!(c.fallbacks.iter().all(|f| !f.reason.is_empty()), "{c:?}");
            agent_in_use = c.task_source == "agent+agentless";
        }
    }
    {
        // Leave the guest unpatched.
        let mut p = linuxpatch::patcher(&g, &mut be, &target);
        if p.status().unwrap().patches.iter().any(|x| x.id == patch.manifest.id) {
            let r = p.revert(&patch.manifest.id);
            assert!(r.is_ok(), "{}", r.to_json());
        }
    }
    g.run_ok("touch /tmp/stop; sleep 2").unwrap();
    let reads = g.run_ok("cat /tmp/read.a /tmp/read.b").unwrap();
    let bad: Vec<&str> = reads.lines().filter(|l| format!("{l}\n") != before && format!("{l}\n") != after).take(3).collect();
    let news = reads.lines().filter(|l| format!("{l}\n") == after).count();
    eprintln!("storm: {ok} ok, {busy} code_busy, {} lines read ({news} patched)", reads.lines().count());
    assert!(other.is_empty(), "unexpected outcomes: {other:#?}");
    assert!(agent_in_use, "the task lists did not come from the agent");
    assert!(ok >= 6, "{ok} transactions succeeded");
    assert!(bad.is_empty(), "torn or foreign lines: {bad:?}");
    assert!(news > 0, "the readers never saw the patched text");
    linuxpatch::detach(be).unwrap();
    g.run_ok("rmmod vsplice_stale").unwrap();
    g.check_console().unwrap();
}

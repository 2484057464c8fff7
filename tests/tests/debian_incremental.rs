//! Issue 12, item 3: the incremental safety check on a stock Debian kernel
//! under QEMU TCG (shared-memory backend), one boot:
//!
//! - with tasks running between every pre-check and its pause (a busy
//!   loop, a loop forking `sleep 0.02` — each a new task that enters
//!   `common_nsleep`, the function the patch replaces), rounds of apply with
//!   `incremental = compare`: the incremental and the full check never
//!   disagree (no `incremental_mismatch`), every result is `ok` or
//!   `code_busy` (and a `code_busy` names tasks in `common_nsleep`), and
//!   some verdicts were reused (the path is exercised, not bypassed); the
//!   same rounds with example 1 (`cmdline_proc_show`, entered by a reader
//!   loop) must also see applies go in;
//! - a task asleep in `common_nsleep` all along: `code_busy` naming it in
//!   `on` and `compare` (a task found in the target at the pre-check keeps
//!   no verdict), then the apply once it left;
//! - all of it with the agentless walk, and again with the guest agent
//!   loaded (its tasks take the walk's counters);
//! - with no loop running yet (agentless): rounds of example 1 in `on` and
//!   `compare`, at least one compare round taking the quiet-scheduler path
//!   (`reread: quiet`: no switch or fork since the pre-check, only the
//!   tasks on a CPU read again) and agreeing with the full check;
//! - the CLI: `vsplice patch apply --incremental compare` of example 1
//!   (`cmdline_proc_show`, which a third loop keeps entering) rounds with the
//!   loops running, each `ok` or `code_busy`, never a mismatch, and the
//!   result's `check.incremental` present.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vsplice_patcher::model::Incremental;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::patch::PatchFile;
use vsplice_tests::checks::{check, ensure};
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::Guest;
use vsplice_tests::testguest::vm_lock;

const ROUNDS: usize = 8;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/linux_patches").join(name)
}

fn herr(e: vsplice_tests::harness_error::HarnessError) -> String {
    e.to_string()
}

/// Rounds of apply (+ revert when it went in) with tasks running in the
/// window; returns the tasks reused over all rounds.
fn rounds_with_churn(g: &mut Guest, nsleep: &PatchFile, target_fn: &str) -> Result<(usize, usize), String> {
    let (mut be, target) = linuxpatch::attach(g)?;
    let mut reused = 0;
    let mut outcomes = Vec::new();
    {
        let mut p = linuxpatch::patcher(g, &mut be, &target);
        p.config_mut().incremental = Incremental::Compare;
        p.config_mut().max_attempts = 3;
        for i in 0..ROUNDS {
            let r = p.apply(nsleep);
            ensure(r.reason.as_deref() != Some("incremental_mismatch"), || format!("round {i}: {}", r.to_json()))?;
            let inc = r.check.as_ref().and_then(|c| c.incremental.clone());
            let inc = inc.ok_or_else(|| format!("round {i}: no incremental summary: {}", r.to_json()))?;
            reused += inc.reused;
            let who: Vec<String> = r.conflicts.iter().map(|c| format!("{}/{}", c.task.as_deref().unwrap_or("?"), c.task_id.unwrap_or(0))).collect();
            eprintln!("          round {i}: {} (pre-checked {}, reused {}, rechecked {}, reread {}, pre-check {} us, check {} us) {who:?} {}", r.cause.name(), inc.pre_checked, inc.reused, inc.rechecked, inc.reread.unwrap_or("-"), inc.pre_check_us, r.timings.check_us, inc.note.as_deref().unwrap_or(""));
            match r.cause.name() {
                "ok" => {
                    let v = p.revert(&nsleep.manifest.id);
                    ensure(v.is_ok(), || format!("revert {i}: {}", v.to_json()))?;
                }
                "code_busy" => {
                    let named = r.conflicts.iter().all(|c| c.function.starts_with(target_fn));
                    ensure(!r.conflicts.is_empty() && named, || format!("round {i}: busy elsewhere: {}", r.to_json()))?;
                }
                _ => return Err(format!("round {i}: neither ok nor code_busy: {}", r.to_json())),
            }
            outcomes.push(r.cause.name());
        }
    }
    linuxpatch::detach(be)?;
    eprintln!("          outcomes: {outcomes:?}; reused {reused} task verdicts in all");
    Ok((reused, outcomes.iter().filter(|o| **o == "ok").count()))
}

/// A `sleep 3600` asleep in `common_nsleep`: code_busy naming it in both
/// incremental modes, then the apply once it left.
fn sleeper_is_busy(g: &mut Guest, nsleep: &PatchFile) -> Result<(), String> {
    let pid: u64 = g.run_ok("sleep 3600 </dev/null >/dev/null 2>&1 & echo $!").map_err(herr)?.trim().parse().map_err(|_| "pid")?;
    g.run_ok(&format!("n=0; until grep -q '^State:.*S' /proc/{pid}/status && [ \"$(cat /proc/{pid}/wchan)\" != 0 ]; do sleep 0.1; n=$((n+1)); [ $n -lt 50 ] || exit 1; done")).map_err(herr)?;
    let (mut be, target) = linuxpatch::attach(g)?;
    for mode in [Incremental::On, Incremental::Compare] {
        let mut p = linuxpatch::patcher(g, &mut be, &target);
        p.config_mut().incremental = mode;
        p.config_mut().max_attempts = 2;
        let r = p.apply(nsleep);
        ensure(r.cause.name() == "code_busy", || format!("{mode}: {}", r.to_json()))?;
        let c = r.conflicts.iter().find(|c| c.task_id == Some(pid)).ok_or_else(|| format!("{mode}: no conflict names pid {pid}: {}", r.to_json()))?;
        ensure(c.task.as_deref() == Some("sleep") && c.function.starts_with("common_nsleep+"), || format!("{c:?}"))?;
        let inc = r.check.as_ref().and_then(|c| c.incremental.clone()).ok_or("no incremental summary")?;
        ensure(inc.reused > 0, || format!("{mode}: nothing reused: {inc:?}"))?;
    }
    g.run_ok(&format!("kill {pid}; n=0; while [ -e /proc/{pid} ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done; [ ! -e /proc/{pid} ]")).map_err(herr)?;
    linuxpatch::detach(be)
}

/// With no loop running: rounds of example 1 in `on` and `compare`; some
/// pause finds the scheduler quiet since its pre-check (no switch, no
/// fork: `reread: quiet`, only the tasks on a CPU read again), and compare
/// mode agrees with the full check there too (a mismatch fails the round).
fn quiet_rounds(g: &mut Guest, cmdline: &PatchFile) -> Result<(), String> {
    let (mut be, target) = linuxpatch::attach(g)?;
    let mut quiet_compare = 0;
    {
        for mode in [Incremental::On, Incremental::Compare] {
            let mut p = linuxpatch::patcher(g, &mut be, &target);
            p.config_mut().incremental = mode;
            let mut rereads = Vec::new();
            for i in 0..QUIET_ROUNDS {
                let r = p.apply(cmdline);
                ensure(r.is_ok(), || format!("{mode} round {i}: {}", r.to_json()))?;
                let inc = r.check.as_ref().and_then(|c| c.incremental.clone()).ok_or_else(|| format!("{mode} round {i}: no incremental summary: {}", r.to_json()))?;
                let how = inc.reread.unwrap_or("none");
                ensure(how != "quiet" || inc.records_read.is_some_and(|n| n < inc.reused + inc.rechecked), || format!("{mode} round {i}: quiet, yet every record read: {inc:?}"))?;
                if how == "quiet" && mode == Incremental::Compare {
                    quiet_compare += 1;
                }
                eprintln!("          quiet {mode} round {i}: reread {how}, records read {:?}, reused {}, rechecked {}, check {} us, downtime {} us", inc.records_read, inc.reused, inc.rechecked, r.timings.check_us, r.timings.downtime_us);
                rereads.push(how);
                let v = p.revert(&cmdline.manifest.id);
                ensure(v.is_ok(), || format!("revert {i}: {}", v.to_json()))?;
            }
            eprintln!("          {mode}: {rereads:?}");
        }
    }
    linuxpatch::detach(be)?;
    ensure(quiet_compare > 0, || "no compare round took the quiet path".into())
}

/// Rounds per mode of [`quiet_rounds`].
const QUIET_ROUNDS: usize = 6;

fn cli_rounds(g: &mut Guest, vsp: &Path) -> Result<(), String> {
    let mut base: Vec<String> = linuxpatch::gdb_args(g);
    base.extend(["--target".into(), "linux".into(), "--arena".into(), linuxpatch::arena_arg(g), "--incremental".into(), "compare".into()]);
    let run = |cmd: &[&str]| {
        let mut args: Vec<&str> = vec!["patch"];
        args.extend_from_slice(cmd);
        args.extend(base.iter().map(String::as_str));
        vsplice(&args)
    };
    for i in 0..3 {
        let o = run(&["apply", vsp.to_str().unwrap_or_default()]);
        let out = text(&o.stdout);
        ensure(!out.contains("incremental_mismatch"), || format!("round {i}: {out}\n{}", text(&o.stderr)))?;
        ensure(out.contains("\"incremental\":{\"mode\":\"compare\""), || format!("round {i}: no incremental summary: {out}\n{}", text(&o.stderr)))?;
        eprintln!("          CLI round {i}: {}", if out.contains("\"cause\":\"ok\"") { "ok" } else { "not ok" });
        if out.contains("\"cause\":\"ok\"") {
            let o = run(&["revert", "cmdline_marker"]);
            ensure(o.status.success(), || format!("revert {i}: {}\n{}", text(&o.stdout), text(&o.stderr)))?;
        } else {
            ensure(out.contains("\"cause\":\"code_busy\""), || format!("round {i}: {out}\n{}", text(&o.stderr)))?;
        }
    }
    Ok(())
}

#[test]
fn incremental_check_agrees_with_the_full_check_while_tasks_run() {
    incremental_e2e(false);
}

/// The same with the guest agent loaded: the task list is the agent's
/// merged with the walk, whose switch counters the agent's tasks take.
#[test]
fn incremental_check_agrees_with_the_full_check_with_the_agent() {
    incremental_e2e(true);
}

fn incremental_e2e(agent: bool) {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let label = if agent { "incremental-agent" } else { "incremental" };
    let Some(mut cfg) = linuxpatch::config_with_headers(flavour, label) else { return };
    cfg.shared_ram = true;
    if !agent {
        cfg.extra_append.push("vsplice.agent=0".into());
    }
    let Some(mut g) = Guest::boot_or_skip(cfg) else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let nsleep = linuxpatch::build(&img, &image, &fixture("common_nsleep_copy.c")).unwrap();
    let mut failures = Vec::new();
    let f = &mut failures;

    check(f, "a task asleep in the target all along: code_busy naming it (on, compare), verdicts of the others reused", sleeper_is_busy(&mut g, &nsleep));
    let cmdline = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    if !agent {
        check(f, "no loop running: some pauses take the quiet path (counters unchanged), compare agrees", quiet_rounds(&mut g, &cmdline));
    }
    // Tasks that run between every pre-check and its pause.
    // The second loop spends most of its time counting in the shell, so
    // some pauses find no `sleep` in the target and the patch goes in.
    g.run_ok("(while :; do :; done) </dev/null >/dev/null 2>&1 & (while :; do sleep 0.02; i=0; while [ $i -lt 400 ]; do i=$((i+1)); done; done) </dev/null >/dev/null 2>&1 & (while :; do cat /proc/cmdline >/dev/null; done) </dev/null >/dev/null 2>&1 & echo started").unwrap();
    check(f, "rounds with a busy loop and sleeps forking into the target: compare never disagrees, ok or code_busy", rounds_with_churn(&mut g, &nsleep, "common_nsleep").and_then(|(reused, _)| ensure(reused > 0, || "no verdict was ever reused".into())));
    // The harness's own `timeout` wrappers sleep in common_nsleep for good,
    // so that patch is always busy: the same rounds on example 1, whose
    // target the reader loop keeps entering, must also go in.
    check(f, "rounds of example 1 with the same loops: compare never disagrees, verdicts reused, some applies go in", rounds_with_churn(&mut g, &cmdline, "cmdline_proc_show").and_then(|(reused, ok)| ensure(reused > 0 && ok > 0, || format!("reused {reused}, ok {ok}"))));
    let cli_dir = vsplice_tests::scratch::tmp_dir("incremental-cli");
    match linuxpatch::cli_build_example(&img, "cmdline_marker.c", &cli_dir) {
        Ok(vsp) => check(f, "the CLI with --incremental compare while tasks run", cli_rounds(&mut g, &vsp)),
        Err(e) => check(f, "patch build through the CLI", Err(e)),
    }
    let _ = std::fs::remove_dir_all(&cli_dir);
    check(f, "guest answers, console clean", g.run_ok("echo alive").map_err(|e| e.to_string()).and_then(|o| {
        ensure(o == "alive\n", || o.clone())?;
        g.check_console().map_err(|e| e.to_string())
    }));
    assert!(failures.is_empty(), "{} check(s) failed:\n{}", failures.len(), failures.join("\n"));
}

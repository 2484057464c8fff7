//! Issue 12, item 1: the shared-memory backend (QEMU's RAM as a shared
//! file, its layout from QMP, stop/resume/registers through the gdbstub)
//! on a stock Debian kernel under QEMU TCG, one boot for every check:
//!
//! - identify through the file: every kallsyms symbol equals
//!   /proc/kallsyms, the banner /proc/version, the task walk the guest's
//!   /proc (the same checks as `debian_kernel_view`, from `common::view`);
//! - bad RAM files refused before anything is written, each with its
//!   cause: a file of the wrong size (`shm_size_mismatch`), zeros of the
//!   right size and another running guest's RAM file (`shm_not_this_guest`),
//!   through the library and through the CLI; the guest runs on;
//! - apply and revert of example 1 with the patched code observed running
//!   in the guest (under TCG: the old translation of `cmdline_proc_show`,
//!   run just before, must not survive the writes), with stops through the
//!   gdbstub and through QMP `stop`/`cont`;
//! - `code_busy` naming a task asleep in the target, then the apply once
//!   it left;
//! - readers of /proc/version through 20 apply/revert cycles see only the
//!   old or the new text;
//! - `vsplice patch apply/revert --mem-path --qmp` (the CLI).
//!
//! The whole Debian suite also runs on this backend with
//! `VSPLICE_TEST_SHM=1` (the harness then gives every guest shared RAM).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::view::{keys, live_view, symbols_equal, tasks_match};
use common::{bounded, guest_tasks, parse_proc_kallsyms};
use vsplice_patcher::attach::attach_gdb_shm;
use vsplice_patcher::gdb::GdbOptions;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::shm::{ShmSpec, StopVia};
use vsplice_tests::checks::{check, ensure};
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Channel, GdbListen, Guest, QemuConfig};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::vm_lock;

const READER: &str = r#"#!/bin/sh
while [ ! -e /tmp/stop ]; do cat /proc/version; done >"/tmp/reader.$1" 2>&1
touch "/tmp/reader.$1.done"
"#;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/linux_patches").join(name)
}

/// Attaching with `mem_path` as the RAM file must fail with `cause`, and
/// leave the guest running.
fn refused(g: &mut Guest, mem_path: &Path, cause: &str) -> Result<(), String> {
    let mut spec = g.shared_ram().ok_or("no shared RAM")?.spec(StopVia::Gdb);
    spec.mem_path = mem_path.to_path_buf();
    let addr = g.gdb_addr().ok_or("no gdbstub")?.to_string();
    let opts = GdbOptions { timeout: Duration::from_secs(20), ..GdbOptions::default() };
    let r = bounded(Duration::from_secs(120), move || attach_gdb_shm(&addr, opts, Some(&spec)).map(|(be, _)| be.detach()).map_err(|e| (e.cause(), e.to_string())))?;
    match r {
        Err((c, msg)) => {
            eprintln!("          refused: [{c}] {msg}");
            ensure(c == cause, || format!("cause {c} ({msg}), want {cause}"))?
        }
        Ok(_) => return Err(format!("{} was accepted as the guest's RAM", mem_path.display())),
    }
    let o = g.run_ok("echo alive").map_err(|e| e.to_string())?;
    ensure(o == "alive\n", || format!("the guest does not answer after the refusal: {o:?}"))
}

/// The same refusal through the CLI: exit code 1, the cause on stderr.
fn cli_refused(g: &Guest, mem_path: &Path, cause: &str) -> Result<(), String> {
    let r = g.shared_ram().ok_or("no shared RAM")?;
    let (gdb, arena, mp, qmp) = (g.gdb_addr().unwrap_or_default(), linuxpatch::arena_arg(g), mem_path.display().to_string(), r.qmp.display().to_string());
    let o = vsplice(&["patch", "list", "--gdb", gdb, "--target", "linux", "--arena", &arena, "--mem-path", &mp, "--qmp", &qmp]);
    let err = text(&o.stderr);
    ensure(o.status.code() == Some(1) && err.contains(cause), || format!("exit {:?}, stderr {err}", o.status.code()))
}

/// A second guest with shared RAM of the same size, booting (its RAM is
/// "another guest's file").
fn other_guest() -> Result<Guest, String> {
    let mut cfg = QemuConfig::debian(Flavour::Amd64, "shm-other").map_err(|e| e.to_string())?;
    (cfg.shared_ram, cfg.gdb, cfg.channel) = (true, GdbListen::None, Channel::None);
    let mut other = Guest::spawn(cfg).map_err(|e| e.to_string())?;
    other.wait_console("Linux version", Duration::from_secs(120)).map_err(|e| e.to_string())?;
    // Let it get past early boot (its page tables and memory in use).
    other.wait_console("Freeing unused kernel image", Duration::from_secs(180)).map_err(|e| e.to_string())?;
    Ok(other)
}

fn apply_revert_observed(g: &mut Guest, via: StopVia, patch: &vsplice_patcher::patch::PatchFile, before: &str) -> Result<(), String> {
    // Run the old code first: under TCG its translation is now cached.
    ensure(g.run_ok("cat /proc/cmdline").map_err(|e| e.to_string())? == before, || "cmdline changed".into())?;
    let (mut be, target) = linuxpatch::attach_via(g, via)?;
    ensure(be.0.shared().is_some_and(|p| p.stop_via() == via), || "memory does not go through the RAM file".into())?;
    {
        let mut p = linuxpatch::patcher(g, &mut be, &target);
        let r = p.apply(patch);
        ensure(r.is_ok(), || r.to_json())?;
        eprintln!("          apply ({via:?}): downtime {} us, pause {:?}", r.timings.downtime_us, r.timings);
    }
    let after = g.run_ok("cat /proc/cmdline").map_err(|e| e.to_string())?;
    ensure(after == format!("{} vsplice.marker=cmdline\n", before.trim_end()), || format!("after apply the guest runs the old code: {after:?}"))?;
    {
        let mut p = linuxpatch::patcher(g, &mut be, &target);
        let r = p.revert(&patch.manifest.id);
        ensure(r.is_ok(), || r.to_json())?;
    }
    let back = g.run_ok("cat /proc/cmdline").map_err(|e| e.to_string())?;
    ensure(back == before, || format!("after revert: {back:?}"))?;
    linuxpatch::detach(be)
}

fn code_busy(g: &mut Guest, nsleep: &vsplice_patcher::patch::PatchFile) -> Result<(), String> {
    let e = |e: vsplice_tests::harness_error::HarnessError| e.to_string();
    let pid: u64 = g.run_ok("sleep 3600 </dev/null >/dev/null 2>&1 & echo $!").map_err(e)?.trim().parse().map_err(|_| "pid")?;
    g.run_ok(&format!("n=0; until grep -q '^State:.*S' /proc/{pid}/status && [ \"$(cat /proc/{pid}/wchan)\" != 0 ]; do sleep 0.1; n=$((n+1)); [ $n -lt 50 ] || exit 1; done")).map_err(e)?;
    let (mut be, target) = linuxpatch::attach(g)?;
    {
        let mut p = linuxpatch::patcher(g, &mut be, &target);
        p.config_mut().max_attempts = 2;
        let r = p.apply(nsleep);
        ensure(r.cause.name() == "code_busy", || r.to_json())?;
        let c = r.conflicts.iter().find(|c| c.task_id == Some(pid)).ok_or_else(|| format!("no conflict names pid {pid}: {}", r.to_json()))?;
        ensure(c.task.as_deref() == Some("sleep") && c.function.starts_with("common_nsleep+"), || format!("{c:?}"))?;
    }
    g.run_ok(&format!("kill {pid}; n=0; while [ -e /proc/{pid} ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done; [ ! -e /proc/{pid} ]")).map_err(e)?;
    {
        let mut p = linuxpatch::patcher(g, &mut be, &target);
        let r = p.apply(nsleep);
        ensure(r.is_ok(), || format!("once the task left: {}", r.to_json()))?;
        let r = p.revert(&nsleep.manifest.id);
        ensure(r.is_ok(), || r.to_json())?;
    }
    linuxpatch::detach(be)
}

fn stress(g: &mut Guest, patch: &vsplice_patcher::patch::PatchFile) -> Result<(), String> {
    const CYCLES: usize = 20;
    let e = |e: vsplice_tests::harness_error::HarnessError| e.to_string();
    let old = g.run_ok("cat /proc/version").map_err(e)?.trim_end().to_owned();
    let new = format!("{old} [vsplice]");
    g.run_ok(&format!("rm -f /tmp/stop /tmp/reader.*; cat >/tmp/reader.sh <<'EOF'\n{READER}EOF")).map_err(e)?;
    for i in 0..2 {
        g.run_ok(&format!("sh /tmp/reader.sh {i} </dev/null >/dev/null 2>&1 &")).map_err(e)?;
    }
    g.run_ok("sleep 1; test -s /tmp/reader.0").map_err(e)?;
    let (mut be, target) = linuxpatch::attach(g)?;
    {
        let mut p = linuxpatch::patcher(g, &mut be, &target);
        for i in 0..CYCLES {
            let r = p.apply(patch);
            ensure(r.is_ok(), || format!("apply {i}: {}", r.to_json()))?;
            // Transactions take a few ms here: leave the readers time to see the new text.
            std::thread::sleep(Duration::from_millis(30));
            let v = p.revert(&patch.manifest.id);
            ensure(v.is_ok(), || format!("revert {i}: {}", v.to_json()))?;
        }
    }
    linuxpatch::detach(be)?;
    g.run_ok("touch /tmp/stop; n=0; while [ $(ls /tmp/reader.*.done 2>/dev/null | wc -l) -lt 2 ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done; ls /tmp/reader.*.done").map_err(e)?;
    let out = g.run_with("cat /tmp/reader.0 /tmp/reader.1", vsplice_tests::qemu::RunOptions::new(Duration::from_secs(120)).gz()).map_err(e)?.text();
    let (n_old, n_new) = (out.lines().filter(|l| *l == old).count(), out.lines().filter(|l| *l == new).count());
    ensure(n_old + n_new == out.lines().count(), || format!("a line is neither text: {:?}", out.lines().find(|l| *l != old && *l != new)))?;
    eprintln!("          readers: {n_old} old lines, {n_new} new lines");
    ensure(n_old > 0 && n_new > 0, || format!("the readers must see both texts ({n_old} old, {n_new} new)"))
}

fn cli_apply_revert(g: &mut Guest, vsp: &Path, before: &str) -> Result<(), String> {
    let mut base: Vec<String> = linuxpatch::gdb_args(g);
    ensure(base.iter().any(|a| a == "--mem-path"), || "the guest has no shared RAM".into())?;
    base.extend(["--target".into(), "linux".into(), "--arena".into(), linuxpatch::arena_arg(g)]);
    let run = |cmd: &[&str]| {
        let mut args: Vec<&str> = vec!["patch"];
        args.extend_from_slice(cmd);
        args.extend(base.iter().map(String::as_str));
        vsplice(&args)
    };
    let o = run(&["apply", vsp.to_str().unwrap_or_default()]);
    ensure(o.status.success() && text(&o.stdout).contains("\"cause\":\"ok\""), || format!("{}\n{}", text(&o.stdout), text(&o.stderr)))?;
    let now = g.run_ok("cat /proc/cmdline").map_err(|e| e.to_string())?;
    ensure(now == format!("{} vsplice.marker=cmdline\n", before.trim_end()), || now.clone())?;
    let o = run(&["revert", "cmdline_marker"]);
    ensure(o.status.success(), || format!("{}\n{}", text(&o.stdout), text(&o.stderr)))?;
    let now = g.run_ok("cat /proc/cmdline").map_err(|e| e.to_string())?;
    ensure(now == before, || now.clone())
}

#[test]
fn shared_memory_backend_identifies_patches_and_refuses_foreign_ram() {
    let _l = vm_lock();
    let flavour = Flavour::Amd64;
    let Some(mut cfg) = linuxpatch::config_with_headers(flavour, "shm-backend") else { return };
    cfg.shared_ram = true;
    cfg.extra_append.push("vsplice.agent=0".into());
    let Some(mut g) = Guest::boot_or_skip(cfg) else { return };
    let img = debian_images(flavour).unwrap();
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let text_link = image.kallsyms().first_addr("_text");
    let shm: ShmSpec = g.shared_ram().unwrap().spec(StopVia::Gdb);
    let addr = g.gdb_addr().unwrap().to_string();
    let mut failures = Vec::new();
    let f = &mut failures;

    // Identify through the file.
    let (proc_syms, _) = parse_proc_kallsyms(&g.run_ok("cat /proc/kallsyms").unwrap()).unwrap();
    let version = g.run_ok("cat /proc/version").unwrap();
    let mut attempt = 0;
    let (live, before, after) = loop {
        attempt += 1;
        let before = guest_tasks(&mut g).unwrap();
        let (a, s) = (addr.clone(), shm.clone());
        let t0 = std::time::Instant::now();
        let live = bounded(Duration::from_secs(300), move || live_view(a, Some(s), text_link)).and_then(|r| r);
        eprintln!("  attach + identify + task walk through the RAM file: {:?}", t0.elapsed());
        let after = guest_tasks(&mut g).unwrap();
        let settled = live.as_ref().is_ok_and(|l| tasks_match(&keys(&l.tasks), &before, &after).is_ok());
        if attempt == 3 || settled || live.is_err() {
            break (live, before, after);
        }
        eprintln!("  (task list changed under the walk; attempt {attempt} again)");
    };
    match live {
        Ok(live) => {
            check(f, "identify: kallsyms through the file equal /proc/kallsyms", symbols_equal(&live.symbols, &proc_syms));
            check(f, "identify: banner equals /proc/version", ensure(live.banner.as_deref() == Some(version.trim_end()), || format!("{:?}", live.banner)));
            check(f, "task walk through the file equals the guest's /proc", tasks_match(&keys(&live.tasks), &before, &after));
        }
        Err(e) => check(f, "identify through the file", Err(e)),
    }

    // Bad RAM files, refused before any write.
    let dir = tmp_dir("shm-bad");
    let small = dir.join("small.ram");
    std::fs::File::create(&small).unwrap().set_len(512 << 20).unwrap();
    check(f, "a file of the wrong size: shm_size_mismatch", refused(&mut g, &small, "shm_size_mismatch"));
    let zeros = dir.join("zeros.ram");
    std::fs::File::create(&zeros).unwrap().set_len(u64::from(g.config().mem_mib) << 20).unwrap();
    check(f, "zeros of the right size: shm_not_this_guest", refused(&mut g, &zeros, "shm_not_this_guest"));
    check(f, "the CLI refuses the zeros too", cli_refused(&g, &zeros, "shm_not_this_guest"));
    match other_guest() {
        Ok(other) => {
            let theirs = other.shared_ram().unwrap().mem_path.clone();
            check(f, "another running guest's RAM file: shm_not_this_guest", refused(&mut g, &theirs, "shm_not_this_guest"));
            drop(other);
        }
        Err(e) => check(f, "another guest to take a RAM file from", Err(e)),
    }
    let _ = std::fs::remove_dir_all(&dir);

    // Patches, observed running.
    let cmdline = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let before = g.run_ok("cat /proc/cmdline").unwrap();
    check(f, "apply + revert (stops through the gdbstub), patched code observed", apply_revert_observed(&mut g, StopVia::Gdb, &cmdline, &before));
    check(f, "apply + revert (stops through QMP stop/cont), patched code observed", apply_revert_observed(&mut g, StopVia::Qmp, &cmdline, &before));
    let nsleep = linuxpatch::build(&img, &image, &fixture("common_nsleep_copy.c")).unwrap();
    check(f, "code_busy names the task asleep in the target, then applies once it left", code_busy(&mut g, &nsleep));
    let version_patch = linuxpatch::build(&img, &image, &linuxpatch::example("version_marker.c")).unwrap();
    check(f, "readers see the old or the new text through 20 cycles", stress(&mut g, &version_patch));
    let cli_dir = tmp_dir("shm-cli");
    match linuxpatch::cli_build_example(&img, "cmdline_marker.c", &cli_dir) {
        Ok(vsp) => check(f, "the CLI applies and reverts with --mem-path --qmp", cli_apply_revert(&mut g, &vsp, &before)),
        Err(e) => check(f, "patch build through the CLI", Err(e)),
    }
    let _ = std::fs::remove_dir_all(&cli_dir);
    check(f, "guest answers, console clean", g.run_ok("echo alive").map_err(|e| e.to_string()).and_then(|o| {
        ensure(o == "alive\n", || o.clone())?;
        g.check_console().map_err(|e| e.to_string())
    }));
    assert!(failures.is_empty(), "{} check(s) failed:\n{}", failures.len(), failures.join("\n"));
}

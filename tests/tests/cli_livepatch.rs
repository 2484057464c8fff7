//! The live-patch entry points as a user runs them: `vsplice patch build` and
//! `info`, `vsplice run --live-patch` (applied once the guest kernel is up),
//! and `vsplice patch apply|list|revert|status --gdb` against the test guest
//! under QEMU's gdbstub.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vsplice_tests::testguest;
use vsplice_tests::{livepatch, skip};

fn vsplice(args: &[&str]) -> Output {
    let bin = testguest::vsplice_bin();
    assert!(bin.is_file(), "{} missing: run `cargo build --release -p vsplice-vmm` first", bin.display());
    Command::new(bin).args(args).stdin(Stdio::null()).output().expect("vsplice runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vsplice-cli-{}-{name}", std::process::id()))
}

fn build(kernel: &Path, src: &Path, out: &Path) {
    build_named(kernel, src, out, &src.file_stem().unwrap().to_string_lossy());
}

fn build_named(kernel: &Path, src: &Path, out: &Path, name: &str) {
    let o = vsplice(&["patch", "build", "--kernel", kernel.to_str().unwrap(), "--name", name, "-o", out.to_str().unwrap(), src.to_str().unwrap()]);
    assert!(o.status.success(), "build failed: {}", text(&o.stderr));
    let manifest = text(&o.stdout);
    assert!(manifest.contains("\"build_id\"") && manifest.contains("\"sha256\""), "{manifest}");
}

#[test]
fn run_with_live_patch_switches_every_task_and_reports_json() {
    let _g = testguest::vm_lock();
    if !testguest::ready("cli_live_patch") {
        return;
    }
    let kernel = testguest::image();
    let vsp = tmp("b2.vsp");
    build(&kernel, &livepatch::example("step_b_v2.c"), &vsp);
    let info = vsplice(&["patch", "info", vsp.to_str().unwrap()]);
    assert!(info.status.success() && text(&info.stdout).contains("\"name\": \"step_b_v2\""), "{}", text(&info.stdout));
    let out = vsplice(&[
        "run", "--kernel", kernel.to_str().unwrap(), "--vcpus", "2", "--memory", "64",
        "--cmdline", "tg.tasks=2 tg.iters=8 tg.wait=5", "--live-patch", vsp.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "status {:?}\n{stdout}\n{stderr}", out.status);
    let json = stderr.lines().find(|l| l.starts_with("vsplice: live-patch ")).unwrap_or_else(|| panic!("no result line:\n{stderr}"));
    assert!(json.contains("\"cause\":\"ok\"") && json.contains("\"downtime_us\""), "{json}");
    let lines = testguest::parse_all(&stdout).expect("no torn line");
    // Each task: old values, then patched ones to the end (the last line is patched).
    let mut last = std::collections::BTreeMap::new();
    for l in &lines {
        let new = l.value == livepatch::value_step_b_v2(l.iter);
        assert!(new || l.value == livepatch::value_orig(l.iter), "{l:?}");
        let was_new = last.insert((l.cpu, l.task), new).unwrap_or(false);
        assert!(!was_new || new, "old value after the switch: {l:?}");
    }
    assert_eq!(last.len(), 4);
    assert!(last.values().all(|&n| n), "a task ended unpatched:\n{stdout}");
    // A file that is not a patch: refused before the VM is built.
    let bad = vsplice(&["run", "--kernel", kernel.to_str().unwrap(), "--live-patch", kernel.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("[bad_patch]"), "{}", text(&bad.stderr));
    let _ = std::fs::remove_file(vsp);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// QEMU running the test guest (PVH entry) with a gdbstub; killed on drop.
struct Qemu(std::process::Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_file(path: &Path, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if pred(&std::fs::read_to_string(path).unwrap_or_default()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn attached_to_a_gdbstub_apply_list_revert_and_status_work_from_the_guest_registry() {
    let _g = testguest::vm_lock();
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        skip::skip("cli_gdb_attached", "qemu-system-x86_64 is not installed");
        return;
    }
    let kernel = testguest::workspace_root().join("target/images/testguest/testguest-pvh.elf");
    assert!(kernel.is_file(), "{} missing: run images/build-testguest.sh", kernel.display());
    let vsp = tmp("b2pvh.vsp");
    build(&kernel, &livepatch::example("step_b_v2.c"), &vsp);
    let serial = tmp("serial.txt");
    let port = free_port();
    let _qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "256", "-smp", "2", "-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-gdb")
            .arg(format!("tcp:127.0.0.1:{port}"))
            .arg("-kernel")
            .arg(&kernel)
            .args(["-append", "tg.tasks=2 tg.wait=2"])
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu starts"),
    );
    assert!(wait_file(&serial, Duration::from_secs(60), |s| s.contains("TG cpu=1 task=4 iter=2")), "guest did not run under QEMU");
    let gdb = format!("127.0.0.1:{port}");
    let attach = ["--gdb", gdb.as_str(), "--kernel", kernel.to_str().unwrap(), "--arena", "0x8000000:4M"];
    let run = |cmd: &[&str], extra: &[&str]| {
        let mut a: Vec<&str> = cmd.to_vec();
        a.extend_from_slice(&attach);
        a.extend_from_slice(extra);
        vsplice(&a)
    };
    let o = run(&["patch", "apply"], &[vsp.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("\"cause\":\"ok\""), "{}", text(&o.stdout));
    let mark = std::fs::read_to_string(&serial).unwrap().len();
    let patched = |s: &str| {
        let lines = testguest::parse_all(&s[mark.min(s.len())..]).unwrap_or_default();
        let tasks: std::collections::BTreeSet<u64> =
            lines.iter().filter(|l| l.value == livepatch::value_step_b_v2(l.iter)).map(|l| l.task).collect();
        tasks.len() == 4
    };
    assert!(wait_file(&serial, Duration::from_secs(60), patched), "not every task switched under QEMU");
    let o = run(&["patch", "list"], &[]);
    assert!(text(&o.stdout).contains("step_b_v2 Applied tg_step_b->tg_step_b_v2"), "{}", text(&o.stdout));
    // A second apply of the same patch: refused, exit code 3.
    let o = run(&["patch", "apply"], &[vsp.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("already_applied"));
    let o = run(&["patch", "revert"], &["step_b_v2"]);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    let mark2 = std::fs::read_to_string(&serial).unwrap().len();
    let original = |s: &str| {
        let lines = testguest::parse_all(&s[mark2.min(s.len())..]).unwrap_or_default();
        lines.iter().filter(|l| l.value == livepatch::value_orig(l.iter)).map(|l| l.task).collect::<std::collections::BTreeSet<_>>().len() == 4
    };
    assert!(wait_file(&serial, Duration::from_secs(60), original), "not every task switched back");
    let o = run(&["patch", "status"], &[]);
    let st = text(&o.stdout);
    assert!(st.contains("\"patches\": []") && st.contains("\"how\": \"reversed\"") && st.contains("\"intent\": null"), "{st}");
    let all = std::fs::read_to_string(&serial).unwrap();
    testguest::parse_all(&all).expect("no torn line");
    assert!(!all.contains("TG panic"), "{all}");
    let _ = std::fs::remove_file(vsp);
    let _ = std::fs::remove_file(serial);
}

const TWO_SITES: &str = "#include <vsplice.h>\ntypedef unsigned long u64;\nu64 tg_step_b(u64);\nu64 b2(u64 x) { return x * 0x10001 + 0x2b; }\nu64 a2(u64 x) { return tg_step_b(x) ^ 0xa5a4; }\nVSPLICE_REPLACE(tg_step_b, b2);\nVSPLICE_REPLACE(tg_step_a, a2);\n";

fn value_two_sites(iter: u64) -> u64 {
    ((iter * 0x10001 + 0x2b) ^ 0xa5a4) + 0x1000
}

fn serial_grows(path: &Path, during: Duration) -> bool {
    let a = std::fs::read_to_string(path).unwrap_or_default().len();
    std::thread::sleep(during);
    std::fs::read_to_string(path).unwrap_or_default().len() > a
}

#[test]
fn sigkill_at_every_write_of_an_attached_apply_and_revert_never_leaves_the_guest_running_half_patched() {
    use std::os::unix::process::ExitStatusExt;
    let _g = testguest::vm_lock();
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        skip::skip("cli_gdb_sigkill", "qemu-system-x86_64 is not installed");
        return;
    }
    let bin = testguest::vsplice_bin_with_fault_injection();
    let kernel = testguest::workspace_root().join("target/images/testguest/testguest-pvh.elf");
    let src = tmp("two_sites.c");
    std::fs::write(&src, TWO_SITES).unwrap();
    let vsp = tmp("two_sites.vsp");
    build_named(&kernel, &src, &vsp, "two_sites");
    let serial = tmp("serial-kill.txt");
    let port = free_port();
    let _qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "256", "-smp", "2", "-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-gdb")
            .arg(format!("tcp:127.0.0.1:{port}"))
            .arg("-kernel")
            .arg(&kernel)
            .args(["-append", "tg.tasks=2 tg.wait=1"])
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu starts"),
    );
    assert!(wait_file(&serial, Duration::from_secs(60), |s| s.contains("TG cpu=1 task=4 iter=2")), "guest did not run under QEMU");
    let gdb = format!("127.0.0.1:{port}");
    let attach = ["--gdb", gdb.as_str(), "--kernel", kernel.to_str().unwrap(), "--arena", "0x8000000:4M"];
    let run = |cmd: &[&str], extra: &[&str], kill: Option<usize>| {
        let mut a: Vec<&str> = cmd.to_vec();
        a.extend_from_slice(&attach);
        a.extend_from_slice(extra);
        let mut c = Command::new(&bin);
        c.args(&a).stdin(Stdio::null());
        if let Some(k) = kill {
            c.env("VSPLICE_FAULT_KILL_AFTER_WRITES", k.to_string());
        }
        c.output().expect("vsplice runs")
    };
    let mut seen = std::collections::BTreeSet::new();
    // One step = a killed apply (or revert), then status, recovery, and the check.
    let mut step = |op: &str, kill_at: usize| -> (bool, bool) {
        let arg = if op == "apply" { vsp.to_str().unwrap().to_owned() } else { "two_sites".to_owned() };
        let o = run(&["patch", op], &[&arg], Some(kill_at));
        let killed = o.status.signal() == Some(9);
        assert!(killed || o.status.success(), "{op} at {kill_at}: {}\n{}", text(&o.stdout), text(&o.stderr));
        let st = text(&run(&["patch", "status"], &[], None).stdout);
        for state in ["not_started", "partial", "complete"] {
            if st.contains(&format!("\"text\": \"{state}\"")) {
                seen.insert(format!("{op}:{state}"));
                if state == "partial" {
                    assert!(!serial_grows(&serial, Duration::from_millis(800)), "guest runs half-patched after a kill at write {kill_at}");
                }
            }
        }
        let o = run(&["patch", "status", "--recover"], &[], None);
        let st = text(&o.stdout);
        assert!(o.status.success() && st.contains("\"intent\": null"), "recovery after {op} killed at {kill_at}: {st}\n{}", text(&o.stderr));
        let applied = st.contains("\"name\": \"two_sites\"") && st.contains("\"state\": \"applied\"");
        if applied {
            assert!(!st.contains("\"active\": false"), "registry says applied but a jump is missing: {st}");
        }
        let len = std::fs::read_to_string(&serial).unwrap_or_default().len();
        assert!(wait_file(&serial, Duration::from_secs(20), |s| s.len() > len), "guest not running after recovery");
        (killed, applied)
    };
    let mut apply_writes = 0;
    for kill_at in 0..64 {
        let (killed, applied) = step("apply", kill_at);
        if !killed {
            assert!(applied);
            apply_writes = kill_at;
            break;
        }
        if applied {
            assert!(run(&["patch", "revert"], &["two_sites"], None).status.success());
        }
    }
    assert!(apply_writes >= 6, "apply took {apply_writes} writes");
    for kill_at in 0..64 {
        let (killed, applied) = step("revert", kill_at);
        if !killed {
            assert!(!applied);
            break;
        }
        if !applied {
            assert!(run(&["patch", "apply"], &[vsp.to_str().unwrap()], None).status.success());
        }
    }
    for want in ["apply:partial", "apply:complete", "apply:not_started", "revert:partial", "revert:complete", "revert:not_started"] {
        assert!(seen.contains(want), "never met {want}: {seen:?}");
    }
    let all = std::fs::read_to_string(&serial).unwrap();
    for l in testguest::parse_all(&all).expect("no torn line") {
        assert!(l.value == livepatch::value_orig(l.iter) || l.value == value_two_sites(l.iter), "half-patched value printed: {l:?}");
    }
    assert!(!all.contains("TG panic"), "{all}");
    let _ = std::fs::remove_file(vsp);
    let _ = std::fs::remove_file(serial);
}

#[test]
fn on_reboot_restart_boots_again_and_reapplies_live_patches() {
    let _g = testguest::vm_lock();
    if !testguest::ready("cli_reboot_reapply") {
        return;
    }
    let kernel = testguest::image();
    let vsp = tmp("reboot-b2.vsp");
    build(&kernel, &livepatch::example("step_b_v2.c"), &vsp);
    let (serial, errlog) = (tmp("reboot-serial.txt"), tmp("reboot-stderr.txt"));
    let mut child = Command::new(testguest::vsplice_bin())
        .args([
            "run", "--kernel", kernel.to_str().unwrap(), "--memory", "64", "--on-reboot", "restart",
            "--cmdline", "tg.tasks=2 tg.iters=6 tg.wait=5 tg.reboot",
            "--serial", &format!("file:{}", serial.display()), "--live-patch", vsp.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&errlog).unwrap())
        .spawn()
        .unwrap();
    // Boot 3 starting means boots 1 and 2 both ran to their reboot request.
    let ok = wait_file(&errlog, Duration::from_secs(120), |t| t.contains("starting boot 3"));
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&errlog).unwrap_or_default();
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(ok, "no third boot:\n{stderr}\n{console}");
    let applied = stderr.lines().filter(|l| l.starts_with("vsplice: live-patch ") && l.contains("\"cause\":\"ok\"")).count();
    assert!(applied >= 2, "the patch was not applied on every boot:\n{stderr}");
    // Each finished boot ends with every task running the patched function,
    // and the serial file kept the earlier boots (appended, not truncated).
    let boots: Vec<&str> = console.split("TG testguest boot_params").skip(1).collect();
    assert!(boots.len() >= 2, "serial lost boots:\n{console}");
    for (n, boot) in boots.iter().take(2).enumerate() {
        assert!(boot.contains("TG reboot"), "boot {n} did not reboot:\n{boot}");
        let lines = testguest::parse_all(boot).expect("no torn line");
        let mut last = std::collections::BTreeMap::new();
        for l in &lines {
            last.insert((l.cpu, l.task), l.value == livepatch::value_step_b_v2(l.iter));
        }
        assert!(!last.is_empty() && last.values().all(|&n| n), "boot {n} ended unpatched:\n{boot}");
    }
    for p in [vsp, serial, errlog] {
        let _ = std::fs::remove_file(p);
    }
}

//! The QEMU (TCG) harness itself against the stock Debian kernels: boot to
//! VSPLREADY, exact output and exit status of commands (empty, unterminated,
//! binary, large), both output encodings, both channels, time-outs that
//! leave the guest usable, and a clean console. Prints the boot time and the
//! time to pull /proc/kallsyms (benchmarks, not thresholds).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vsplice_tests::debian::Flavour;
use vsplice_tests::harness_error::HarnessError;
use vsplice_tests::qemu::{Channel, Guest, QemuConfig, RunOptions};
use vsplice_tests::testguest::vm_lock;

fn boot(cfg: QemuConfig) -> Guest {
    let g = Guest::boot(cfg).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}: ready in {:.1} s", g.config().label, g.boot_time().as_secs_f64());
    g
}

fn commands_round_trip(flavour: Flavour) {
    let _l = vm_lock();
    let mut g = boot(QemuConfig::debian(flavour, &format!("harness-{flavour}")).unwrap());
    let img = vsplice_tests::debian::debian_images(flavour).unwrap();

    assert_eq!(g.run_ok("uname -r").unwrap(), format!("{}\n", img.release));
    let o = g.run("echo out; echo err >&2; exit 7").unwrap();
    assert_eq!((o.text().as_str(), o.status), ("out\nerr\n", 7));
    assert_eq!(g.run("true").unwrap().bytes, b"");
    assert_eq!(g.run("printf 'no newline'").unwrap().bytes, b"no newline");
    assert_eq!(g.run("printf 'a\\n\\n'").unwrap().bytes, b"a\n\n");
    // Lines that look like protocol markers are just output.
    let o = g.run("echo VSPLREADY; echo 'VSPLEND c1 0'; echo VSPLBEGIN x").unwrap();
    assert_eq!(o.text(), "VSPLREADY\nVSPLEND c1 0\nVSPLBEGIN x\n");
    // Quoting survives (the script travels base64-encoded).
    assert_eq!(g.run_ok("x='a \"b\" $c'; echo \"$x\" '\\' \"`echo q`\"").unwrap(), "a \"b\" $c \\ q\n");
    // Every byte value comes through unchanged in raw mode.
    let o = g.run("i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done").unwrap();
    assert_eq!(o.bytes, (0..=255u8).collect::<Vec<_>>());
    // Environment set up by /init.
    assert_eq!(g.run_ok("cat /proc/sys/kernel/kptr_restrict").unwrap(), "0\n");
    assert!(g.run_ok("grep -c ' debugfs ' /proc/mounts").unwrap().trim() == "1");
    assert_eq!(g.run_ok("grep -o 'memmap=[^ ]*' /proc/cmdline").unwrap(), "memmap=0x400000$0x3f000000\n");
    assert!(!g.run_ok("cat /proc/cmdline").unwrap().contains("nokaslr"));

    // A large output, raw and gzip+base64: identical.
    let t = Instant::now();
    let raw = g.run("cat /proc/kallsyms").unwrap();
    let dt_raw = t.elapsed();
    let t = Instant::now();
    let gz = g.run_with("cat /proc/kallsyms", RunOptions::new(Duration::from_secs(120)).gz()).unwrap();
    let dt_gz = t.elapsed();
    let lines = raw.text().lines().count();
    eprintln!(
        "{flavour}: /proc/kallsyms {} bytes, {lines} lines: raw {:.2} s, gz {:.2} s",
        raw.bytes.len(),
        dt_raw.as_secs_f64(),
        dt_gz.as_secs_f64()
    );
    assert_eq!(raw.status, 0);
    assert_eq!(gz.status, 0);
    assert!(lines > 50_000, "{lines} lines");
    let wc: usize = g.run_ok("wc -l < /proc/kallsyms").unwrap().trim().parse().unwrap();
    assert_eq!(wc, lines);
    // gz mode keeps the status of the script, not of gzip.
    let o = g.run_with("echo x; exit 3", RunOptions::new(Duration::from_secs(30)).gz()).unwrap();
    assert_eq!((o.bytes.as_slice(), o.status), (&b"x\n"[..], 3));

    // A script that outlives the guest-side limit is killed there (137).
    let t = Instant::now();
    let o = g.run_with("echo started; sleep 60", RunOptions::new(Duration::from_secs(5))).unwrap();
    assert!(o.text().starts_with("started\n") && o.status == 137, "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // No reply within the host time-out: an error; the late reply is skipped
    // and the guest is still usable.
    let slow = RunOptions { guest_timeout: Some(Duration::ZERO), ..RunOptions::new(Duration::from_secs(2)) };
    let e = g.run_with("sleep 5; echo late", slow).unwrap_err();
    assert!(matches!(e, HarnessError::CommandTimeout { .. }), "{e}");
    assert_eq!(g.run_ok("echo still here").unwrap(), "still here\n");

    // The many-threads workload.
    g.run_ok("mthreads 50 mt >/tmp/mt.log 2>&1 & while ! grep -q ready /tmp/mt.log; do sleep 0.1; done").unwrap();
    let n = g.run_ok("ls /proc/$(pidof mthreads | cut -d' ' -f1)/task | wc -l").unwrap();
    assert_eq!(n.trim(), "51");
    g.check_console().unwrap();
}

#[test]
fn commands_round_trip_on_the_generic_kernel() {
    commands_round_trip(Flavour::Amd64);
}

#[test]
fn commands_round_trip_on_the_cloud_kernel() {
    commands_round_trip(Flavour::CloudAmd64);
}

#[test]
fn serial_channel_tcp_gdbstub_and_nokaslr_work_too() {
    let _l = vm_lock();
    let mut cfg = QemuConfig::debian(Flavour::CloudAmd64, "harness-serial").unwrap();
    cfg.channel = Channel::Serial;
    cfg.gdb = vsplice_tests::qemu::GdbListen::Tcp;
    cfg.kaslr = false;
    let mut g = boot(cfg);
    assert!(g.run_ok("readlink /proc/self/fd/1 || true").is_ok());
    assert!(g.run_ok("cat /proc/cmdline").unwrap().contains("nokaslr"));
    let t = Instant::now();
    let o = g.run_with("head -c 200000 /proc/kallsyms", RunOptions::new(Duration::from_secs(60))).unwrap();
    eprintln!("serial channel: 200000 bytes raw in {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(o.bytes.len(), 200_000);
    let addr = g.gdb_addr().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"));
    std::net::TcpStream::connect(&addr).expect("gdbstub listens on TCP");
    g.check_console().unwrap();
}

#[test]
fn a_guest_that_dies_is_reported_not_waited_for() {
    let _l = vm_lock();
    let mut g = boot(QemuConfig::debian(Flavour::CloudAmd64, "harness-poweroff").unwrap());
    let t = Instant::now();
    let e = g.run("poweroff -f").unwrap_err();
    assert!(matches!(e, HarnessError::QemuExited { .. } | HarnessError::Protocol(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn extra_modules_are_built_with_kbuild_and_loaded_in_order() {
    let _l = vm_lock();
    let img = vsplice_tests::debian::debian_images(Flavour::CloudAmd64).unwrap();
    let dir = vsplice_tests::scratch::tmp_dir("kmod");
    for m in ["vsplice_hello_a", "vsplice_hello_b"] {
        let src = format!(
            "#include <linux/module.h>\nstatic int __init i(void) {{ pr_info(\"{m} loaded\\n\"); return 0; }}\n\
             static void __exit e(void) {{}}\nmodule_init(i);\nmodule_exit(e);\nMODULE_LICENSE(\"GPL\");\n"
        );
        std::fs::write(dir.join(format!("{m}.c")), src).unwrap();
    }
    std::fs::write(dir.join("Kbuild"), "obj-m := vsplice_hello_a.o vsplice_hello_b.o\n").unwrap();
    std::fs::write(dir.join("junk.ko"), "not an ELF module\n").unwrap();
    let st = std::process::Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&img.headers)
        .arg(format!("M={}", dir.display()))
        .arg("modules")
        .status()
        .unwrap();
    assert!(st.success(), "Kbuild against {} failed", img.headers.display());
    let initrd = dir.join("initramfs.cpio.gz");
    let script = vsplice_tests::testguest::workspace_root().join("images/build-initramfs.sh");
    let st = std::process::Command::new("bash")
        .arg(script)
        .arg("--out")
        .arg(&initrd)
        .arg("cloud-amd64")
        .args(["vsplice_hello_b.ko", "junk.ko", "vsplice_hello_a.ko"].map(|m| dir.join(m)))
        .status()
        .unwrap();
    assert!(st.success());

    let mut cfg = QemuConfig::new("harness-modules", img.vmlinuz.clone(), Some(initrd));
    cfg.gdb = vsplice_tests::qemu::GdbListen::None;
    let mut g = boot(cfg);
    let c = g.console();
    let pos = |s: &str| c.find(s).unwrap_or_else(|| panic!("console lacks {s:?}"));
    assert!(pos("loaded vsplice_hello_b.ko") < pos("VSPLMODFAIL junk.ko"));
    assert!(pos("VSPLMODFAIL junk.ko") < pos("loaded vsplice_hello_a.ko"));
    let mods = g.run_ok("cut -d' ' -f1 /proc/modules").unwrap();
    assert!(mods.lines().any(|l| l == "vsplice_hello_a") && mods.lines().any(|l| l == "vsplice_hello_b"), "{mods}");
    let dmesg = g.run_ok("dmesg | grep -o 'vsplice_hello_[ab] loaded'").unwrap();
    assert_eq!(dmesg, "vsplice_hello_b loaded\nvsplice_hello_a loaded\n");
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

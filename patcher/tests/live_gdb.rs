//! Live test of the GDB backend and the kernel readers against the Debian
//! kernel booted by QEMU (TCG) with its gdbstub on a Unix socket. Skips
//! loudly when QEMU or the image (images/debian-kernels.sh) is missing.
//! The full comparisons with /proc/kallsyms etc. live in tests/.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::os::linux::image::ImageMemory;
use vsplice_patcher::os::linux::kernel::{self, LiveKernel};
use vsplice_patcher::os::linux::tasks::{self, TaskOffsets};

fn skip(why: &str) {
    eprintln!("\n*** SKIPPED live_gdb: {why} ***\n");
}

struct Qemu {
    child: Child,
    dir: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn boot(image_dir: &Path) -> Option<(Qemu, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("vsplice-live-gdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let sock = dir.join("gdb.sock");
    let console = dir.join("console.log");
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-smp", "2", "-m", "1024", "-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(image_dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(image_dir.join("initramfs.cpio.gz"))
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-gdb")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let q = Qemu { child, dir };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("Run /init") || log.contains("VSPLREADY") {
            std::thread::sleep(Duration::from_secs(2));
            return Some((q, sock));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn live_debian_kernel_over_gdbstub() {
    let image_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/debian-amd64");
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        return skip("qemu-system-x86_64 not installed");
    }
    if !image_dir.join("vmlinuz").exists() || !image_dir.join("initramfs.cpio.gz").exists() {
        return skip("target/images/debian-amd64 missing (run images/debian-kernels.sh)");
    }
    let (_qemu, sock) = boot(&image_dir).expect("guest did not boot within 120 s");

    // Offline identity first, for the cross-check.
    let mut img = ImageMemory::open(&image_dir.join("vmlinuz")).unwrap();
    let offline = kernel::open_image(&mut img).unwrap();

    let mut be = GdbBackend::connect(sock.to_str().unwrap(), GdbOptions::default()).unwrap();
    let vcpus = be.stop().unwrap();
    assert_eq!(vcpus.len(), 2);
    assert!(vcpus.iter().all(|v| v.long_mode() && v.lstar.is_none()));

    let t = Instant::now();
    let mut lk = LiveKernel::open(&mut be, vcpus.clone(), offline.kallsyms.first_addr("_text")).unwrap();
    eprintln!("identify: {:?} ({:?})", t.elapsed(), lk.info.timings);
    let slide = lk.info.slide.clone().unwrap();
    assert_eq!(slide.virt % 0x20_0000, 0, "slide is 2 MiB aligned");
    assert_eq!(slide.phys_base % 0x20_0000, 0);
    assert_eq!(lk.info.kallsyms.len(), offline.kallsyms.len());
    assert_eq!(lk.info.build_id, offline.build_id);
    assert_eq!(lk.info.banner, offline.banner);
    // Every symbol moved by the slide (kernel symbols) or not at all (per-CPU).
    for (a, b) in lk.info.kallsyms.symbols().iter().zip(offline.kallsyms.symbols()).step_by(97) {
        assert_eq!(a.name, b.name);
        assert!(a.addr == b.addr || a.addr == b.addr.wrapping_add(slide.virt), "{}", a.name);
    }

    let (btf, _, _) = lk.info.btf.as_ref().unwrap();
    let off = TaskOffsets::from_btf(btf).unwrap();
    let t = Instant::now();
    let list = tasks::all_tasks(&mut lk.vm, &lk.info.kallsyms, &off).unwrap();
    eprintln!("task walk: {} tasks in {:?}", list.len(), t.elapsed());
    assert!(list.iter().any(|t| t.pid == 1));
    assert_eq!(list.iter().filter(|t| t.pid == 0).count(), 2, "one idle task per CPU");
    assert!(list.iter().all(|t| t.stack % 0x4000 == 0 || t.pid == 0));
    let cur = tasks::current_tasks(&mut lk.vm, &lk.info.kallsyms, &vcpus).unwrap();
    for (v, cpu, task) in &cur {
        assert!(list.iter().any(|t| t.addr == *task), "vcpu {v} (cpu {cpu}) runs a task not in the list");
    }

    // A write through the gdbstub, read back, then restored.
    let banner = lk.info.kallsyms.first_addr("linux_banner").unwrap();
    let pa = lk.vm.virt_to_phys(banner).unwrap();
    drop(lk);
    let mut orig = [0u8; 5];
    be.read_phys(pa, &mut orig).unwrap();
    assert_eq!(&orig, b"Linux");
    be.write_phys(pa, b"LINUX").unwrap();
    let mut now = [0u8; 5];
    be.read_phys(pa, &mut now).unwrap();
    assert_eq!(&now, b"LINUX");
    be.write_phys(pa, &orig).unwrap();

    // Resume and stop again (the interrupt path), then detach.
    be.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let again = be.stop().unwrap();
    assert_eq!(again.len(), 2);
    let mut b = [0u8; 5];
    be.read_phys(pa, &mut b).unwrap();
    assert_eq!(&b, b"Linux");
    be.detach().unwrap();

    // Without QEMU's physical mode: the direct map found through virtual
    // reads gives the same kernel.
    let opts = GdbOptions { phys_mode: false, ..GdbOptions::default() };
    let t = Instant::now();
    let (mut be, vcpus) = vsplice_patcher::attach::attach_gdb(sock.to_str().unwrap(), opts).unwrap();
    eprintln!("attach without physical mode (direct-map discovery): {:?}", t.elapsed());
    let lk = LiveKernel::open(&mut be, vcpus, offline.kallsyms.first_addr("_text")).unwrap();
    assert_eq!(lk.info.slide.as_ref(), Some(&slide));
    assert_eq!(lk.info.kallsyms.len(), offline.kallsyms.len());
    drop(lk);
    be.detach().unwrap();
}

//! Numbers for issue 12, item 1: the same 2-vCPU Debian guest under QEMU
//! (TCG), booted once with its RAM as a shared file and a QMP socket,
//! patched through three backends in the same run:
//!
//! - `gdbstub`: everything through the gdbstub (the RAM file unused);
//! - `shm+gdb-stop`: memory through the RAM file, stop/resume/registers
//!   through the gdbstub;
//! - `shm+qmp-stop`: memory through the RAM file, QMP `stop`/`cont`, the
//!   gdbstub for registers.
//!
//! - `shm,stop-reads`: `shm+gdb-stop` with every read taking a stop while
//!   the guest runs, as through the gdbstub (reads from the file while the
//!   guest runs turned off).
//!
//! For each: attach + identify (connect, stop, [map and check the file],
//! identify the kernel, detach), the bare stop (with every vCPU's
//! registers) + resume round trip, and the downtime of apply and of revert
//! of example 1 (`cmdline_marker.c`) with the pause's parts, p50 and max
//! (and `tasks cold`: the task list read alone with the guest stopped and
//! no hint where the agent is, as the first pause after an attach reads it;
//! later pauses reuse the agent's address)
//! over the rounds, with the preparation's time and the number of stops of
//! the running guest per apply (its pause and the short stops for memory
//! accesses). The rounds of the three backends are interleaved so
//! that the host's load falls on all of them alike.
//!
//! At the end, once: the patch written into the RAM file behind QEMU's back
//! (the route kept for KVM) right after the guest ran the old code, and
//! what the guest prints then — why writes go through the gdbstub under TCG.
//!
//! `cargo run --release -p vsplice-tests --example shm_numbers -- [ROUNDS]`
//! (default 20; needs the Debian images, see images/debian-kernels.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vsplice_patcher::attach::attach_gdb_shm;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::kernels::stock_linux::LinuxTarget;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::Backend;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::shm::{ShmSpec, StopVia, WriteRoute};
use vsplice_patcher::txn::{Timings, TxnReport};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, QemuConfig};

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Gdb,
    ShmStoppedReads,
    ShmGdbStop,
    ShmQmpStop,
}

impl Way {
    const ALL: [Way; 4] = [Way::Gdb, Way::ShmStoppedReads, Way::ShmGdbStop, Way::ShmQmpStop];
    fn name(self) -> &'static str {
        match self {
            Way::Gdb => "gdbstub",
            Way::ShmStoppedReads => "shm,stop-reads",
            Way::ShmGdbStop => "shm+gdb-stop",
            Way::ShmQmpStop => "shm+qmp-stop",
        }
    }
    fn spec(self, g: &Guest) -> Option<ShmSpec> {
        let r = g.shared_ram()?;
        match self {
            Way::Gdb => None,
            Way::ShmStoppedReads | Way::ShmGdbStop => Some(r.spec(StopVia::Gdb)),
            Way::ShmQmpStop => Some(r.spec(StopVia::Qmp)),
        }
    }
}

#[derive(Default)]
struct Samples {
    attach_us: Vec<u64>,
    roundtrip_us: Vec<u64>,
    /// The task list alone, read with the guest stopped and no agent hint.
    tasks_us: Vec<u64>,
    apply: Vec<Timings>,
    /// Stops of the running guest per apply (its pauses and the short
    /// stops for memory accesses while preparing).
    apply_stops: Vec<u64>,
    revert: Vec<Timings>,
    /// The bare resume alone (the `vCont;c` or QMP `cont` sent).
    resume_us: Vec<u64>,
    /// Bare resumes during which this thread was switched out involuntarily.
    resume_preempted: u64,
}

/// Involuntary context switches of this thread so far.
fn involuntary_switches() -> i64 {
    // SAFETY: getrusage writes one `rusage` we own; RUSAGE_THREAD is valid on Linux.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `u` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) } != 0 {
        return 0;
    }
    u.ru_nivcsw
}

fn p50(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}

fn max(v: &[u64]) -> u64 {
    v.iter().copied().max().unwrap_or(0)
}

fn attach(g: &Guest, way: Way) -> (GdbBackend, LinuxTarget) {
    let opts = GdbOptions { timeout: Duration::from_secs(20), ..GdbOptions::default() };
    let (mut be, vcpus) = attach_gdb_shm(g.gdb_addr().unwrap(), opts, way.spec(g).as_ref()).unwrap();
    let t = LinuxTarget::open(&mut be, vcpus).unwrap();
    if let Some(p) = be.shared_mut() {
        p.set_reads_while_running(way != Way::ShmStoppedReads);
    }
    (be, t)
}

fn ok(r: TxnReport) -> Timings {
    assert!(r.is_ok(), "{}", r.to_json());
    r.timings
}

/// The hazard the gdbstub write route avoids: the patch written into the
/// RAM file behind QEMU's back (as under KVM) right after the guest ran the
/// old code. Returns what the guest printed right after that apply (the
/// marker: QEMU happened to retranslate; the old line: it ran its stale
/// translation of the patched function). The revert goes through the
/// gdbstub, which invalidates.
fn file_writes_under_tcg(g: &mut Guest, patch: &vsplice_patcher::patch::PatchFile) -> String {
    let (be, target) = attach(g, Way::ShmGdbStop);
    let mut be = vsplice_patcher::arch::x86::guest::AutoStop(be);
    be.resume().unwrap();
    for _ in 0..3 {
        g.run_ok("cat /proc/cmdline").unwrap();
    }
    be.0.shared_mut().unwrap().set_write_route(WriteRoute::File);
    ok(linuxpatch::patcher(g, &mut be, &target).apply(patch));
    let seen = g.run_ok("cat /proc/cmdline").unwrap();
    be.0.shared_mut().unwrap().set_write_route(WriteRoute::Stub);
    ok(linuxpatch::patcher(g, &mut be, &target).revert(&patch.manifest.id));
    be.0.detach().unwrap();
    seen
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map(|s| s.parse().expect("ROUNDS")).unwrap_or(20);
    let flavour = Flavour::Amd64;
    let img = debian_images(flavour).unwrap();
    let mut cfg = QemuConfig::debian(flavour, "shm-numbers").unwrap();
    cfg.shared_ram = true;
    let mut g = Guest::boot(cfg).unwrap();
    let agent = g.run_ok("grep -c '^vsplice_agent ' /proc/modules || true").unwrap().trim() == "1";
    eprintln!("{} ready in {:.1} s, 2 vCPUs, TCG, agent loaded: {agent}", img.release, g.boot_time().as_secs_f64());
    let image = LinuxImage::open(&img.vmlinuz).unwrap();
    let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
    let marked = format!("{} vsplice.marker=cmdline\n", g.run_ok("cat /proc/cmdline").unwrap().trim_end());

    let mut s: Vec<Samples> = Way::ALL.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        for (i, way) in Way::ALL.into_iter().enumerate() {
            // Attach + identify, then detach (what each `vsplice patch` command pays).
            let t0 = Instant::now();
            let (be, _t) = attach(&g, way);
            be.detach().unwrap();
            s[i].attach_us.push(t0.elapsed().as_micros() as u64);

            let (be, target) = attach(&g, way);
            let mut be = vsplice_patcher::arch::x86::guest::AutoStop(be);
            be.resume().unwrap();
            // The bare pause: stop with every vCPU's registers, resume.
            for _ in 0..3 {
                let t = Instant::now();
                be.stop().unwrap();
                let (r, n) = (Instant::now(), involuntary_switches());
                be.resume().unwrap();
                s[i].resume_us.push(r.elapsed().as_micros() as u64);
                s[i].resume_preempted += u64::from(involuntary_switches() > n);
                s[i].roundtrip_us.push(t.elapsed().as_micros() as u64);
            }
            // The task list alone, as the pause reads it (part of `check`).
            {
                let vcpus = be.stop().unwrap();
                let mut mem = vsplice_patcher::arch::x86::guest::Guest::new(&mut be, target.page_table_root(), target.paging_mode().cr4_bits());
                let t = Instant::now();
                let tasks = target.tasks(&mut mem, &vcpus, None).unwrap();
                s[i].tasks_us.push(t.elapsed().as_micros() as u64);
                assert!(!tasks.list.tasks.is_empty());
                drop(mem);
                be.resume().unwrap();
            }
            let before = be.0.stops();
            {
                let mut p = linuxpatch::patcher(&g, &mut be, &target);
                s[i].apply.push(ok(p.apply(&patch)));
            }
            s[i].apply_stops.push(be.0.stops() - before);
            // The patched code runs (checked every few rounds to keep the run short).
            if round % 5 == 0 {
                assert_eq!(g.run_ok("cat /proc/cmdline").unwrap(), marked, "{} round {round}", way.name());
            }
            {
                let mut p = linuxpatch::patcher(&g, &mut be, &target);
                s[i].revert.push(ok(p.revert(&patch.manifest.id)));
            }
            be.0.detach().unwrap();
        }
        eprint!(".");
    }
    eprintln!();
    let seen = file_writes_under_tcg(&mut g, &patch);
    let back = g.run_ok("cat /proc/cmdline").unwrap();
    g.check_console().unwrap();

    println!("{rounds} rounds, Debian {} under QEMU TCG, 2 vCPUs, same guest, same run (us):", img.release);
    println!("{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}", "backend", "attach p50", "stop+res", "apply p50", "apply max", "pause", "check", "write", "resume", "revert p50", "tasks cold", "prepare", "stops", "bare res", "preempted");
    for (i, way) in Way::ALL.into_iter().enumerate() {
        let x = &s[i];
        let col = |f: fn(&Timings) -> u64| p50(&x.apply.iter().map(f).collect::<Vec<_>>());
        let down: Vec<u64> = x.apply.iter().map(|t| t.downtime_us).collect();
        let rdown: Vec<u64> = x.revert.iter().map(|t| t.downtime_us).collect();
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            way.name(),
            p50(&x.attach_us),
            p50(&x.roundtrip_us),
            p50(&down),
            max(&down),
            col(|t| t.pause_us),
            col(|t| t.check_us),
            col(|t| t.write_us),
            col(|t| t.resume_us),
            p50(&rdown),
            p50(&x.tasks_us),
            col(|t| t.prepare_us),
            p50(&x.apply_stops),
            p50(&x.resume_us),
            format!("{}/{}", x.resume_preempted, x.resume_us.len())
        );
    }
    println!(
        "patch written into the RAM file under TCG (no invalidation): the guest then printed {} ({seen:?}); after the revert through the gdbstub: {}",
        if seen == marked { "the new text" } else { "the OLD text: stale translation" },
        if back == marked { "still patched (!)" } else { "the original" }
    );
}

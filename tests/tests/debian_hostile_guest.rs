//! Issue 11, a hostile guest cannot hurt the host, against a running stock
//! Debian kernel under QEMU (TCG): one boot, then each corruption in turn,
//! written into the guest's real memory through its gdbstub by
//! [`Corrupting`] (after every stop; the guest's own bytes are put back
//! before every resume, so the guest never runs corrupted). vsplice's
//! ordinary code reads it: identification (`LinuxTarget::open`, as every
//! `vsplice patch` command does at attach) and an apply transaction
//! (`Patcher::apply`, the path `vsplice patch apply` takes: the guest
//! running between short stops, then the pauses with the task walk).
//!
//! Each case must end in its named refusal (a stable cause name) within a
//! generous time bound (measured and printed), with no patch written (the
//! target function's bytes unchanged, no registry entry, `/proc/cmdline`
//! without the patch's marker), every corrupted place holding the guest's
//! bytes again, and the guest answering a command on its console. At the
//! end the same patch applies and reverts on the clean guest, so the
//! refusals were the corruptions', not the patch's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod hostile;

use std::time::{Duration, Instant};

use common::bounded;
use vsplice_patcher::arch::x86::guest::{AutoStop, Guest as GuestMem};
use vsplice_patcher::attach::attach_gdb;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::kernels::stock_linux::LinuxTarget;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::{Backend, VcpuState};
use vsplice_patcher::model::phys_filter::ARCH_DEVICE_WINDOW;
use vsplice_patcher::model::{ArenaRange, KernelMemory};
use vsplice_patcher::os::linux::agent::layout::{vsa_sum, HEADER_SIZE};
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::testing::{Corrupting, Corruption};
use hostile::{cases, places, read_phys, Case, Phase, Places};
use vsplice_patcher::txn::{Patcher, TxnConfig};
use vsplice_tests::debian::{debian_images, Flavour};
use vsplice_tests::linuxpatch;
use vsplice_tests::qemu::{Guest, RunOptions};
use vsplice_tests::testguest::vm_lock;

/// `header_sum`: the last word of the agent's header, over the words before it.
const HEADER_SUM: usize = HEADER_SIZE - 8;

/// Generous bound on one refusal (identification reads tens of MiB through
/// the gdbstub of an emulated guest; a task-list refusal retries 20 pauses).
const REFUSAL_BOUND: Duration = Duration::from_secs(600);
type Be = Corrupting<GdbBackend>;

fn connect(g: &Guest) -> (Be, Vec<VcpuState>) {
    let opts = GdbOptions { timeout: Duration::from_secs(60), ..GdbOptions::default() };
    let (be, vcpus) = attach_gdb(g.gdb_addr().unwrap(), opts).unwrap_or_else(|e| panic!("attach: {e} ({})", e.cause()));
    (Corrupting::new(be, true), vcpus)
}

/// Runs one case on a fresh attach; the cause name and the time to refuse.
fn run_case(g: &Guest, case: &Case, patch: &PatchFile, arena: ArenaRange, hole: u64) -> (String, Duration, Be) {
    let (mut be, vcpus) = connect(g);
    match case.agent_header {
        None => be.arm(case.plan.clone()).unwrap(),
        Some(at) => {
            let plan = case.plan.clone();
            be.arm_with(Box::new(move |b: &mut GdbBackend| {
                let mut h = vec![0u8; HEADER_SIZE];
                b.read_phys(at, &mut h)?;
                for c in &plan {
                    let off = (c.gpa - at) as usize;
                    h[off..off + c.bytes.len()].copy_from_slice(&c.bytes);
                }
                let sum = vsa_sum(&h[..HEADER_SUM]);
                let mut out = plan.clone();
                out.push(Corruption { gpa: at + HEADER_SUM as u64, bytes: sum.to_le_bytes().to_vec() });
                Ok(out)
            }))
            .unwrap()
        }
    }
    // No access of vsplice's may reach device memory or the hole.
    be.watch(ARCH_DEVICE_WINDOW);
    be.watch(hole..hole + (2 << 20));
    let (phase, patch, agent_only) = (case.phase, patch.clone(), case.agent_only);
    let out = bounded(REFUSAL_BOUND + Duration::from_secs(60), move || {
        let t0 = Instant::now();
        let mut target = match LinuxTarget::open(&mut be, vcpus) {
            Ok(t) => t,
            Err(e) => return (e.cause().to_string(), t0.elapsed(), be),
        };
        if phase == Phase::Unwinder {
            let parts: Vec<String> = target.orc_refused().iter().map(|(what, cause)| format!("{what}:{cause}")).collect();
            return (format!("identified/{}", parts.join(",")), t0.elapsed(), be);
        }
        assert_eq!(phase, Phase::Apply, "identification should have been refused");
        if agent_only {
            target.set_task_source(TaskSource::Agent);
        }
        // As `vsplice patch apply`: the guest runs, accesses take short stops.
        be.resume().unwrap();
        let mut auto = AutoStop(&mut be);
        let report = Patcher::new(&mut auto, &target as &dyn TargetKernel, TxnConfig::new(arena)).apply(&patch);
        let name = format!("{}/{}", report.cause.name(), report.reason.as_deref().unwrap_or("-"));
        eprintln!("    report: {name} after {} pause(s): {}", report.timings.attempts, report.message);
        (name, t0.elapsed(), be)
    });
    out.unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

fn assert_runs(g: &mut Guest, after: &str) {
    let r = g.run_with("echo alive", RunOptions::new(Duration::from_secs(60)));
    match r {
        Ok(o) if o.text().contains("alive") => {}
        Ok(o) => panic!("after {after}: unexpected answer {:?}", o.text()),
        Err(e) => panic!("after {after}: the guest does not answer: {e}"),
    }
}

/// One booted guest under test: its clean state and what each case is
/// compared with.
struct Bench {
    g: Guest,
    patch: PatchFile,
    arena: ArenaRange,
    cmdline: String,
    p: Places,
    target: LinuxTarget,
    root: u64,
    cr4: u64,
    clean_open: Duration,
    /// `(case, cause, time to refuse)`.
    results: Vec<(&'static str, String, Duration)>,
}

impl Bench {
    /// Builds the patch and reads the clean guest.
    fn new(g: Guest) -> Self {
        let img = debian_images(Flavour::Amd64).unwrap();
        let image = LinuxImage::open(&img.vmlinuz).unwrap();
        let patch = linuxpatch::build(&img, &image, &linuxpatch::example("cmdline_marker.c")).unwrap();
        let a = g.arena().unwrap();
        let arena = ArenaRange::new(a.base, a.size).unwrap();
        let mut g = g;
        let cmdline = g.run_ok("cat /proc/cmdline").unwrap();
        let (mut be, vcpus) = connect(&g);
        let t0 = Instant::now();
        let target = LinuxTarget::open(&mut be, vcpus.clone()).unwrap();
        let clean_open = t0.elapsed();
        let p = places(&mut be, &vcpus, &target);
        for i in [509, 510, 511] {
            assert_eq!(read_phys(&mut be, p.pd + 8 * i, 8), [0; 8], "page-directory slot {i} is not free on this boot");
        }
        eprintln!("clean identification: {:.2} s; places {p:x?}", clean_open.as_secs_f64());
        be.into_inner().unwrap().detach().unwrap();
        Self { g, patch, arena, cmdline, p, root: target.page_table_root(), target, cr4: vcpus[0].cr4, clean_open, results: Vec::new() }
    }

    /// Runs every case, each on a fresh attach, and checks what it left.
    fn run(&mut self, cases: &[Case]) {
        let (mut be, _) = connect(&self.g);
        // The guest's own bytes at every place, to compare after each case.
        let originals: Vec<Vec<(u64, Vec<u8>)>> =
            cases.iter().map(|c| c.plan.iter().map(|x| (x.gpa, read_phys(&mut be, x.gpa, x.bytes.len()))).collect()).collect();
        be.into_inner().unwrap().detach().unwrap();
        for (case, orig) in cases.iter().zip(&originals) {
            eprintln!("case {}: {}", case.name, case.what);
            let (cause, took, mut be) = run_case(&self.g, case, &self.patch, self.arena, self.p.hole);
            eprintln!("  refused {cause} in {:.2} s (bound {} s); corrupted at {} stops", took.as_secs_f64(), REFUSAL_BOUND.as_secs(), be.armed_stops);
            assert!(case.causes.contains(&cause.as_str()), "{}: cause {cause}, expected one of {:?}", case.name, case.causes);
            assert!(took < REFUSAL_BOUND, "{}: {took:?}", case.name);
            assert!(be.armed_stops >= 1, "{}: the corruption was never in memory", case.name);
            assert!(be.watched_accesses.is_empty(), "{}: device memory or the hole accessed: {:x?}", case.name, be.watched_accesses);
            // The guest's bytes are back, byte for byte, and no patch was written.
            be.disarm().unwrap();
            be.stop().unwrap();
            for (gpa, bytes) in orig.iter().filter(|_| case.agent_header.is_none() && !case.agent_only) {
                assert_eq!(&read_phys(&mut be, *gpa, bytes.len()), bytes, "{}: {gpa:#x} not restored", case.name);
            }
            let mut mem = GuestMem::new(&mut be, self.root, self.cr4);
            assert_eq!(mem.read_vec(self.p.func, 32).unwrap(), self.p.func_bytes, "{}: the function's text changed", case.name);
            let mut raw = be.into_inner().unwrap();
            let status = Patcher::new(&mut raw, &self.target as &dyn TargetKernel, TxnConfig::new(self.arena)).status().unwrap();
            assert!(status.patches.is_empty() && status.intent.is_none(), "{}: {}", case.name, status.to_json());
            raw.detach().unwrap();
            assert_runs(&mut self.g, case.name);
            assert_eq!(self.g.run_ok("cat /proc/cmdline").unwrap(), self.cmdline, "{}: the patch is live", case.name);
            self.results.push((case.name, cause, took));
        }
    }

    /// The control: the same patch on the clean guest applies and reverts
    /// (the refusals were the corruptions'); then the table of times.
    fn finish(mut self, source: TaskSource) {
        let (mut be, mut target) = linuxpatch::attach(&self.g).unwrap();
        target.set_task_source(source);
        let report = linuxpatch::patcher(&self.g, &mut be, &target).apply(&self.patch);
        assert!(report.is_ok(), "the clean guest: {}", report.to_json());
        assert!(self.g.run_ok("cat /proc/cmdline").unwrap().contains("vsplice.marker=cmdline"));
        let report = linuxpatch::patcher(&self.g, &mut be, &target).revert(&self.patch.manifest.id);
        assert!(report.is_ok(), "{}", report.to_json());
        linuxpatch::detach(be).unwrap();
        assert_eq!(self.g.run_ok("cat /proc/cmdline").unwrap(), self.cmdline);
        eprintln!("\nhostile-guest refusals (clean identification {:.2} s):", self.clean_open.as_secs_f64());
        for (name, cause, took) in &self.results {
            eprintln!("  {name:<30} {cause:<38} {:>7.2} s", took.as_secs_f64());
        }
        self.g.check_console().unwrap();
    }
}

#[test]
fn each_corruption_is_a_named_refusal_and_the_guest_runs_on() {
    let _l = vm_lock();
    let label = "hostile_guest";
    let Some(mut cfg) = linuxpatch::config_with_headers(Flavour::Amd64, label) else { return };
    cfg.extra_append.push("vsplice.agent=0".into());
    let Some(g) = Guest::boot_or_skip(cfg) else { return };
    let mut b = Bench::new(g);
    let cases = cases(&b.p);
    b.run(&cases);
    b.finish(TaskSource::Auto);
}

/// The guest agent's descriptor, read with `--tasks agent`: a header whose
/// checksum does not match (garbage), and one claiming 2^32-1 tasks with
/// its checksum recomputed, are both refused `agent_corrupt` before the
/// table is read.
#[test]
fn a_garbage_agent_descriptor_is_refused_by_name() {
    let _l = vm_lock();
    let label = "hostile_agent";
    let g = match linuxpatch::boot_with_agent(Flavour::Amd64, label) {
        None => return,
        Some(r) => r.unwrap_or_else(|e| panic!("{e}")),
    };
    let mut b = Bench::new(g);
    // Where the descriptor is: the clean agent's own answer.
    let (mut be, vcpus) = connect(&b.g);
    let mut target = LinuxTarget::open(&mut be, vcpus.clone()).unwrap();
    target.set_task_source(TaskSource::Agent);
    let mut mem = GuestMem::new(&mut be, b.root, b.cr4);
    let tasks = target.tasks(&mut mem, &vcpus, None).unwrap();
    assert_eq!(tasks.source, "agent+agentless", "the agent is used");
    let at = tasks.source_at.expect("the agent's descriptor address");
    let gpa = mem.virt_to_phys(at).unwrap();
    be.into_inner().unwrap().detach().unwrap();
    let garbage: Vec<u8> = (0..HEADER_SUM - 0x18).map(|i| (i as u8).wrapping_mul(151) ^ 0x5a).collect();
    let cases = [
        Case {
            name: "agent_header_garbage",
            what: "the agent's header after its magic and version overwritten with garbage",
            phase: Phase::Apply,
            agent_only: true,
            agent_header: None,
            plan: vec![Corruption { gpa: gpa + 0x18, bytes: garbage }],
            causes: &["unexpected/agent_corrupt"],
        },
        Case {
            name: "agent_task_count_absurd",
            what: "the agent's header claims 2^32-1 tasks (capacity too), its checksum recomputed",
            phase: Phase::Apply,
            agent_only: true,
            agent_header: Some(gpa),
            // task_cap and task_count.
            plan: vec![Corruption { gpa: gpa + 0x58, bytes: [u32::MAX.to_le_bytes(), u32::MAX.to_le_bytes()].concat() }],
            causes: &["unexpected/agent_corrupt"],
        },
    ];
    b.run(&cases);
    b.finish(TaskSource::Agent);
}

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

use std::time::{Duration, Instant};

use common::bounded;
use vsplice_patcher::arch::x86::guest::{AutoStop, Guest as GuestMem};
use vsplice_patcher::attach::attach_gdb;
use vsplice_patcher::gdb::{GdbBackend, GdbOptions};
use vsplice_patcher::kernels::stock_linux::LinuxTarget;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::{Backend, VcpuState};
use vsplice_patcher::model::phys_filter::ARCH_DEVICE_WINDOW;
use vsplice_patcher::model::{ArenaRange, KernelMemory, RamKind};
use vsplice_patcher::os::linux::agent::layout::{vsa_sum, HEADER_SIZE};
use vsplice_patcher::os::linux::view::TaskSource;
use vsplice_patcher::patch::linux_image::LinuxImage;
use vsplice_patcher::patch::PatchFile;
use vsplice_patcher::testing::{Corrupting, Corruption};
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
/// `_PAGE_PRESENT | _PAGE_RW`, and `_PAGE_PSE` for a 2 MiB page.
const PDE_TABLE: u64 = 0x3;
const PDE_2M: u64 = 0x83;
/// The kernel image's page directory maps 1 GiB from `__START_KERNEL_map`;
/// its last three slots (below `MODULES_VADDR`) are free on a booted kernel.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
fn slot_va(i: u64) -> u64 {
    START_KERNEL_MAP + (i << 21)
}

type Be = Corrupting<GdbBackend>;

fn connect(g: &Guest) -> (Be, Vec<VcpuState>) {
    let opts = GdbOptions { timeout: Duration::from_secs(60), ..GdbOptions::default() };
    let (be, vcpus) = attach_gdb(g.gdb_addr().unwrap(), opts).unwrap_or_else(|e| panic!("attach: {e} ({})", e.cause()));
    (Corrupting::new(be, true), vcpus)
}

/// Where things are on this boot (read once from the clean guest).
#[derive(Debug, Clone)]
struct Places {
    /// Physical address of `task1.tasks.next` and `task2.tasks.next`
    /// (task1: the first task after `init_task`; task2: the next).
    t1_next: u64,
    t2_next: u64,
    /// `&task1.tasks` (a kernel-virtual list node).
    t1_node: u64,
    /// `&task1.thread_node` and the physical address of its `next`.
    t1_thread: u64,
    t1_thread_next: u64,
    /// Physical address of `level2_kernel_pgt` and `level3_kernel_pgt`.
    pd: u64,
    pud: u64,
    /// `kallsyms_num_syms`, `nr_cpu_ids`, `kallsyms_token_table` (physical) and the table's length.
    num_syms: u64,
    nr_cpu_ids: u64,
    token_table: u64,
    token_len: usize,
    /// Physical address of `__start_orc_unwind_ip`.
    orc_ip: u64,
    /// The first module's list node and the physical address of its
    /// `list.next` (`None`: no module loaded).
    module: Option<(u64, u64)>,
    /// A 2 MiB-aligned guest-physical address in no e820 entry (the PCI hole).
    hole: u64,
    /// Runtime address of the patched function, and its first bytes.
    func: u64,
    func_bytes: Vec<u8>,
}

fn read_phys(be: &mut impl Backend, pa: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    be.read_phys(pa, &mut b).unwrap();
    b
}

fn places(be: &mut Be, vcpus: &[VcpuState], t: &LinuxTarget) -> Places {
    let k = t.kallsyms();
    let sym = |n: &str| k.first_addr(n).unwrap_or_else(|| panic!("no symbol {n}"));
    let tasks = t.task_offsets().tasks;
    let map = t.ram_map(&mut GuestMem::new(&mut *be, t.page_table_root(), vcpus[0].cr4)).unwrap();
    let mut m = GuestMem::new(&mut *be, t.page_table_root(), vcpus[0].cr4);
    let t1_node = m.read_u64(sym("init_task") + tasks).unwrap();
    let t2_node = m.read_u64(t1_node).unwrap();
    let t1_thread = t1_node - tasks + t.task_offsets().thread_node;
    // The kallsyms tables are not in kallsyms: where identification found them.
    let kt = &k.tables;
    let (token_table, token_index) = (kt.token_table, kt.token_index);
    let token_len = usize::try_from(token_index - token_table).unwrap().min(4096);
    let func = sym("cmdline_proc_show");
    let modules = sym("modules");
    let m1 = m.read_u64(modules).unwrap();
    let module = (m1 != modules).then(|| (m1, m.virt_to_phys(m1).unwrap()));
    let func_bytes = m.read_vec(func, 32).unwrap();
    let e820 = map.sources.iter().find(|s| s.complete).expect("the kernel's e820 table");
    let top = e820.ranges.iter().filter(|(_, k)| *k == RamKind::Usable).map(|(r, _)| r.end).max().unwrap();
    let hole = (top + (2 << 20) - 1) & !((2 << 20) - 1);
    assert!(e820.ranges.iter().all(|(r, _)| r.end <= hole || r.start >= hole + (2 << 20)) && hole < 0xfec0_0000, "{hole:#x} {e820:?}");
    Places {
        t1_next: m.virt_to_phys(t1_node).unwrap(),
        t2_next: m.virt_to_phys(t2_node).unwrap(),
        t1_node,
        t1_thread,
        t1_thread_next: m.virt_to_phys(t1_thread).unwrap(),
        pd: m.virt_to_phys(sym("level2_kernel_pgt")).unwrap(),
        pud: m.virt_to_phys(sym("level3_kernel_pgt")).unwrap(),
        // `kallsyms_num_syms` follows `kallsyms_relative_base`.
        num_syms: m.virt_to_phys(kt.relative_base_addr + 8).unwrap(),
        nr_cpu_ids: m.virt_to_phys(sym("nr_cpu_ids")).unwrap(),
        token_table: m.virt_to_phys(token_table).unwrap(),
        token_len,
        orc_ip: m.virt_to_phys(sym("__start_orc_unwind_ip")).unwrap(),
        module,
        hole,
        func,
        func_bytes,
    }
}

/// Where the corruption is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Identifying the kernel at attach.
    Identify,
    /// The apply transaction (its pauses walk the tasks).
    Apply,
    /// Identification succeeds without the corrupted ORC tables (their
    /// frames unreliable, stacks scanned conservatively): the refusal is
    /// `LinuxTarget::orc_refused`'s, the outcome `identified/<part>:<cause>`.
    Unwinder,
}

struct Case {
    name: &'static str,
    what: &'static str,
    phase: Phase,
    plan: Vec<Corruption>,
    /// Read the tasks from the agent only (`--tasks agent`): with `auto`
    /// an unusable agent is left out for the walk, by design.
    agent_only: bool,
    /// The agent's header at this guest-physical address gets its checksum
    /// recomputed at every stop, over the corrupted fields and the rest as
    /// the agent last wrote it (the agent rewrites its header on every fork
    /// and exit, so the places are not compared with an old snapshot
    /// either: the agent working again, in the control, shows them back).
    agent_header: Option<u64>,
    /// Acceptable `cause` or `cause/reason` names (one stable answer is
    /// expected; two where the refusal depends on what the guest was doing).
    causes: &'static [&'static str],
}

fn u64b(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn cases(p: &Places) -> Vec<Case> {
    let pde = |i: u64, v: u64| Corruption { gpa: p.pd + 8 * i, bytes: u64b(v) };
    let next = |v: u64| Corruption { gpa: p.t1_next, bytes: u64b(v) };
    let mut v = vec![
        Case {
            name: "task_list_cycle",
            what: "task2.tasks.next = &task1.tasks (a cycle that never comes back to init_task)",
            phase: Phase::Apply,
            agent_only: false,
            agent_header: None,
            plan: vec![Corruption { gpa: p.t2_next, bytes: u64b(p.t1_node) }],
            causes: &["code_busy/tasks_inconsistent"],
        },
        Case {
            name: "thread_list_cycle",
            what: "task1.thread_node.next = &task1.thread_node (its thread list never returns to signal->thread_head)",
            phase: Phase::Apply,
            agent_only: false,
            agent_header: None,
            plan: vec![Corruption { gpa: p.t1_thread_next, bytes: u64b(p.t1_thread) }],
            causes: &["code_busy/tasks_inconsistent"],
        },
        Case {
            name: "task_into_lapic",
            what: "a page-directory entry mapping the LAPIC (0xfee00000, 2 MiB), task1.tasks.next into it",
            phase: Phase::Apply,
            agent_only: false,
            agent_header: None,
            plan: vec![pde(510, 0xfee0_0000 | PDE_2M), next(slot_va(510) + 0x800)],
            causes: &["unexpected/not_ram"],
        },
        Case {
            name: "task_into_pci_hole",
            what: "a page-directory entry mapping a hole of the e820 map (the PCI hole), task1.tasks.next into it",
            phase: Phase::Apply,
            agent_only: false,
            agent_header: None,
            plan: vec![pde(510, p.hole | PDE_2M), next(slot_va(510) + 0x800)],
            causes: &["unexpected/not_ram"],
        },
        Case {
            name: "task_unmapped",
            what: "task1.tasks.next into an unmapped 2 MiB slot",
            phase: Phase::Apply,
            agent_only: false,
            agent_header: None,
            plan: vec![next(slot_va(509) + 0x800)],
            causes: &["unexpected/not_mapped"],
        },
        Case {
            name: "page_table_loop",
            what: "a page-directory entry pointing back at the page-directory-pointer table above it (PUD -> PD -> PUD), task1.tasks.next through it",
            phase: Phase::Apply,
            agent_only: false,
            agent_header: None,
            plan: vec![pde(511, p.pud | PDE_TABLE), next(slot_va(511) + 510 * 4096 + 0x800)],
            causes: &["unexpected/list_inconsistent", "unexpected/not_mapped", "unexpected/not_ram", "code_busy/tasks_inconsistent", "unexpected/tasks_malformed"],
        },
        Case {
            name: "kallsyms_num_syms_absurd",
            what: "kallsyms_num_syms = 0xffffffff",
            phase: Phase::Identify,
            agent_only: false,
            agent_header: None,
            plan: vec![Corruption { gpa: p.num_syms, bytes: u32::MAX.to_le_bytes().to_vec() }],
            causes: &["kallsyms_not_found", "kallsyms_corrupt"],
        },
        Case {
            name: "nr_cpu_ids_absurd",
            what: "nr_cpu_ids = 0x7fffffff",
            phase: Phase::Identify,
            agent_only: false,
            agent_header: None,
            plan: vec![Corruption { gpa: p.nr_cpu_ids, bytes: 0x7fff_ffffu32.to_le_bytes().to_vec() }],
            causes: &["cpu_count_implausible"],
        },
        Case {
            name: "kallsyms_token_table_garbage",
            what: "kallsyms_token_table filled with 0xff (no token ends)",
            phase: Phase::Identify,
            agent_only: false,
            agent_header: None,
            plan: vec![Corruption { gpa: p.token_table, bytes: vec![0xff; p.token_len] }],
            causes: &["kallsyms_not_found", "kallsyms_corrupt"],
        },
        Case {
            name: "orc_ip_table_garbage",
            what: "the first 512 entries of vmlinux's orc_unwind_ip alternate 0x7fffffff and 0x80000000",
            phase: Phase::Unwinder,
            agent_only: false,
            agent_header: None,
            plan: vec![Corruption { gpa: p.orc_ip, bytes: [0x7fff_ffffu32.to_le_bytes(), 0x8000_0000u32.to_le_bytes()].concat().repeat(256) }],
            causes: &["identified/vmlinux:orc_unsorted"],
        },
    ];
    if let Some((node, next)) = p.module {
        v.push(Case {
            name: "module_list_cycle",
            what: "the first module's list.next = itself",
            phase: Phase::Unwinder,
            agent_only: false,
            agent_header: None,
            plan: vec![Corruption { gpa: next, bytes: u64b(node) }],
            causes: &["identified/modules:list_inconsistent"],
        });
    }
    v
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

//! The corruptions of `debian_hostile_guest`: where things are on one
//! boot of a Debian guest ([`Places`], read from the clean guest), and each
//! case ([`Case`]) as bytes to write there and the named refusal expected.

use vsplice_patcher::arch::x86::guest::Guest as GuestMem;
use vsplice_patcher::kernels::stock_linux::LinuxTarget;
use vsplice_patcher::kernels::TargetKernel;
use vsplice_patcher::model::backend::{Backend, VcpuState};
use vsplice_patcher::model::{KernelMemory, RamKind};
use vsplice_patcher::testing::Corruption;

/// `_PAGE_PRESENT | _PAGE_RW`, and `_PAGE_PSE` for a 2 MiB page.
pub const PDE_TABLE: u64 = 0x3;
pub const PDE_2M: u64 = 0x83;
/// The kernel image's page directory maps 1 GiB from `__START_KERNEL_map`;
/// its last three slots (below `MODULES_VADDR`) are free on a booted kernel.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
pub fn slot_va(i: u64) -> u64 {
    START_KERNEL_MAP + (i << 21)
}

/// Where things are on this boot (read once from the clean guest).
#[derive(Debug, Clone)]
pub struct Places {
    /// Physical address of `task1.tasks.next` and `task2.tasks.next`
    /// (task1: the first task after `init_task`; task2: the next).
    pub t1_next: u64,
    pub t2_next: u64,
    /// `&task1.tasks` (a kernel-virtual list node).
    pub t1_node: u64,
    /// `&task1.thread_node` and the physical address of its `next`.
    pub t1_thread: u64,
    pub t1_thread_next: u64,
    /// Physical address of `level2_kernel_pgt` and `level3_kernel_pgt`.
    pub pd: u64,
    pub pud: u64,
    /// `kallsyms_num_syms`, `nr_cpu_ids`, `kallsyms_token_table` (physical) and the table's length.
    pub num_syms: u64,
    pub nr_cpu_ids: u64,
    pub token_table: u64,
    pub token_len: usize,
    /// Physical address of `__start_orc_unwind_ip`.
    pub orc_ip: u64,
    /// The kernel image's page-directory slot mapping `kallsyms_token_table`
    /// (read-only data, 2 MiB pages).
    pub rodata_slot: u64,
    /// The first module's list node and the physical address of its
    /// `list.next` (`None`: no module loaded).
    pub module: Option<(u64, u64)>,
    /// A 2 MiB-aligned guest-physical address in no e820 entry (the PCI hole).
    pub hole: u64,
    /// Runtime address of the patched function, and its first bytes.
    pub func: u64,
    pub func_bytes: Vec<u8>,
}

pub fn read_phys(be: &mut impl Backend, pa: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    be.read_phys(pa, &mut b).unwrap();
    b
}

pub fn places<B: Backend>(be: &mut B, vcpus: &[VcpuState], t: &LinuxTarget) -> Places {
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
        rodata_slot: (token_table - START_KERNEL_MAP) >> 21,
        module,
        hole,
        func,
        func_bytes,
    }
}

/// Where the corruption is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Identifying the kernel at attach.
    Identify,
    /// The apply transaction (its pauses walk the tasks).
    Apply,
    /// Identification succeeds without the corrupted ORC tables (their
    /// frames unreliable, stacks scanned conservatively): the refusal is
    /// `LinuxTarget::orc_refused`'s, the outcome `identified/<part>:<cause>`.
    Unwinder,
}

pub struct Case {
    pub name: &'static str,
    pub what: &'static str,
    pub phase: Phase,
    pub plan: Vec<Corruption>,
    /// Read the tasks from the agent only (`--tasks agent`): with `auto`
    /// an unusable agent is left out for the walk, by design.
    pub agent_only: bool,
    /// The agent's header at this guest-physical address gets its checksum
    /// recomputed at every stop, over the corrupted fields and the rest as
    /// the agent last wrote it (the agent rewrites its header on every fork
    /// and exit, so the places are not compared with an old snapshot
    /// either: the agent working again, in the control, shows them back).
    pub agent_header: Option<u64>,
    /// Acceptable `cause` or `cause/reason` names (one stable answer is
    /// expected; two where the refusal depends on what the guest was doing).
    pub causes: &'static [&'static str],
}

pub fn u64b(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub fn cases(p: &Places) -> Vec<Case> {
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
            name: "rodata_pde_into_lapic",
            what: "the page-directory entry mapping the kernel's read-only data (kallsyms) maps the LAPIC instead",
            phase: Phase::Identify,
            agent_only: false,
            agent_header: None,
            plan: vec![pde(p.rodata_slot, 0xfee0_0000 | PDE_2M)],
            causes: &["not_ram"],
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

//! [`FakeKernel`]: a small kernel as a [`TargetKernel`], for transaction
//! tests without a guest. It knows its symbols (a few functions in one text
//! page), builds its own memory ([`FakeKernel::guest`]: the kernel mapping
//! `__START_KERNEL_map` style in one page directory of 2 MiB pages, so the
//! arena's page walks and mapping work, the functions' code, stacks for its
//! tasks), has an ORC table for its text, and hands out whatever task list a
//! test sets (or scripts, one list per pause), so a test can put a task
//! inside a function and take it out again. [`FakeKernel::with_paging`]
//! makes it a kernel on 5-level page tables (its guest's vCPUs with LA57).
//!
//! ```text
//! virtual                 physical   what
//! 0xffffffff81000000      0x1000000  text: fake_entry, fake_schedule, fake_a..fake_d (0x100 apart)
//! 0xffffffff81200000      0x1200000  task stacks, 16 KiB each
//! 0xffffffff81400000                 _end; the arena window runs to the end of the page directory
//!                         0x4000000  the arena (4 MiB), RAM is 128 MiB
//! ```

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::ram::RamGuest;
use crate::arch::x86::paging::PagingMode;
use crate::kernels::TargetKernel;
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{ArenaRange, GuestTasks, RamMap, Symbol, SymbolKind, SymbolTable, TargetError, TargetKind, TaskInfo, TaskList};
use crate::os::linux::orc::{reg, OrcEntry, OrcTable, OrcType};
use crate::os::linux::unwind::{OrcUnwinder, PT_REGS_SIZE};

/// `__START_KERNEL_map`.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Start of the text.
pub const TEXT: u64 = 0xffff_ffff_8100_0000;
/// Start of the task stacks.
pub const STACKS: u64 = 0xffff_ffff_8120_0000;
/// Bytes of one task stack.
pub const STACK_SIZE: u64 = 0x4000;
/// `_end`.
pub const END: u64 = 0xffff_ffff_8140_0000;
/// Guest RAM.
pub const RAM: u64 = 128 << 20;
/// The arena, guest-physical.
/// The arena (guest-physical): 4 MiB at 64 MiB.
pub fn arena() -> ArenaRange {
    // 64 MiB is 2 MiB aligned and 4 MiB is two slots: the rule holds.
    ArenaRange::new(0x400_0000, 0x40_0000).unwrap_or_else(|e| unreachable!("{e}"))
}
/// The kernel's build-id.
pub const BUILD_ID: &str = "fa4efa4efa4efa4efa4efa4efa4efa4efa4efa4e";
/// The functions, in address order, 0x100 apart from [`TEXT`], each
/// [`FUNC_SIZE`] bytes. `fake_entry` ends every stack; `fake_schedule` is
/// where sleeping tasks switched out.
pub const FUNCS: [&str; 6] = ["fake_entry", "fake_schedule", "fake_a", "fake_b", "fake_c", "fake_d"];
/// Bytes of each function.
pub const FUNC_SIZE: u64 = 0x40;

fn phys(va: u64) -> u64 {
    va - START_KERNEL_MAP
}

/// The code of function `i`: a 5-byte NOP (the ftrace site), then
/// `mov %rdi,%rax; add $i,%rax; ret`, padded with `int3`.
fn code(i: usize) -> Vec<u8> {
    let mut c = vec![0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, i as u8, 0xc3];
    c.resize(FUNC_SIZE as usize, 0xcc);
    c
}

fn call_frame() -> OrcEntry {
    OrcEntry { sp_offset: 8, bp_offset: 0, sp_reg: reg::SP, bp_reg: reg::UNDEFINED, kind: OrcType::Call, end: false }
}

/// The ORC table of the fake text: every function's frame is its return
/// address, and `fake_entry` ends the stack.
fn orc_table() -> OrcTable {
    let rows = FUNCS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let e = if *name == "fake_entry" {
                OrcEntry { sp_offset: 0, bp_offset: 0, sp_reg: reg::UNDEFINED, bp_reg: reg::UNDEFINED, kind: OrcType::Call, end: true }
            } else {
                call_frame()
            };
            (TEXT + 0x100 * i as u64, e)
        })
        .collect();
    OrcTable::new("vmlinux", TEXT, TEXT + 0x100 * FUNCS.len() as u64, rows)
}

/// A small kernel with a settable task list.
#[derive(Debug)]
pub struct FakeKernel {
    symbols: SymbolTable,
    unwinder: Option<OrcUnwinder>,
    /// The task lists still to hand out: the front one, dropped after use
    /// while another follows.
    tasks: Mutex<VecDeque<Vec<TaskInfo>>>,
    /// Per pause, in order: the tasks the sources dispute at it (`None`:
    /// they agree); agreement once they are spent.
    disputes: Mutex<VecDeque<Option<Vec<u64>>>>,
    /// Per `tasks_again`, in order: the positions it says changed (`None`:
    /// it does not say); it says nothing once they are spent.
    changed: Mutex<VecDeque<Option<Vec<usize>>>>,
    /// When set, `tasks_again` answers `Inconsistent` whenever it may
    /// (`retry`), as a kind whose cheap re-read cannot be taken does.
    busy_when_retry: AtomicBool,
    /// The `retry` of every `tasks_again`, in order.
    retries: Mutex<Vec<bool>>,
    up: AtomicBool,
    task_reads: AtomicUsize,
    root: u64,
    paging: PagingMode,
    /// The memory map it reports (none: the arena is not checked).
    ram: Option<RamMap>,
    kind: TargetKind,
    build_id: bool,
    owner_only_stacks: bool,
    /// Modules on its module list.
    modules: Vec<crate::model::LoadedModule>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeKernel {
    /// The kernel, up, with no tasks and an ORC unwinder. Every instance is
    /// the same kernel: a new one on the same [`RamGuest`] is what a new
    /// vsplice process would see.
    pub fn new() -> Self {
        let symbols = FUNCS
            .iter()
            .enumerate()
            .map(|(i, name)| Symbol {
                name: (*name).to_owned(),
                addr: TEXT + 0x100 * i as u64,
                size: FUNC_SIZE,
                kind: SymbolKind::Func,
                local: false,
                file: None,
                position: 0,
            })
            .collect();
        Self {
            symbols: SymbolTable::new(symbols),
            unwinder: Some(OrcUnwinder::new(orc_table(), None)),
            tasks: Mutex::new(VecDeque::from([Vec::new()])),
            disputes: Mutex::new(VecDeque::new()),
            changed: Mutex::new(VecDeque::new()),
            busy_when_retry: AtomicBool::new(false),
            retries: Mutex::new(Vec::new()),
            up: AtomicBool::new(true),
            task_reads: AtomicUsize::new(0),
            root: RamGuest::new(RAM).root(),
            paging: PagingMode::FourLevel,
            ram: None,
            kind: TargetKind::TestGuest,
            build_id: true,
            owner_only_stacks: false,
            modules: Vec::new(),
        }
    }

    /// The same kernel saying its switched-out stacks are written by their
    /// owners only ([`TargetKernel::owner_only_stacks`], like the test guest).
    pub fn with_owner_only_stacks(mut self) -> Self {
        self.owner_only_stacks = true;
        self
    }

    /// The same kernel with a module `name` loaded at `addr` whose text is
    /// where `funcs` are (its own table holds them at their addresses).
    pub fn with_module(mut self, name: &str, addr: u64, funcs: &[&str]) -> Self {
        let syms: Vec<Symbol> = funcs.iter().filter_map(|f| self.symbols.resolve(f, None).ok().cloned()).collect();
        let base = syms.iter().map(|s| s.addr).min().unwrap_or(TEXT);
        let end = syms.iter().map(|s| s.addr + s.size).max().unwrap_or(TEXT);
        self.modules.push(crate::model::LoadedModule { name: name.to_owned(), addr, state: 0, base, text_size: end - base, symbols: SymbolTable::new(syms) });
        self
    }

    /// The same kernel with the last module added in `state`
    /// (`MODULE_STATE_COMING` while it loads, `GOING` while it unloads).
    pub fn with_module_state(mut self, state: u32) -> Self {
        if let Some(m) = self.modules.last_mut() {
            m.state = state;
        }
        self
    }

    /// The same kernel on page tables of `mode` (5 levels: LA57).
    pub fn with_paging(mut self, mode: PagingMode) -> Self {
        self.paging = mode;
        self
    }

    /// The same kernel presenting itself as `kind` (patches must say so too).
    pub fn with_kind(mut self, kind: TargetKind) -> Self {
        self.kind = kind;
        self
    }

    /// The same kernel with no build-id.
    pub fn without_build_id(mut self) -> Self {
        self.build_id = false;
        self
    }

    /// The same kernel reporting `map` as its memory map (the arena check).
    pub fn with_ram_map(mut self, map: RamMap) -> Self {
        self.ram = Some(map);
        self
    }

    /// The same kernel without an ORC unwinder (the check is the conservative scan).
    pub fn without_unwinder(mut self) -> Self {
        self.unwinder = None;
        self
    }

    /// Guest memory holding this kernel: page tables, text, zeroed stacks,
    /// one vCPU running in user mode.
    pub fn guest(&self) -> RamGuest {
        let mut g = RamGuest::new(RAM).with_paging(self.paging);
        g.map_2m(TEXT, phys(TEXT), END - TEXT);
        for i in 0..FUNCS.len() {
            g.put(phys(TEXT + 0x100 * i as u64), &code(i));
        }
        g.vcpus = vec![self.user_vcpu(&g)];
        g
    }

    /// A vCPU in user mode (nothing of it is on a kernel stack).
    pub fn user_vcpu(&self, g: &RamGuest) -> VcpuState {
        VcpuState { cs: 0x33, rip: 0x40_1000, cr0: 0x8005_0033, cr3: g.root(), cr4: 0x20 | g.cr4(), efer: 0xd01, ..VcpuState::default() }
    }

    /// A vCPU running kernel code at `rip` (on no known stack).
    pub fn kernel_vcpu(&self, g: &RamGuest, rip: u64) -> VcpuState {
        VcpuState { cs: 0x10, rip, ..self.user_vcpu(g) }
    }

    /// Address of a function.
    pub fn addr(&self, name: &str) -> u64 {
        self.symbols.resolve(name, None).map_or(0, |s| s.addr)
    }

    /// A return address inside `name` (after a call at `+0x5`).
    pub fn ret_into(&self, name: &str) -> u64 {
        self.addr(name) + 0xa
    }

    /// A function's bytes as the kernel was built.
    pub fn pristine(&self, name: &str) -> Vec<u8> {
        FUNCS.iter().position(|f| *f == name).map(code).unwrap_or_default()
    }

    /// Writes the stack of a task switched out in `fake_schedule`, called
    /// through `callers` (return addresses, innermost first), called from
    /// `fake_entry`, into stack slot `slot`; returns the task.
    pub fn sleeping_task(&self, g: &mut RamGuest, slot: u64, id: u64, name: &str, callers: &[u64]) -> TaskInfo {
        let base = STACKS + slot * STACK_SIZE;
        let top = base + STACK_SIZE;
        // inactive_task_frame (r15 r14 r13 r12 bx bp, return into schedule),
        // then one return address per caller, the last into fake_entry; the
        // top holds pt_regs (user registers).
        let mut words = vec![0u64; 6];
        words.push(self.ret_into("fake_schedule"));
        words.extend_from_slice(callers);
        words.push(self.ret_into("fake_entry"));
        let saved_sp = top - PT_REGS_SIZE - 8 * words.len() as u64;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        g.put(phys(base), &vec![0u8; STACK_SIZE as usize]);
        g.put(phys(saved_sp), &bytes);
        TaskInfo { id, name: name.to_owned(), cpu: Some(0), stack: base..top, saved_sp: Some(saved_sp), on_cpu: false, evidence: None }
    }

    /// The task list every pause sees from now on.
    pub fn set_tasks(&self, tasks: Vec<TaskInfo>) {
        self.script_tasks(vec![tasks]);
    }

    /// One task list per pause, in order; the last one stays.
    pub fn script_tasks(&self, lists: Vec<Vec<TaskInfo>>) {
        let mut q = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *q = lists.into();
        if q.is_empty() {
            q.push_back(Vec::new());
        }
    }

    /// Per `tasks_again` (the pause's read after a pre-check), in order,
    /// the positions it says changed since the list handed to it, like the
    /// test guest's change ring; `None`: it does not say. Honest or not:
    /// the test decides.
    pub fn script_changed(&self, reads: Vec<Option<Vec<usize>>>) {
        *self.changed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reads.into();
    }

    /// From now on `tasks_again` answers `Inconsistent` whenever its caller
    /// lets it (`retry`), as a guest that never stays quiet.
    pub fn busy_when_retry(&self) {
        self.busy_when_retry.store(true, Ordering::SeqCst);
    }

    /// The `retry` handed to each `tasks_again` so far.
    pub fn retries(&self) -> Vec<bool> {
        self.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Per pause, in order, the tasks whose sources disagree the way a
    /// fork or exit in flight does ([`TargetError::Disputed`],
    /// `agent_mismatch`); `None`: that pause's read agrees. Every read
    /// after the last agrees.
    pub fn script_disputes(&self, pauses: Vec<Option<Vec<u64>>>) {
        *self.disputes.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pauses.into();
    }

    /// Says whether the kernel is up.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Times the task list was read.
    pub fn task_reads(&self) -> usize {
        self.task_reads.load(Ordering::SeqCst)
    }
}

impl TargetKernel for FakeKernel {
    /// The fake presents itself as a test-guest kind of kernel (or the kind set).
    fn kind(&self) -> TargetKind {
        self.kind
    }

    fn build_id(&self) -> Option<&str> {
        self.build_id.then_some(BUILD_ID)
    }

    fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    fn image_end(&self) -> u64 {
        END
    }

    fn arena_window(&self) -> Range<u64> {
        END..START_KERNEL_MAP + (1 << 30)
    }

    fn page_table_root(&self) -> u64 {
        self.root
    }

    fn paging_mode(&self) -> PagingMode {
        self.paging
    }

    fn is_up(&self, _mem: &mut dyn KernelMemory) -> Result<bool, TargetError> {
        Ok(self.up.load(Ordering::SeqCst))
    }

    fn tasks(&self, _mem: &mut dyn KernelMemory, vcpus: &[VcpuState], _source_at: Option<u64>) -> Result<GuestTasks, TargetError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(TargetError::NotUp("the fake kernel is down".into()));
        }
        self.task_reads.fetch_add(1, Ordering::SeqCst);
        let disputed = self.disputes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front().flatten();
        if let Some(tasks) = disputed {
            let message = format!("agent and agentless views disagree: in flight: {tasks:x?}");
            return Err(TargetError::Disputed { cause: "agent_mismatch", tasks, message });
        }
        let mut q = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tasks = if q.len() > 1 { q.pop_front().unwrap_or_default() } else { q.front().cloned().unwrap_or_default() };
        let list = TaskList { tasks, cpu_stacks: Vec::new() };
        Ok(GuestTasks { list, vcpu_cpus: vec![None; vcpus.len()], source: "fake", source_at: None, changes: None, changed: None, reread: None })
    }

    /// The scripted list, saying which positions changed as scripted
    /// ([`FakeKernel::script_changed`]): true or not, as a kind's ring would.
    fn tasks_again(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], source_at: Option<u64>, _prev: GuestTasks, retry: bool) -> Result<GuestTasks, TargetError> {
        self.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(retry);
        if retry && self.busy_when_retry.load(Ordering::SeqCst) {
            return Err(TargetError::Inconsistent("not quiet since the pre-check (scripted)".into()));
        }
        let mut t = self.tasks(mem, vcpus, source_at)?;
        t.changed = self.changed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front().flatten();
        Ok(t)
    }

    fn unwinder(&self) -> Option<&OrcUnwinder> {
        self.unwinder.as_ref()
    }

    fn owner_only_stacks(&self) -> bool {
        self.owner_only_stacks
    }

    fn ram_map(&self, _mem: &mut dyn KernelMemory) -> Option<RamMap> {
        self.ram.clone()
    }

    fn module(&self, _mem: &mut dyn KernelMemory, name: &str) -> Result<Option<crate::model::LoadedModule>, crate::model::TargetError> {
        Ok(self.modules.iter().find(|m| m.name == name).cloned())
    }
}

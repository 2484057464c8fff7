//! A live stock Linux kernel (x86-64, 6.1) as a [`TargetKernel`], seen from
//! outside with nothing in the guest: identified once through
//! [`crate::os::linux::kernel::LiveKernel`] (kallsyms, slide, build-id, BTF),
//! then
//!
//! - symbols: kallsyms in table order at runtime addresses ([`symbols`]);
//! - `_end`, and the arena window `[roundup(_end, 2 MiB), MODULES_VADDR)`
//!   of the kernel image's page directory (`level2_kernel_pgt`, whose slots
//!   beyond the image `cleanup_highmap` cleared at boot);
//! - the page-table root: the physical address of `init_top_pgt` (every
//!   process's kernel half shares its lower tables), and the paging mode
//!   from the stopped vCPUs' CR4: with LA57 (5-level paging, which Debian's
//!   kernels turn on when the CPU has it) `init_top_pgt` is the PML5 and
//!   the arena's page directory is found one level further down;
//! - `is_up`: `system_state == SYSTEM_RUNNING`;
//! - tasks: the guest agent's table when it is loaded and the agentless
//!   BTF walk (every thread, the idle task of each CPU), checked against
//!   each other ([`crate::os::linux::view::read_tasks`], [`TaskSource`]),
//!   each task with its kernel stack and saved stack pointer, every CPU's
//!   IRQ, exception and entry stacks, and the CPU each vCPU is, by the
//!   rules of [`crate::os::linux::task_list`] (the ones the tests check
//!   too); where the agent was found goes back to the caller
//!   ([`GuestTasks::source_at`]) to be handed in again; a list caught
//!   mid-update is [`TargetError::Inconsistent`], never partial; a
//!   disagreement a fork or exit in flight explains is
//!   [`TargetError::Disputed`] (retried, `agent_mismatch` when the same
//!   tasks stay disputed), any other is [`TargetError::Untrusted`]
//!   (`agent_mismatch`);
//! - the ORC unwinder of the precise safety check (vmlinux and module
//!   tables, [`crate::os::linux::view::build_unwinder`]);
//! - for the loader ([`LinkEnv`]): the boot CPU's feature and bug words
//!   (`boot_cpu_data.x86_capability`), static keys' state read from guest
//!   memory, and the guest's `x86_return_thunk`;
//! - its memory map for the arena check: `e820_table` and the
//!   `iomem_resource` tree ([`crate::os::linux::ram`]).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tracing::{debug, info};

use super::TargetKernel;
use crate::arch::x86::paging::PagingMode;
use crate::model::{GuestTasks, TargetError};
use crate::os::linux::symbols;
use crate::model::backend::{Backend, VcpuState};
use crate::os::linux::btf::Btf;
use crate::os::linux::cpustacks;
use crate::os::linux::kallsyms::Kallsyms;
use crate::os::linux::kernel::{KernelError, LiveKernel, Slide};
use crate::os::linux::notes;
use crate::os::linux::sched_quiet::{self, Counters, QuietIndex, QuietOffsets};
use crate::os::linux::tasks::{TaskError, TaskOffsets, Trail};
use crate::os::linux::unwind::OrcUnwinder;
use crate::os::linux::agent::find::{self, ModuleAgent};
use crate::os::linux::agent::AgentError;
use crate::os::linux::view::{self, AgentHint, TaskSource, ViewError};
use crate::patch::link::{CpuCaps, LinkEnv};
use crate::model::mem::{KernelMemory, MemError};
use crate::model::{PhysFilter, RamMap, SymbolTable};
use crate::os::linux::ram;

/// `MODULES_VADDR` on x86-64: `__START_KERNEL_map` + `KERNEL_IMAGE_SIZE` (1 GiB with KASLR);
/// the same with 5-level paging (the kernel image keeps the top 2 GiB).
pub const MODULES_VADDR: u64 = 0xffff_ffff_c000_0000;
/// `SYSTEM_RUNNING` in 6.1's `enum system_states` (BOOTING, SCHEDULING, FREEING_INITMEM, RUNNING, …).
pub const SYSTEM_RUNNING: u32 = 3;
const SLOT: u64 = 2 << 20;

/// Why a live Linux kernel cannot be used as a patch target.
#[derive(Debug, Error)]
pub enum LinuxTargetError {
    /// Identification failed (kallsyms, slide, notes, BTF).
    #[error("cannot identify the guest's Linux kernel")]
    Kernel(#[from] #[source] KernelError),
    /// The kernel has no embedded BTF (CONFIG_DEBUG_INFO_BTF): no agentless task walk.
    #[error("the guest kernel has no BTF (CONFIG_DEBUG_INFO_BTF), so its tasks cannot be found without an agent")]
    NoBtf,
    /// BTF lacks what the task walk needs.
    #[error("the guest kernel's BTF lacks what the task walk needs")]
    Btf(#[from] #[source] TaskError),
    /// A symbol vsplice needs is missing.
    #[error("the guest kernel has no symbol `{0}`")]
    MissingSymbol(&'static str),
    /// The vCPUs in long mode disagree on CR4.LA57 (4- and 5-level paging
    /// at once): no single walk of the kernel's page tables is right.
    #[error("the guest's vCPUs disagree on 5-level paging (CR4.LA57 set on some, clear on others)")]
    MixedPaging,
    /// Reading guest memory failed.
    #[error("reading guest memory failed")]
    Memory(#[from] #[source] MemError),
}

impl LinuxTargetError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Kernel(e) => e.cause(),
            Self::NoBtf => "no_btf",
            Self::Btf(e) => e.cause(),
            Self::MissingSymbol(_) => "symbol_missing",
            Self::MixedPaging => "paging_mode_mixed",
            Self::Memory(e) => e.cause(),
        }
    }

    /// True when trying again later cannot help: the kernel was found but
    /// is one vsplice cannot patch (no BTF or not the BTF the task walk
    /// needs, a symbol missing). Not finding or not reading the kernel may
    /// just mean it is still booting, and vCPUs that disagree on the paging
    /// mode may be secondaries still coming up.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::NoBtf | Self::MissingSymbol(_) => true,
            Self::Btf(e) => matches!(e, TaskError::MissingType(_) | TaskError::MissingSymbol(_) | TaskError::BtfBound(_)),
            // The CPU stacks are not set up early in boot.
            Self::Kernel(_) | Self::Memory(_) | Self::MixedPaging => false,
        }
    }
}

/// A live Linux kernel.
#[derive(Debug, Clone)]
pub struct LinuxTarget {
    kallsyms: Kallsyms,
    symbols: SymbolTable,
    build_id: Option<String>,
    banner: Option<String>,
    slide: Option<Slide>,
    end: u64,
    root: u64,
    paging: PagingMode,
    system_state: u64,
    offsets: TaskOffsets,
    btf: Btf,
    caps: Option<CpuCaps>,
    return_thunk: Option<u64>,
    unwinder: Option<OrcUnwinder>,
    /// ORC tables (or the module list) refused at identification, with the
    /// cause: their frames are unreliable, their stacks scanned conservatively.
    orc_refused: Vec<(String, &'static str)>,
    source: TaskSource,
    doorbell: Option<u64>,
    /// What the quiet-scheduler path of `tasks_again` reads
    /// ([`sched_quiet`]); `None`: every pause walks.
    quiet: Option<QuietOffsets>,
    /// Kept between reads, as hints and storage only (never a result).
    walks: Arc<Mutex<WalkState>>,
}

/// What one read leaves for the next.
#[derive(Debug, Default)]
struct WalkState {
    /// The last agentless walk's task addresses: a prefetch hint for the
    /// next walk (the one under the pause follows the pre-check's).
    trail: Trail,
    /// The list [`TargetKernel::tasks_again`] was handed (the pre-check's):
    /// dropped at the next read instead of under the pause (10,000 tasks'
    /// names freed are ~10% of that pause).
    spare: Option<GuestTasks>,
    /// The pre-check's counters and positions, for the quiet path of the
    /// next `tasks_again` (checked against the list it is handed).
    quiet: Option<QuietIndex>,
}

/// The paging mode of the vCPUs in long mode (CR4.LA57); 4 levels when none
/// is in long mode (identification then fails on its own).
fn paging_mode(vcpus: &[VcpuState]) -> Result<PagingMode, LinuxTargetError> {
    let mut modes = vcpus.iter().filter(|v| v.long_mode()).map(|v| PagingMode::from_cr4(v.cr4));
    let first = modes.next().unwrap_or_default();
    if modes.any(|m| m != first) {
        return Err(LinuxTargetError::MixedPaging);
    }
    debug!(levels = first.levels(), "paging mode from the stopped vCPUs");
    Ok(first)
}

/// The boot CPU's capability words: `boot_cpu_data.x86_capability[]`.
fn read_caps(mem: &mut dyn KernelMemory, k: &Kallsyms, btf: &Btf) -> Result<Option<CpuCaps>, MemError> {
    let (Some(bcd), Some(id)) = (k.first_addr("boot_cpu_data"), btf.find_struct("cpuinfo_x86")) else { return Ok(None) };
    let Some(m) = btf.member(id, "x86_capability") else { return Ok(None) };
    let size = m.size.unwrap_or(0).min(4 * 64);
    if size < 4 {
        return Ok(None);
    }
    let raw = mem.read_vec(bcd + m.offset, size as usize)?;
    Ok(Some(CpuCaps(raw.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect())))
}

impl LinuxTarget {
    /// Identifies the kernel of a stopped guest (`vcpus` from the stop).
    pub fn open<B: Backend>(backend: &mut B, vcpus: Vec<VcpuState>) -> Result<Self, LinuxTargetError> {
        let paging = paging_mode(&vcpus)?;
        let mut lk = LiveKernel::open(backend, vcpus, None)?;
        let k = lk.info.kallsyms.clone();
        let need = |name: &'static str| k.first_addr(name).ok_or(LinuxTargetError::MissingSymbol(name));
        let end = need("_end")?;
        let system_state = need("system_state")?;
        let root = lk.vm.virt_to_phys(need("init_top_pgt")?)?;
        let (btf, _, _) = lk.info.btf.as_ref().ok_or(LinuxTargetError::NoBtf)?;
        let offsets = TaskOffsets::from_btf(btf)?;
        // From here on a guest pointer may lead only into the kernel's
        // memory map (never a device or a hole: `not_ram`).
        if let Some(a) = k.first_addr("e820_table") {
            match ram::read_e820(&mut lk.vm, btf, a) {
                Ok(src) => {
                    let map = RamMap { sources: vec![src], unread: Vec::new() };
                    if let Some(f) = PhysFilter::from_map(&map, &[]) {
                        lk.vm.set_filter(f);
                    }
                }
                Err(e) => debug!(cause = e.cause(), error = %e, "no e820 map at identification: only the device window is refused"),
            }
        }
        // The CPU stacks must be findable now, not at the first pause.
        cpustacks::cpu_stacks(&mut lk.vm, &k, btf, true)?;
        let caps = read_caps(&mut lk.vm, &k, btf)?;
        let return_thunk = match k.first_addr("x86_return_thunk") {
            Some(a) => Some(lk.vm.read_u64(a)?).filter(|&t| t != 0),
            None => None,
        };
        let mut orc_refused = Vec::new();
        let unwinder = match view::build_unwinder_noted(&mut lk.vm, &lk.info, &mut orc_refused) {
            Ok(u) => Some(u),
            Err(e) => {
                info!(error = %e, "no ORC unwinder: the safety check will scan stacks conservatively");
                orc_refused.insert(0, ("vmlinux".to_owned(), e.cause()));
                None
            }
        };
        let quiet = QuietOffsets::resolve(&k, btf, &offsets);
        debug!(quiet = quiet.is_some(), "quiet-scheduler path of the pause's re-read");
        let t = Self {
            symbols: symbols::symbol_table(&k),
            build_id: lk.info.build_id.as_deref().map(notes::hex),
            banner: lk.info.banner.clone(),
            slide: lk.info.slide.clone(),
            kallsyms: k,
            end,
            root,
            paging,
            system_state,
            offsets,
            btf: btf.clone(),
            caps,
            return_thunk,
            unwinder,
            orc_refused,
            source: TaskSource::Auto,
            doorbell: None,
            quiet,
            walks: Arc::default(),
        };
        info!(
            build_id = t.build_id.as_deref().unwrap_or("?"),
            end = format_args!("{:#x}", t.end),
            root = format_args!("{:#x}", t.root),
            levels = t.paging.levels(),
            features = t.caps.as_ref().map_or(0, |c| c.0.len()),
            "Linux target"
        );
        Ok(t)
    }

    /// kallsyms at runtime addresses.
    pub fn kallsyms(&self) -> &Kallsyms {
        &self.kallsyms
    }

    /// `linux_banner`.
    pub fn banner(&self) -> Option<&str> {
        self.banner.as_deref()
    }

    /// The KASLR slide.
    pub fn slide(&self) -> Option<&Slide> {
        self.slide.as_ref()
    }

    /// The boot CPU's feature and bug words.
    pub fn cpu_caps(&self) -> Option<&CpuCaps> {
        self.caps.as_ref()
    }

    /// The guest's `x86_return_thunk`.
    pub fn return_thunk(&self) -> Option<u64> {
        self.return_thunk
    }

    /// Where the task list comes from (default: the agent when present).
    pub fn set_task_source(&mut self, source: TaskSource) {
        self.source = source;
    }

    /// What of the ORC unwinder was refused at identification and why
    /// (`("vmlinux", "orc_unsorted")`: no unwinder at all; a module or the
    /// module list: those frames unreliable). Empty when all was read.
    pub fn orc_refused(&self) -> &[(String, &'static str)] {
        &self.orc_refused
    }

    /// Offsets of `task_struct` (and `signal_struct`) members, from BTF.
    pub fn task_offsets(&self) -> &TaskOffsets {
        &self.offsets
    }

    /// The state kept between reads; a poisoned lock only lost hints and
    /// storage, so it starts afresh.
    fn walks(&self) -> std::sync::MutexGuard<'_, WalkState> {
        self.walks.lock().unwrap_or_else(|p| {
            self.walks.clear_poison();
            let mut g = p.into_inner();
            *g = WalkState::default();
            g
        })
    }

    /// The agent's descriptor address announced through the VMM's doorbell.
    pub fn set_agent_doorbell(&mut self, gpa: Option<u64>) {
        self.doorbell = gpa.filter(|&g| g != 0);
    }
}

fn view_error(e: ViewError) -> TargetError {
    match e {
        ViewError::Walk(t) | ViewError::List(t) => task_error(t),
        // A fork, exit, exec or rename caught half-way: retried, unless the
        // same tasks stay disputed (the pause loop counts).
        ViewError::Agent(AgentError::Mismatch(d)) if d.is_in_flight() => {
            let tasks = d.in_flight_tasks();
            let e = AgentError::Mismatch(d);
            TargetError::Disputed { cause: e.cause(), tasks, message: e.to_string() }
        }
        e if e.is_retry() => TargetError::Inconsistent(e.to_string()),
        e => TargetError::Untrusted { cause: e.cause(), message: e.to_string() },
    }
}

fn task_error(e: TaskError) -> TargetError {
    match e {
        TaskError::Inconsistent { .. } => TargetError::Inconsistent(e.to_string()),
        TaskError::Memory(m) => TargetError::Memory(m),
        TaskError::TooLong { .. } | TaskError::TimeBound { .. } | TaskError::CpuCount(_) => {
            TargetError::Untrusted { cause: e.cause(), message: e.to_string() }
        }
        other => TargetError::Malformed(other.to_string()),
    }
}

impl TargetKernel for LinuxTarget {
    fn kind(&self) -> crate::model::TargetKind {
        crate::model::TargetKind::Linux
    }

    fn build_id(&self) -> Option<&str> {
        self.build_id.as_deref()
    }

    fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    fn image_end(&self) -> u64 {
        self.end
    }

    fn arena_window(&self) -> Range<u64> {
        self.end.next_multiple_of(SLOT)..MODULES_VADDR
    }

    fn page_table_root(&self) -> u64 {
        self.root
    }

    fn paging_mode(&self) -> PagingMode {
        self.paging
    }

    fn is_up(&self, mem: &mut dyn KernelMemory) -> Result<bool, TargetError> {
        match mem.read_u32(self.system_state) {
            Ok(s) => Ok(s == SYSTEM_RUNNING),
            Err(MemError::NotMapped { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn tasks(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], source_at: Option<u64>) -> Result<GuestTasks, TargetError> {
        let hint = self.doorbell.map(AgentHint::Doorbell).or(source_at.map(AgentHint::Virt));
        let mut walks = self.walks();
        drop(walks.spare.take());
        walks.quiet = None;
        // With the guest running (the pre-check: no vCPUs): the scheduler's
        // counters first, then the walk (`sched_quiet`); under the pause
        // they are not needed.
        let counters = match (&self.quiet, vcpus.is_empty()) {
            (Some(q), true) => Counters::read(mem, &self.kallsyms, q).inspect_err(|e| debug!(cause = e.cause(), "no quiet path: counters unreadable")).ok(),
            _ => None,
        };
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        let (read, mut out) =
            view::read_guest_tasks(mem, &self.kallsyms, Some(&self.btf), Some(&self.offsets), self.source, hint, vcpus, &mut walks.trail)
                .map_err(view_error)?;
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        if let Some(c) = counters.filter(|_| out.source == "agentless") {
            let sum = c.sum();
            walks.quiet = QuietIndex::build(c, &read.tasks, &out.list.tasks);
            out.changes = walks.quiet.is_some().then_some(sum);
        }
        drop(walks);
        if let Some(note) = &read.note {
            debug!(%note, "task list without the agent");
        }
        Ok(out)
    }

    /// The quiet path first ([`sched_quiet::reread`]: no task switched in
    /// or forked since `prev` was read, only the tasks on a CPU re-read),
    /// else the whole walk.
    fn tasks_again(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], source_at: Option<u64>, mut prev: GuestTasks, retry: bool) -> Result<GuestTasks, TargetError> {
        let index = self.walks().quiet.take();
        if let (Some(q), Some(index)) = (&self.quiet, index) {
            match sched_quiet::reread(mem, &self.kallsyms, Some(&self.btf), &self.offsets, q, &index, &mut prev, vcpus) {
                Ok(()) => return Ok(prev),
                Err(e) if retry && sched_quiet::retry_rather_than_walk(&e, prev.list.tasks.len()) => {
                    debug!(cause = e.cause(), error = %e, "quiet path not taken: resume and try again");
                    let why = format!("not quiet since the pre-check ({}: {e}); resumed rather than walking {} tasks under the pause", e.cause(), prev.list.tasks.len());
                    self.walks().spare = Some(prev);
                    return Err(TargetError::Inconsistent(why));
                }
                Err(e) => debug!(cause = e.cause(), error = %e, "quiet path not taken: the whole walk"),
            }
        }
        let out = self.tasks(mem, vcpus, source_at).map(|mut t| {
            t.reread = Some("walk");
            t
        });
        self.walks().spare = Some(prev);
        out
    }

    fn locate_task_source(&self, mem: &mut dyn KernelMemory) -> Option<u64> {
        // A doorbell is looked up directly; the walk alone needs no agent.
        if self.doorbell.is_some() || self.source == TaskSource::Agentless {
            return None;
        }
        match find::by_module(mem, &self.kallsyms, &self.btf) {
            Ok(ModuleAgent::Header(v)) => Some(v),
            _ => None,
        }
    }

    fn link_env<'a>(&'a self, mem: &'a mut dyn KernelMemory) -> Box<dyn LinkEnv + 'a> {
        Box::new(GuestEnv { target: self, mem })
    }

    fn unwinder(&self) -> Option<&OrcUnwinder> {
        self.unwinder.as_ref()
    }

    fn release(&self) -> Option<&str> {
        // "Linux version 6.1.0-27-amd64 (debian-kernel@…) …": the third word.
        self.banner.as_deref()?.strip_prefix("Linux version ")?.split_whitespace().next()
    }

    fn kaslr_slide(&self) -> Option<u64> {
        self.slide.as_ref().map(|s| s.virt)
    }

    fn ram_map(&self, mem: &mut dyn KernelMemory) -> Option<RamMap> {
        Some(ram::read_map(mem, &self.kallsyms, &self.btf))
    }

    fn module(&self, mem: &mut dyn KernelMemory, name: &str) -> Result<Option<crate::model::LoadedModule>, TargetError> {
        crate::os::linux::modules::find_module(mem, &self.kallsyms, &self.btf, name).map_err(task_error)
    }
}

/// The loader's view of a live Linux guest.
struct GuestEnv<'a> {
    target: &'a LinuxTarget,
    mem: &'a mut dyn KernelMemory,
}

impl LinkEnv for GuestEnv<'_> {
    fn cpu_has(&self, bit: u16) -> Option<bool> {
        self.target.caps.as_ref()?.has(bit)
    }

    fn key_enabled(&mut self, addr: u64) -> Option<bool> {
        // struct static_key { atomic_t enabled; ... }: enabled > 0.
        self.mem.read_i32(addr).ok().map(|n| n > 0)
    }

    fn return_thunk(&self) -> Option<u64> {
        self.target.return_thunk
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{paging_mode, view_error, LinuxTargetError};
    use crate::model::TargetError;
    use crate::os::linux::agent::{AgentError, Disagreement, InFlight};
    use crate::os::linux::view::ViewError;
    use crate::arch::x86::paging::{PagingMode, CR4_LA57};
    use crate::model::backend::VcpuState;

    fn vcpu(long: bool, cr4: u64) -> VcpuState {
        let (cr0, efer) = if long { (0x8005_0033, 0xd01) } else { (0x11, 0) };
        VcpuState { cr0, cr4, efer, ..VcpuState::default() }
    }

    #[test]
    fn the_paging_mode_comes_from_the_long_mode_vcpus() {
        assert_eq!(paging_mode(&[vcpu(true, 0x20)]).unwrap(), PagingMode::FourLevel);
        assert_eq!(paging_mode(&[vcpu(true, 0x20 | CR4_LA57), vcpu(true, CR4_LA57)]).unwrap(), PagingMode::FiveLevel);
        // A secondary still in real mode does not count.
        assert_eq!(paging_mode(&[vcpu(true, CR4_LA57), vcpu(false, 0)]).unwrap(), PagingMode::FiveLevel);
        assert_eq!(paging_mode(&[]).unwrap(), PagingMode::FourLevel);
    }

    #[test]
    fn vcpus_that_disagree_are_refused_for_now() {
        let e = paging_mode(&[vcpu(true, CR4_LA57), vcpu(true, 0)]).unwrap_err();
        assert!(matches!(e, LinuxTargetError::MixedPaging));
        assert_eq!(e.cause(), "paging_mode_mixed");
        assert!(!e.is_permanent());
    }

    /// Agent and walk disagreeing only in flight is a dispute naming its
    /// tasks (the pause loop retries, then refuses); anything real beside
    /// it refuses `agent_mismatch` at once.
    #[test]
    fn a_disagreement_in_flight_is_disputed_a_real_one_untrusted() {
        let in_flight = Disagreement { in_flight: vec![InFlight { task: 0x30, what: "x".into() }, InFlight { task: 0x10, what: "y".into() }], ..Disagreement::default() };
        match view_error(ViewError::Agent(AgentError::Mismatch(in_flight.clone()))) {
            TargetError::Disputed { cause, tasks, .. } => assert_eq!((cause, tasks), ("agent_mismatch", vec![0x10, 0x30])),
            e => panic!("{e:?}"),
        }
        let real = Disagreement { only_agent: vec!["1/1 \"init\"".into()], ..in_flight };
        let e = view_error(ViewError::Agent(AgentError::Mismatch(real)));
        assert!(matches!(e, TargetError::Untrusted { cause: "agent_mismatch", .. }), "{e:?}");
    }
}

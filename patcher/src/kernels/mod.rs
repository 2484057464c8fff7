//! What the patcher needs to know about a guest kernel, behind one trait.
//!
//! [`TargetKernel`] is the seam between the patch machinery (loader,
//! transaction, safety check) and a particular kind of kernel:
//! - [`testguest::TestGuest`]: the purpose-built test guest (ELF symbol
//!   table of `testguest.elf`, its in-memory task table `tg_task_table`);
//! - [`stock_linux::LinuxTarget`]: a live stock Linux kernel, built on
//!   `crate::os::linux`: kallsyms for symbols (with positions, files unknown),
//!   the KASLR slide, the BTF task walk, per-CPU IRQ and exception stacks,
//!   and what the loader needs (CPU features, static keys, return thunk).
//!
//! Static knowledge (symbols, build-id, `_end`, page-table root) is read
//! once when the target is opened; live state (is the kernel up, the task
//! list) is read through [`KernelMemory`] each time it is needed, and what
//! one read learnt for the next (where the task source is) goes back to the
//! caller ([`GuestTasks::source_at`]), never into hidden state.

pub mod stock_linux;
pub mod testguest;
mod testguest_ring;
mod testguest_table;

use std::ops::Range;

use crate::arch::x86::paging::PagingMode;
use crate::model::{GuestTasks, KernelMemory, LoadedModule, RamMap, SymbolTable, TargetError, TargetKind, VcpuState};
use crate::os::linux::unwind::OrcUnwinder;
use crate::patch::link::{LinkEnv, UnknownEnv};

/// A guest kernel as the patcher sees it.
pub trait TargetKernel: std::fmt::Debug {
    /// Kind of kernel, as written in patch manifests (`testguest`, `linux`).
    fn kind(&self) -> TargetKind;
    /// GNU build-id of the running kernel, lower-case hex.
    fn build_id(&self) -> Option<&str>;
    /// All symbols (duplicates kept, with position and, where known, file).
    fn symbols(&self) -> &SymbolTable;
    /// `_end`: the end of the kernel image, runtime address.
    fn image_end(&self) -> u64;
    /// Virtual range in which vsplice may map its arena (2 MiB slots after
    /// `_end` in the kernel image's page directory, below modules).
    fn arena_window(&self) -> Range<u64>;
    /// Physical address of the kernel's top-level page table (and of every
    /// other root that must see the arena, e.g. per-process copies of the
    /// kernel half share the same lower tables, so one root suffices on x86-64).
    fn page_table_root(&self) -> u64;
    /// The paging mode [`TargetKernel::page_table_root`] is walked in
    /// (5 levels when the kernel runs with CR4.LA57). Default: 4 levels.
    fn paging_mode(&self) -> PagingMode {
        PagingMode::FourLevel
    }
    /// True when the kernel is up far enough to be patched.
    fn is_up(&self, mem: &mut dyn KernelMemory) -> Result<bool, TargetError>;
    /// All tasks and CPU stacks, and the CPU each vCPU is; call with every
    /// vCPU stopped. `source_at`: the [`GuestTasks::source_at`] of the
    /// caller's previous read (where to look for the task source first);
    /// the target keeps no state between reads.
    /// [`TargetError::Inconsistent`] means: resume, then try again.
    fn tasks(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], source_at: Option<u64>) -> Result<GuestTasks, TargetError>;
    /// [`TargetKernel::tasks`] again, handed the list read before (the
    /// incremental pre-check's, with the guest running) so a kind can reuse
    /// its storage: the result must give the check what `tasks` would
    /// (`TaskList::same_for_check`: the name and last CPU of a task off
    /// every CPU may be the ones read before).
    /// `retry`: the caller can resume and make another attempt (with a new
    /// pre-check), so a kind whose cheap re-read cannot be taken may answer
    /// [`TargetError::Inconsistent`] rather than read everything under the
    /// pause; `false` on the last attempt.
    fn tasks_again(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], source_at: Option<u64>, prev: GuestTasks, retry: bool) -> Result<GuestTasks, TargetError> {
        let _ = (prev, retry);
        self.tasks(mem, vcpus, source_at)
    }
    /// Where [`TargetKernel::tasks`] should look for its task source first
    /// (its `source_at`), found with the guest running so that the pause
    /// does not search for it (Linux: the agent's descriptor, through the
    /// module list). Only a hint: `tasks` checks what it finds there under
    /// the pause and searches as before when it is wrong. Default: none.
    fn locate_task_source(&self, mem: &mut dyn KernelMemory) -> Option<u64> {
        let _ = mem;
        None
    }
    /// What the loader needs of the running kernel beyond its symbols (CPU
    /// features for alternatives, static keys for jump labels, the return
    /// thunk), read through `mem`. By default nothing is known, and objects
    /// that need it are refused.
    fn link_env<'a>(&'a self, mem: &'a mut dyn KernelMemory) -> Box<dyn LinkEnv + 'a> {
        let _ = mem;
        Box::new(UnknownEnv)
    }
    /// The running kernel's release (`uname -r`), where known.
    fn release(&self) -> Option<&str> {
        None
    }
    /// The KASLR slide of the kernel text (runtime minus link-time `_text`), where known.
    fn kaslr_slide(&self) -> Option<u64> {
        None
    }
    /// The ORC unwinder of the precise safety check (`--check orc`), when
    /// this kernel has one; without it the check is the conservative scan.
    fn unwinder(&self) -> Option<&OrcUnwinder> {
        None
    }
    /// True when a switched-out task's stack is written by nobody but that
    /// task (no wait-queue entries or timers of others live there, no
    /// interrupt runs on it), so a word scan of it finds what it found
    /// before for as long as the task's scheduler evidence is unchanged:
    /// the incremental check may then keep a scan's verdict, not only a
    /// reliable unwind's. False unless the kind says so (Linux: false).
    fn owner_only_stacks(&self) -> bool {
        false
    }
    /// The module of this name in the guest's module list, with its own
    /// symbols (runtime addresses), read through `mem`; `None` when no such
    /// module is loaded (or this kind of kernel has no modules: the default).
    fn module(&self, mem: &mut dyn KernelMemory, name: &str) -> Result<Option<LoadedModule>, TargetError> {
        let _ = (mem, name);
        Ok(None)
    }
    /// The kernel's own view of guest-physical memory (which ranges are its
    /// RAM, which are reserved), read through `mem`, for the arena check
    /// before any write ([`crate::model::ram::check_arena`]). `None`: this
    /// kind of kernel has no memory map to read, and the arena is not checked.
    fn ram_map(&self, mem: &mut dyn KernelMemory) -> Option<RamMap> {
        let _ = mem;
        None
    }
}

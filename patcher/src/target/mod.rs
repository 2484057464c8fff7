//! What the patcher needs to know about a guest kernel, behind one trait.
//!
//! [`TargetKernel`] is the seam between the patch machinery (loader,
//! transaction, safety check) and a particular kind of kernel:
//! - [`testguest::TestGuest`]: the purpose-built test guest (ELF symbol
//!   table of `testguest.elf`, its in-memory task table `tg_task_table`);
//! - [`linux::LinuxTarget`]: a live stock Linux kernel, built on
//!   `crate::linux`: kallsyms for symbols (with positions, files unknown),
//!   the KASLR slide, the BTF task walk, per-CPU IRQ and exception stacks,
//!   and what the loader needs (CPU features, static keys, return thunk).
//!
//! Static knowledge (symbols, build-id, `_end`, page-table root) is read
//! once when the target is opened; live state (is the kernel up, the task
//! list) is read through [`KernelMemory`] each time it is needed.

pub mod access;
pub mod elf;
pub mod linux;
pub mod symbols;
pub mod testguest;

use std::ops::Range;

use serde::Serialize;
use thiserror::Error;

use crate::backend::VcpuState;
use crate::loader::{LinkEnv, UnknownEnv};
use crate::mem::{KernelMemory, MemError};
pub use symbols::{LookupError, Qualifier, Symbol, SymbolKind, SymbolTable};

/// Why live target state could not be read.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The kernel is not up yet (or no longer): nothing to patch.
    #[error("the guest kernel is not up: {0}")]
    NotUp(String),
    /// The task list was caught mid-update (lock held, odd sequence): resume and retry.
    #[error("the task list is being updated ({0}); retry after the guest ran")]
    Inconsistent(String),
    /// The task list is malformed.
    #[error("the task list is unusable: {0}")]
    Malformed(String),
    /// Guest memory could not be read.
    #[error("reading guest memory failed")]
    Memory(#[from] #[source] MemError),
    /// The task list's sources cannot be trusted (e.g. the guest agent and
    /// the agentless walk disagree); `cause` is stable (`agent_mismatch`, …).
    #[error("{message}")]
    Untrusted {
        /// Stable cause.
        cause: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl TargetError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NotUp(_) => "not_up",
            Self::Inconsistent(_) => "tasks_inconsistent",
            Self::Malformed(_) => "tasks_malformed",
            Self::Memory(_) => "memory",
            Self::Untrusted { cause, .. } => cause,
        }
    }
}

/// One task with its kernel stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// Task id (pid for Linux).
    pub id: u64,
    /// Name (comm for Linux).
    pub name: String,
    /// CPU it runs on or last ran on, when known.
    pub cpu: Option<u32>,
    /// Its kernel stack, `[lowest, highest)`.
    pub stack: Range<u64>,
    /// Stack pointer saved when it was switched out (valid when not on a CPU).
    pub saved_sp: Option<u64>,
    /// True when it is the current task of its CPU (its SP is that vCPU's RSP).
    pub on_cpu: bool,
}

/// A stack that belongs to a CPU rather than a task (IRQ, exception stacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuStack {
    /// CPU index.
    pub cpu: u32,
    /// What it is (`irq`, `nmi`, `db`, `df`, `mce`, …).
    pub kind: String,
    /// Its range.
    pub range: Range<u64>,
}

/// Every stack the safety check must scan, read with every vCPU stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskList {
    /// All tasks.
    pub tasks: Vec<TaskInfo>,
    /// Per-CPU IRQ and exception stacks (none in the test guest).
    pub cpu_stacks: Vec<CpuStack>,
}

/// A guest kernel as the patcher sees it.
pub trait TargetKernel: std::fmt::Debug {
    /// Kind of kernel, as written in patch manifests (`testguest`, `linux`).
    fn kind(&self) -> &'static str;
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
    /// True when the kernel is up far enough to be patched.
    fn is_up(&self, mem: &mut dyn KernelMemory) -> Result<bool, TargetError>;
    /// All tasks and CPU stacks; call with every vCPU stopped.
    /// [`TargetError::Inconsistent`] means: resume, then try again.
    fn tasks(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState]) -> Result<TaskList, TargetError>;
    /// What the loader needs of the running kernel beyond its symbols (CPU
    /// features for alternatives, static keys for jump labels, the return
    /// thunk), read through `mem`. By default nothing is known, and objects
    /// that need it are refused.
    fn link_env<'a>(&'a self, mem: &'a mut dyn KernelMemory) -> Box<dyn LinkEnv + 'a> {
        let _ = mem;
        Box::new(UnknownEnv)
    }
    /// The ORC unwinder of the precise safety check (`--check orc`), when
    /// this kernel has one; without it the check is the conservative scan.
    fn unwinder(&self) -> Option<&crate::linux::unwind::OrcUnwinder> {
        None
    }
}

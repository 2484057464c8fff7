//! The patcher's vocabulary: the types every layer speaks, with no knowledge
//! of any layer. Nothing here imports anything else of the crate, so every
//! other module may import it.
//!
//! - [`arena`]: the patch arena's guest-physical range and its one rule;
//! - [`backend`]: the hypervisor seam (stop, registers, guest-physical
//!   memory, resume) and a stopped vCPU's state;
//! - [`backend_wrap`]: backends around a backend, every method forwarded;
//! - [`mem`]: kernel-virtual memory, the seam between architecture and OS
//!   knowledge;
//! - [`phys_filter`]: which guest-physical addresses a guest pointer may
//!   lead to (never device memory or a hole);
//! - [`ram`]: the kernel's view of guest-physical memory and the arena's
//!   rule against it (never guest RAM);
//! - [`symbols`]: a kernel's symbol table (duplicates kept, qualifiers);
//! - [`module`]: a module loaded in the guest and the identity a patch keeps of it;
//! - [`tasks`]: tasks and CPU stacks of a stopped guest, the CPU each vCPU is;
//! - [`check`]: what the safety check is asked (ranges, mode) and what it
//!   finds (conflicts, summary);
//! - [`target_kind`]: the kinds of kernel (`testguest`, `linux`);
//! - [`error`]: one formatter for an error and its sources.

pub mod arena;
pub mod backend;
pub mod backend_wrap;
pub mod check;
pub mod error;
pub mod mem;
pub mod module;
pub mod phys_filter;
pub mod ram;
pub mod symbols;
pub mod target_kind;
pub mod tasks;

pub use arena::{ArenaError, ArenaRange};
pub use backend::{Backend, BackendError, VcpuState};
pub use check::{CheckMode, CheckRange, CheckSummary, Conflict, Fallback, Incremental, IncrementalSummary};
pub use error::chain;
pub use mem::{BufferMemory, KernelMemory, MemError};
pub use module::{LoadedModule, ModuleIdentity, MODULE_STATE_COMING, MODULE_STATE_GOING, MODULE_STATE_LIVE};
pub use phys_filter::PhysFilter;
pub use ram::{check_arena, ArenaUse, RamKind, RamMap, RamSource};
pub use symbols::{LookupError, Qualifier, Symbol, SymbolKind, SymbolTable};
pub use target_kind::TargetKind;
pub use tasks::{CpuStack, GuestTasks, TargetError, TaskEvidence, TaskInfo, TaskList, DISPUTE_PAUSES};

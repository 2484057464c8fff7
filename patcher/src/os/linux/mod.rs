//! Linux knowledge: where the kernel keeps its symbols, types, tasks and
//! unwind tables, read through [`crate::model::mem::KernelMemory`] from a live guest
//! or from the image file.
//!
//! - `layout`: the kernel image mapping from page tables (slide, physical base).
//! - `kallsyms_locate` / `kallsyms`: the symbol table, found by structure.
//! - `notes`: build-id and banner.
//! - `btf`: the embedded type information.
//! - `tasks`: the agentless task walk; `task_struct`: what it knows of a
//!   task (offsets from BTF, a task as read); `task_read`: one task read in
//!   a few spans of aligned words.
//! - `sched_quiet`: the pause's re-read when the scheduler was quiet since
//!   the incremental pre-check (switch and fork counters unchanged).
//! - `agent`: the guest agent's descriptor as a task source (checked against the walk).
//! - `cpustacks`: each CPU's IRQ, exception and entry stacks, agentless.
//! - `modules`: loaded modules (text, ORC tables, symbols).
//! - `orc`: the ORC unwind tables (located, parsed, looked up); `orc_object`:
//!   ORC rows of a relocatable object (patch code in the arena).
//! - `unwind`: the ORC unwinder over guest stacks (the precise safety check
//!   built on it is `crate::safety`).
//! - `view`: a stopped guest's tasks from agent and/or walk, and the
//!   unwinder for its kernel and modules; `task_list`: the one list of
//!   stacks (and vCPU to CPU map) the safety check gets from them.
//! - `ram`: the kernel's memory map (`e820_table`, the `iomem_resource`
//!   tree) for the arena check.
//! - `image`: the bzImage / vmlinux file offline.
//! - `kernel`: all of the above tied together.

pub mod agent;
pub mod btf;
pub mod cpustacks;
pub mod direct_map;
pub mod image;
pub mod kallsyms;
pub mod kallsyms_locate;
pub mod kernel;
pub mod layout;
pub mod modules;
pub mod notes;
pub mod orc;
pub mod orc_object;
pub mod ram;
#[cfg(test)]
mod ram_tests;
pub mod sched_quiet;
pub mod symbols;
pub mod task_list;
pub mod task_read;
pub mod task_struct;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod task_list_tests;
pub mod tasks;
pub mod unwind;
pub mod view;
/// Fixtures (kallsyms tables, BTF blobs) for tests and the fuzz seeds.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testutil;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod unwind_tests;

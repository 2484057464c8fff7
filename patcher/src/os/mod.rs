//! Operating-system knowledge, read-only: where a kernel keeps its symbols,
//! types, tasks and unwind tables, read through [`crate::model::mem::KernelMemory`].
//!
//! - [`linux`]: stock Linux (x86-64, 6.1): kallsyms, BTF, tasks, the guest
//!   agent, CPU stacks, modules, ORC, the unwinder, the image file;
//! - [`elf`]: a kernel given as an ELF file with a symbol table (the test
//!   guest, and the image a test-guest patch is built against).

pub mod elf;
pub mod linux;

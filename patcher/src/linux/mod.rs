//! Linux knowledge: where the kernel keeps its symbols, types, tasks and
//! unwind tables, read through [`crate::mem::KernelMemory`] from a live guest
//! or from the image file.

pub mod image;
pub mod kallsyms;
pub mod kallsyms_locate;

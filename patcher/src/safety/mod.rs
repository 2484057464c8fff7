//! The stop-the-world safety check: with every vCPU stopped, prove that no
//! vCPU and no task is executing, or will return into, code being replaced.
//!
//! - [`conservative`]: Ksplice's word scan of every live stack
//!   (`--check conservative`);
//! - [`orc`]: the precise check (`--check orc`): ORC unwinds of every task
//!   and of every vCPU from its registers, conservative per stack where an
//!   unwind cannot be trusted;
//! - [`cpu_stacks`]: which of a CPU's own stacks (IRQ, exception, entry)
//!   can hold a live return address.
//!
//! Inputs and results are the vocabulary of [`crate::model::check`].

pub mod conservative;
pub mod cpu_stacks;
pub mod orc;
#[cfg(test)]
mod orc_tests;

//! The stop-the-world safety check: with every vCPU stopped, prove that no
//! vCPU and no task is executing, or will return into, code being replaced.
//! [`check`] is the one entry point; it takes the stopped vCPUs, the CPU
//! each one is and the stacks a kernel kind listed ([`CheckInput`]), and
//! returns every conflict and a summary of what was checked and how.
//!
//! - `scan`: Ksplice's word scan, and the conservative check built on it
//!   (`--check conservative`);
//! - `orc`: the precise check (`--check orc`): ORC unwinds of every task,
//!   the scan per stack where an unwind cannot be trusted;
//! - `vcpus`: which task each vCPU runs, its RIP, its unwind from its
//!   registers;
//! - [`cpu_stacks`]: which of a CPU's own stacks (IRQ, exception, entry)
//!   can hold a live return address, and which CPU a vCPU on one is;
//! - `findings`: conflicts (named by function and owner) and the summary;
//! - [`incremental`]: which tasks keep the verdict of a check made with the
//!   guest running (the scheduler's evidence says they did not run since).
//!
//! Inputs and results are the vocabulary of [`crate::model::check`] and
//! [`crate::model::tasks`]; finding the stacks is the kernel's business
//! (for Linux, `crate::os::linux::task_list`).

pub mod cpu_stacks;
mod findings;
pub mod incremental;
mod orc;
#[cfg(test)]
mod orc_tests;
mod scan;
mod vcpus;

use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::{CheckMode, CheckRange, CheckSummary, Conflict, SymbolTable, TargetError, TaskList};
use crate::os::linux::unwind::OrcUnwinder;
use findings::Findings;

/// The stopped guest as the check sees it.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// Every vCPU's registers.
    pub vcpus: &'a [VcpuState],
    /// The guest CPU number of each vCPU (same order), when known; without
    /// it a running task is found by its stack holding the vCPU's RSP, and
    /// every CPU stack counts as live.
    pub vcpu_cpus: &'a [Option<u32>],
    /// Tasks and CPU stacks.
    pub tasks: &'a TaskList,
}

/// Runs the check in `mode`. [`CheckMode::Orc`] needs `unwinder`; without
/// one the conservative check runs and the summary says so.
pub fn check(
    mode: CheckMode,
    unwinder: Option<&OrcUnwinder>,
    mem: &mut dyn KernelMemory,
    symbols: &SymbolTable,
    input: CheckInput<'_>,
    ranges: &[CheckRange],
) -> Result<(Vec<Conflict>, CheckSummary), TargetError> {
    let mut f = Findings::new(mode, symbols, ranges);
    match unwinder.filter(|_| mode == CheckMode::Orc) {
        Some(u) => orc::check(u, mem, &input, &mut f)?,
        None => {
            if mode == CheckMode::Orc {
                f.fallback("all".into(), "no ORC unwinder for this kernel".into());
            }
            scan::conservative(mem, &input, &mut f)?;
        }
    }
    Ok(f.finish())
}

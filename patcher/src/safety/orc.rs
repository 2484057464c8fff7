//! The precise check (`--check orc`): instead of every word of every stack,
//! the return addresses an ORC unwind proves (and each vCPU's RIP and every
//! interrupted instruction on the way) are tested against the ranges being
//! replaced, so a stale code address left in a dead local is no conflict.
//! Where an unwind cannot be trusted, that stack is scanned word by word
//! ([`super::scan::scan`]) and the summary says which and why, so the check
//! is never less safe than the conservative one:
//!
//! - each vCPU in kernel mode is unwound from its registers
//!   ([`super::vcpus`]);
//! - each task that no vCPU's unwind covered and that is not on a CPU is
//!   unwound from its saved frame; failing that, its stack is scanned from
//!   the saved SP (a saved SP inside the top `pt_regs` means a task in user
//!   mode: nothing to unwind);
//! - a task that claims to be on a CPU but that no vCPU's unwind reached is
//!   scanned whole (caught mid-switch), and so is one without a saved SP on
//!   its stack;
//! - a CPU stack no vCPU's unwind went through holds nothing live and is
//!   skipped (hard and soft interrupts never sleep).

use super::findings::{task_label, Findings, Owner};
use super::scan::scan;
use super::{vcpus, CheckInput};
use crate::model::mem::KernelMemory;
use crate::model::TargetError;
use crate::os::linux::unwind::{OrcUnwinder, Start, PT_REGS_SIZE};

/// Runs the ORC check into `f`.
pub(super) fn check(u: &OrcUnwinder, mem: &mut dyn KernelMemory, input: &CheckInput<'_>, f: &mut Findings<'_>) -> Result<(), TargetError> {
    let covered = vcpus::unwind_all(u, mem, input, f)?;
    for (t, _) in input.tasks.tasks.iter().zip(&covered.tasks).filter(|(_, c)| !**c) {
        match t.saved_sp.filter(|sp| t.stack.contains(sp)) {
            // The task runs in user mode: only its user registers (pt_regs)
            // are on its kernel stack, no kernel frame.
            Some(sp) if !t.on_cpu && sp >= t.stack.end.saturating_sub(PT_REGS_SIZE) => f.sum.unwound += 1,
            Some(sp) if !t.on_cpu => {
                let w = u.unwind(mem, Start::Sleeping { saved_sp: sp }, std::slice::from_ref(&t.stack));
                match &w.unreliable {
                    None => f.frames(Owner::Task(t), &w),
                    Some(why) => {
                        f.fallback(task_label(t), why.clone());
                        scan(mem, f, Owner::Task(t), sp..t.stack.end)?;
                    }
                }
            }
            _ => {
                let why = if t.on_cpu { "on a CPU but reached by no vCPU's unwind" } else { "no saved stack pointer on its stack" };
                f.fallback(task_label(t), why.into());
                scan(mem, f, Owner::Task(t), t.stack.clone())?;
            }
        }
    }
    f.sum.idle_cpu_stacks = covered.cpu_stacks.iter().filter(|l| !**l).count();
    Ok(())
}

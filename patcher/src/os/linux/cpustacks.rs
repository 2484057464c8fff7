//! The stacks that belong to a CPU rather than a task, found without the
//! agent (6.1 x86-64; kallsyms for the per-CPU variables, BTF for layouts):
//! - the IRQ stack: per-CPU `hardirq_stack_ptr` points at its top-most
//!   word; it is `THREAD_SIZE` (IRQ_STACK_SIZE) long;
//! - the IST exception stacks: per-CPU `cea_exception_stacks` points at the
//!   CPU's `struct cea_exception_stacks` in the cpu_entry_area; each
//!   `<NAME>_stack` member is one stack (the VC ones exist only in SEV-ES
//!   guests: an unmapped one is left out);
//! - the entry stack: `entry_stack_page` of the same `struct cpu_entry_area`.

use super::btf::Btf;
use super::kallsyms::Kallsyms;
use super::tasks::{per_cpu_offsets, TaskError, THREAD_SIZE};
use crate::model::mem::KernelMemory;
use crate::model::CpuStack;

const EXCEPTION_STACKS: [(&str, &str); 6] =
    [("DF_stack", "df"), ("NMI_stack", "nmi"), ("DB_stack", "db"), ("MCE_stack", "mce"), ("VC_stack", "vc"), ("VC2_stack", "vc2")];

/// Every CPU's stacks. `with_irq`: include the IRQ stacks.
pub fn cpu_stacks<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, btf: &Btf, with_irq: bool) -> Result<Vec<CpuStack>, TaskError> {
    let offs = per_cpu_offsets(mem, k, 1)?;
    let ces = btf.find_struct("cea_exception_stacks").ok_or_else(|| TaskError::MissingType("struct cea_exception_stacks".into()))?;
    let cea = btf.find_struct("cpu_entry_area").ok_or_else(|| TaskError::MissingType("struct cpu_entry_area".into()))?;
    let member = |s: u32, name: &str| btf.member(s, name).ok_or_else(|| TaskError::MissingType(format!("{name} in the cpu_entry_area types")));
    let estacks_off = member(cea, "estacks")?.offset;
    let entry = member(cea, "entry_stack_page")?;
    let hsp = k.first_addr("hardirq_stack_ptr").ok_or(TaskError::MissingSymbol("hardirq_stack_ptr"))?;
    let ces_ptr = k.first_addr("cea_exception_stacks").ok_or(TaskError::MissingSymbol("cea_exception_stacks"))?;
    let mut out = Vec::new();
    for (cpu, base) in offs.iter().enumerate() {
        let cpu = cpu as u32;
        if with_irq {
            let top = mem.read_u64(base.wrapping_add(hsp))?;
            if top != 0 {
                let end = top.wrapping_add(8);
                out.push(CpuStack { cpu, kind: "irq".into(), range: end.wrapping_sub(THREAD_SIZE)..end });
            }
        }
        let es = mem.read_u64(base.wrapping_add(ces_ptr))?;
        if es == 0 {
            continue;
        }
        for (name, kind) in EXCEPTION_STACKS {
            let m = member(ces, name)?;
            let size = m.size.unwrap_or(0);
            let start = es + m.offset;
            // Present only when mapped (VC stacks: SEV-ES guests only).
            if size == 0 || mem.read_u64(start).is_err() {
                continue;
            }
            out.push(CpuStack { cpu, kind: kind.into(), range: start..start + size });
        }
        let area = es.wrapping_sub(estacks_off);
        let start = area + entry.offset;
        out.push(CpuStack { cpu, kind: "entry".into(), range: start..start + entry.size.unwrap_or(4096) });
    }
    Ok(out)
}

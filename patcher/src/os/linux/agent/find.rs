//! Where the agent's descriptor is. Three ways, best first:
//! - the doorbell: the VMM recorded the guest-physical address the agent
//!   announced (0: it unloaded) — nothing to find;
//! - the agent module's own symbol `vsa_hdr` (module list and the module's
//!   symbol table, with BTF offsets): one short walk, and it also tells
//!   "no agent loaded" for sure;
//! - a scan of guest-physical memory for the header's magic, each hit
//!   confirmed by the header's own address and checksum (any backend, no
//!   BTF needed; as slow as reading that much memory).

use std::ops::Range;

use tracing::debug;

use super::layout::{self, HEADER_SIZE};
use super::AgentError;
use crate::model::backend::Backend;
use crate::os::linux::btf::Btf;
use crate::os::linux::kallsyms::Kallsyms;
use crate::os::linux::modules::{self, ModuleOffsets};
use crate::model::mem::KernelMemory;

/// The agent's module name.
pub const MODULE_NAME: &str = "vsplice_agent";
/// The agent's global that points at the descriptor header.
pub const HEADER_SYMBOL: &str = "vsa_hdr";

/// What the module list says about the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleAgent {
    /// No `vsplice_agent` module is loaded.
    NotLoaded,
    /// Loaded, but not (or no longer) publishing (loading, unloading).
    NoDescriptor,
    /// Its header's kernel-virtual address.
    Header(u64),
}

fn task_err(e: crate::os::linux::tasks::TaskError) -> AgentError {
    match e {
        crate::os::linux::tasks::TaskError::Memory(m) => AgentError::Memory(m),
        other => AgentError::Absent(format!("module list unreadable: {other}")),
    }
}

/// Asks the module list (needs BTF for `struct module`).
pub fn by_module<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, btf: &Btf) -> Result<ModuleAgent, AgentError> {
    let off = ModuleOffsets::from_btf(btf).map_err(task_err)?;
    let mods = modules::list_modules(mem, k, &off).map_err(task_err)?;
    let Some(m) = mods.iter().find(|m| m.name == MODULE_NAME) else {
        return Ok(ModuleAgent::NotLoaded);
    };
    if m.state != 0 {
        return Ok(ModuleAgent::NoDescriptor);
    }
    let syms = modules::module_symbols(mem, m, 1 << 16).map_err(task_err)?;
    let Some((_, addr, _)) = syms.iter().find(|(n, _, _)| n == HEADER_SYMBOL) else {
        return Err(AgentError::Absent(format!("module {MODULE_NAME} has no symbol {HEADER_SYMBOL} (another agent version?)")));
    };
    let hdr = mem.read_u64(*addr)?;
    Ok(if hdr == 0 { ModuleAgent::NoDescriptor } else { ModuleAgent::Header(hdr) })
}

/// The kernel-virtual address of guest-physical `gpa` in the direct map
/// (`page_offset_base`, randomized with KASLR).
pub fn direct_map_virt<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, gpa: u64) -> Result<u64, AgentError> {
    let sym = k.first_addr("page_offset_base").ok_or_else(|| AgentError::Absent("kallsyms has no page_offset_base".into()))?;
    Ok(mem.read_u64(sym)?.wrapping_add(gpa))
}

/// Statistics of a scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Bytes read.
    pub bytes: u64,
    /// Pages whose first words were the magic.
    pub magic_hits: u64,
    /// Chunks that could not be read in one piece (holes inside).
    pub holes: u64,
}

/// Scans `ranges` of guest-physical memory (page-aligned) for the header,
/// `chunk` bytes per read. A hit is a page that starts with the magic and
/// whose header says it is at that very address with a good checksum (or is
/// caught mid-update, which is still the descriptor). Returns the first.
pub fn scan_phys<B: Backend + ?Sized>(be: &mut B, ranges: &[Range<u64>], chunk: usize) -> (Option<u64>, ScanStats) {
    let chunk = chunk.max(4096) & !0xfff;
    let mut st = ScanStats::default();
    let mut buf = vec![0u8; chunk];
    for r in ranges {
        let mut at = r.start & !0xfff;
        while at < r.end {
            let n = (chunk as u64).min(r.end - at) as usize;
            // A chunk across a hole: page by page, unreadable pages skipped.
            let mut readable = vec![true; n.div_ceil(4096)];
            if be.read_phys(at, &mut buf[..n]).is_err() {
                st.holes += 1;
                for (i, page) in buf[..n].chunks_mut(4096).enumerate() {
                    readable[i] = be.read_phys(at + 4096 * i as u64, page).is_ok();
                }
            }
            st.bytes += n as u64;
            for (i, page) in buf[..n].chunks(4096).enumerate() {
                if !readable[i] || !layout::has_magic(page) || page.len() < HEADER_SIZE {
                    continue;
                }
                st.magic_hits += 1;
                let gpa = at + 4096 * i as u64;
                match layout::parse_header(page, Some(gpa)) {
                    Ok(_) | Err(AgentError::Busy { .. }) => {
                        debug!(gpa = format_args!("{gpa:#x}"), bytes = st.bytes, "agent descriptor found by scan");
                        return (Some(gpa), st);
                    }
                    Err(e) => debug!(gpa = format_args!("{gpa:#x}"), error = %e, "magic without a valid header"),
                }
            }
            at += n as u64;
        }
    }
    (None, st)
}

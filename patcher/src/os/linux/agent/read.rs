//! Reading the agent's descriptor from a stopped guest, either physically
//! (the doorbell's guest-physical address; the table through its page
//! list) or kernel-virtually (the header's direct-map address; the table
//! at its vmalloc address), with every check of [`super::layout`].

use super::layout::{self, AgentCpu, AgentTask, Header, F_LIVE, F_OVERFLOW, HEADER_SIZE, TASK_SIZE};
use super::AgentError;
use crate::model::backend::Backend;
use crate::model::mem::KernelMemory;
use crate::model::phys_filter::PhysFilter;

const PAGE: u64 = 4096;

/// A validated descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The header.
    pub header: Header,
    /// Per-CPU records.
    pub cpus: Vec<AgentCpu>,
    /// Guest-physical address of each page of the table.
    pub pages: Vec<u64>,
    /// The live entries.
    pub tasks: Vec<AgentTask>,
}

fn usable(h: &Header) -> Result<(), AgentError> {
    if h.flags & F_OVERFLOW != 0 {
        return Err(AgentError::Overflow { dropped: h.dropped });
    }
    if h.flags & F_LIVE == 0 {
        return Err(AgentError::Loading);
    }
    Ok(())
}

fn table_len(h: &Header) -> usize {
    h.task_count as usize * TASK_SIZE
}

impl Descriptor {
    /// Reads the descriptor whose header is at guest-physical `gpa`; a
    /// table page in the device window is refused `not_ram`, unread.
    pub fn read_phys<B: Backend + ?Sized>(be: &mut B, gpa: u64) -> Result<Self, AgentError> {
        let mut hb = vec![0u8; HEADER_SIZE];
        be.read_phys(gpa, &mut hb)?;
        let header = layout::parse_header(&hb, Some(gpa))?;
        usable(&header)?;
        let mut block = vec![0u8; header.block_size as usize];
        be.read_phys(gpa, &mut block)?;
        // The header again, from the same read as the rest: it must not have moved.
        if layout::parse_header(&block, Some(gpa))? != header {
            return Err(AgentError::Busy { seq: header.seq | 1 });
        }
        let (cpus, pages) = layout::parse_block(&header, &block)?;
        let len = table_len(&header);
        let mut table = vec![0u8; len];
        // Physically contiguous runs of the table's pages become one read each.
        let mut done = 0usize;
        while done < len {
            let first = done / PAGE as usize;
            let mut n = 1;
            let gpa = *pages.get(first).ok_or_else(|| AgentError::Corrupt("page list shorter than the table".into()))?;
            while (first + n) * (PAGE as usize) < len && pages.get(first + n).copied() == gpa.checked_add(n as u64 * PAGE) {
                n += 1;
            }
            let end = ((first + n) * PAGE as usize).min(len);
            // Guest-written physical addresses: never device memory.
            PhysFilter::architectural().check(gpa, (end - done) as u64)?;
            be.read_phys(gpa, &mut table[done..end])?;
            done = end;
        }
        let tasks = layout::parse_table(&header, &table)?;
        Ok(Self { header, cpus, pages, tasks })
    }

    /// Reads the descriptor whose header is at kernel-virtual `virt` (for a
    /// doorbell address: the direct map's base plus it). `phys`, when known,
    /// must be the header's own physical address.
    pub fn read_virt<M: KernelMemory + ?Sized>(mem: &mut M, virt: u64, phys: Option<u64>) -> Result<Self, AgentError> {
        let hb = mem.read_vec(virt, HEADER_SIZE)?;
        let header = layout::parse_header(&hb, phys)?;
        if header.self_virt != virt {
            return Err(AgentError::Corrupt(format!("header at {virt:#x} says it is at {:#x}", header.self_virt)));
        }
        usable(&header)?;
        let block = mem.read_vec(virt, header.block_size as usize)?;
        if layout::parse_header(&block, phys)? != header {
            return Err(AgentError::Busy { seq: header.seq | 1 });
        }
        let (cpus, pages) = layout::parse_block(&header, &block)?;
        let table = mem.read_vec(header.table_virt, table_len(&header))?;
        let tasks = layout::parse_table(&header, &table)?;
        Ok(Self { header, cpus, pages, tasks })
    }
}

//! The purpose-built test guest as a [`TargetKernel`]: symbols and build-id
//! from `testguest.elf` (not relocated: runtime = link addresses), the task
//! table `tg_task_table` (layout in `images/testguest/task_table.h`), and its
//! Linux-like kernel mapping (`PML4[511] -> PDPT[510] -> PD` of 2 MiB pages,
//! `__START_KERNEL_map` = `0xffffffff80000000`). Its RAM is its image plus,
//! with `tg.sleepers=N`, the sleepers' stacks (`tg_sleeper_area`, identity
//! mapped): an arena anywhere else above the image's end is free.
//!
//! Task table version 2 gives each task a switch counter (`switches`, bumped
//! with `saved_sp` under the table's seq at every switch away): the
//! incremental check's evidence ([`TaskInfo::evidence`]). Version 1 tables
//! (no counter) are still read, without evidence.

use std::ops::Range;
use std::path::Path;

use super::TargetKernel;
use crate::model::{GuestTasks, RamKind, RamMap, RamSource, TargetError, TargetKind, TaskEvidence, TaskInfo, TaskList};
use crate::os::elf::{ElfImage, ElfImageError};
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::symbols::SymbolTable;

/// `__START_KERNEL_map`: physical = virtual - this, for the kernel image.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// End of the 1 GiB the kernel image's page directory covers.
const KERNEL_PD_END: u64 = START_KERNEL_MAP + (1 << 30);
/// "VSPLTASK".
pub const TASK_MAGIC: u64 = 0x4b53_4154_4c50_5356;
/// Versions read: 1 (on_cpu a u64, no counter) and 2 (on_cpu and switches, u32 each).
const TASK_VERSIONS: [u32; 2] = [1, 2];
/// Tasks a table may list (64 scheduled + 16,384 sleepers in the guest).
const MAX_TASKS: u32 = 32768;
/// Largest sleepers' area believed (`tg_sleeper_area_size`).
const MAX_SLEEPER_AREA: u64 = 1 << 30;
/// The identity map's cacheable part, where the sleepers' stacks may be.
const IDENT_CACHED_END: u64 = 3 << 30;

/// The test guest, from its ELF image.
#[derive(Debug, Clone)]
pub struct TestGuest {
    image: ElfImage,
    task_table: u64,
    end: u64,
    root: u64,
    /// `tg_sleeper_area` and `tg_sleeper_area_size` (older images have neither).
    sleeper_area: Option<(u64, u64)>,
}

impl TestGuest {
    /// Opens `testguest.elf`.
    pub fn open(path: &Path) -> Result<Self, ElfImageError> {
        Self::from_image(ElfImage::open(path)?)
    }

    /// Uses an already parsed image.
    pub fn from_image(image: ElfImage) -> Result<Self, ElfImageError> {
        let need = |name: &str| {
            image
                .symbols()
                .resolve(name, None)
                .map(|s| s.addr)
                .map_err(|e| ElfImageError::NotElf(format!("not the vsplice test guest: {e}")))
        };
        let task_table = need("tg_task_table")?;
        let end = need("_end")?;
        let pml4 = need("tg_pml4")?;
        let root = image.phys_of(pml4).unwrap_or(pml4.wrapping_sub(START_KERNEL_MAP));
        let sleeper_area = need("tg_sleeper_area").ok().zip(need("tg_sleeper_area_size").ok());
        Ok(Self { image, task_table, end, root, sleeper_area })
    }

    /// The image (bytes at link addresses).
    pub fn image(&self) -> &ElfImage {
        &self.image
    }

    /// The sleepers' stacks (physical = virtual, identity map), when the
    /// guest made some and says so within bounds: page-aligned, at most
    /// [`MAX_SLEEPER_AREA`], above the image, inside the cached identity map.
    fn sleeper_area(&self, mem: &mut dyn KernelMemory) -> Option<Range<u64>> {
        let (at, size_at) = self.sleeper_area?;
        let (start, size) = (mem.read_u64(at).ok()?, mem.read_u64(size_at).ok()?);
        if size == 0 {
            return None;
        }
        let image_end = self.end.wrapping_sub(START_KERNEL_MAP);
        let end = start.checked_add(size)?;
        let ok = size <= MAX_SLEEPER_AREA && start % 4096 == 0 && start >= image_end && end <= IDENT_CACHED_END;
        if !ok {
            tracing::warn!(start = format_args!("{start:#x}"), size = format_args!("{size:#x}"), "tg_sleeper_area out of bounds: not counted as RAM");
        }
        ok.then_some(start..end)
    }
}

fn rd_u32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn rd_u64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

impl TargetKernel for TestGuest {
    fn kind(&self) -> TargetKind {
        TargetKind::TestGuest
    }

    fn build_id(&self) -> Option<&str> {
        self.image.build_id()
    }

    fn symbols(&self) -> &SymbolTable {
        self.image.symbols()
    }

    fn image_end(&self) -> u64 {
        self.end
    }

    fn arena_window(&self) -> Range<u64> {
        let start = (self.end + (2 << 20) - 1) & !((2 << 20) - 1);
        start..KERNEL_PD_END
    }

    fn page_table_root(&self) -> u64 {
        self.root
    }

    fn is_up(&self, mem: &mut dyn KernelMemory) -> Result<bool, TargetError> {
        // The BSP writes the magic last, once the table is complete; the
        // kernel half is mapped only after startup_64 filled the page tables.
        match mem.read_u64(self.task_table) {
            Ok(m) => Ok(m == TASK_MAGIC),
            Err(crate::model::mem::MemError::NotMapped { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn tasks(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], _source_at: Option<u64>) -> Result<GuestTasks, TargetError> {
        let hdr = mem.read_vec(self.task_table, 64)?;
        if rd_u64(&hdr, 0) != TASK_MAGIC {
            return Err(TargetError::NotUp("task table magic missing".into()));
        }
        let (version, entry_size, count, header_size) = (rd_u32(&hdr, 8), rd_u32(&hdr, 12), rd_u32(&hdr, 16), rd_u32(&hdr, 20));
        let seq = rd_u64(&hdr, 0x18);
        if seq & 1 == 1 {
            return Err(TargetError::Inconsistent(format!("tg_task_table seq {seq} is odd")));
        }
        if !TASK_VERSIONS.contains(&version) || entry_size < 64 || header_size < 64 || count > MAX_TASKS {
            return Err(TargetError::Malformed(format!(
                "version {version}, entry_size {entry_size}, header_size {header_size}, count {count}"
            )));
        }
        let entries = self.task_table + u64::from(header_size);
        let raw = mem.read_vec(entries, (count * entry_size) as usize)?;
        let mut tasks = Vec::with_capacity(count as usize);
        for (i, e) in raw.chunks_exact(entry_size as usize).enumerate() {
            let name_raw = &e[8..24];
            let name_len = name_raw.iter().position(|&b| b == 0).unwrap_or(name_raw.len());
            let base = rd_u64(e, 0x20);
            let size = rd_u64(e, 0x28);
            let (on_cpu, switches) = match version {
                1 => (rd_u64(e, 0x38) != 0, None),
                _ => (rd_u32(e, 0x38) != 0, Some(rd_u32(e, 0x3c))),
            };
            let saved_sp = if on_cpu { None } else { Some(rd_u64(e, 0x30)) };
            let id = rd_u64(e, 0);
            if size == 0 || size > (1 << 20) || base.checked_add(size).is_none() {
                return Err(TargetError::Malformed(format!("task {} stack {base:#x}+{size:#x}", rd_u64(e, 0))));
            }
            // The evidence of a switched-out task: its entry (the task
            // record), its id (tasks never exit, so the id is its identity),
            // its switch counter and saved SP, all read in one seq window.
            let evidence = switches.zip(saved_sp).map(|(n, sp)| TaskEvidence {
                addr: entries + (i as u64) * u64::from(entry_size),
                start_time: id,
                nvcsw: u64::from(n),
                nivcsw: 0,
                sp,
            });
            tasks.push(TaskInfo {
                id,
                name: String::from_utf8_lossy(&name_raw[..name_len]).into_owned(),
                cpu: Some(rd_u32(e, 0x1c)),
                stack: base..base + size,
                saved_sp,
                on_cpu,
                evidence,
            });
        }
        // Read the sequence again: a change means the table moved under us
        // (cannot happen with every vCPU stopped, but a backend may not stop all).
        let seq2 = mem.read_u64(self.task_table + 0x18)?;
        if seq2 != seq {
            return Err(TargetError::Inconsistent(format!("tg_task_table seq moved {seq} -> {seq2}")));
        }
        // Which CPU a vCPU is, the test guest does not say.
        Ok(GuestTasks { list: TaskList { tasks, cpu_stacks: Vec::new() }, vcpu_cpus: vec![None; vcpus.len()], source: "testguest", source_at: None })
    }

    /// The test guest's scheduler switches a task out by pushing its
    /// registers on its own stack and nothing else ever stores there:
    /// interrupts run on the current task's stack, sleepers are woken by
    /// the timer through their table entry only.
    fn owner_only_stacks(&self) -> bool {
        true
    }

    fn ram_map(&self, mem: &mut dyn KernelMemory) -> Option<RamMap> {
        // The test guest's rule: it uses no RAM above its image (page
        // tables, stacks and task table are all inside it) except the
        // sleepers' stacks, where it says they are.
        let end = self.image.phys_of(self.end).unwrap_or(self.end.wrapping_sub(START_KERNEL_MAP));
        let mut ranges = vec![(0..end, RamKind::Usable)];
        if let Some(area) = self.sleeper_area(mem) {
            ranges.push((area, RamKind::Usable));
        }
        Some(RamMap { sources: vec![RamSource { name: "testguest_image", complete: false, ranges }], unread: Vec::new() })
    }
}

//! The purpose-built test guest as a [`TargetKernel`]: symbols and build-id
//! from `testguest.elf` (not relocated: runtime = link addresses), the task
//! table `tg_task_table` (layout in `images/testguest/task_table.h`), and its
//! Linux-like kernel mapping (`PML4[511] -> PDPT[510] -> PD` of 2 MiB pages,
//! `__START_KERNEL_map` = `0xffffffff80000000`). Its RAM is its image:
//! an arena anywhere above the image's end is free.

use std::ops::Range;
use std::path::Path;

use super::TargetKernel;
use crate::model::{GuestTasks, RamKind, RamMap, RamSource, TargetError, TargetKind, TaskInfo, TaskList};
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
const TASK_VERSION: u32 = 1;
const MAX_TASKS: u32 = 4096;

/// The test guest, from its ELF image.
#[derive(Debug, Clone)]
pub struct TestGuest {
    image: ElfImage,
    task_table: u64,
    end: u64,
    root: u64,
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
        Ok(Self { image, task_table, end, root })
    }

    /// The image (bytes at link addresses).
    pub fn image(&self) -> &ElfImage {
        &self.image
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
        if version != TASK_VERSION || entry_size < 64 || header_size < 64 || count > MAX_TASKS {
            return Err(TargetError::Malformed(format!(
                "version {version}, entry_size {entry_size}, header_size {header_size}, count {count}"
            )));
        }
        let raw = mem.read_vec(self.task_table + u64::from(header_size), (count * entry_size) as usize)?;
        let mut tasks = Vec::with_capacity(count as usize);
        for e in raw.chunks_exact(entry_size as usize) {
            let name_raw = &e[8..24];
            let name_len = name_raw.iter().position(|&b| b == 0).unwrap_or(name_raw.len());
            let base = rd_u64(e, 0x20);
            let size = rd_u64(e, 0x28);
            let on_cpu = rd_u64(e, 0x38) != 0;
            if size == 0 || size > (1 << 20) || base.checked_add(size).is_none() {
                return Err(TargetError::Malformed(format!("task {} stack {base:#x}+{size:#x}", rd_u64(e, 0))));
            }
            tasks.push(TaskInfo {
                id: rd_u64(e, 0),
                name: String::from_utf8_lossy(&name_raw[..name_len]).into_owned(),
                cpu: Some(rd_u32(e, 0x1c)),
                stack: base..base + size,
                saved_sp: if on_cpu { None } else { Some(rd_u64(e, 0x30)) },
                on_cpu,
                // The test guest keeps no switch counters: every task is
                // checked at every pause.
                evidence: None,
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

    fn ram_map(&self, _mem: &mut dyn KernelMemory) -> Option<RamMap> {
        // The test guest's rule: it uses no RAM above its image (page
        // tables, stacks and task table are all inside it).
        let end = self.image.phys_of(self.end).unwrap_or(self.end.wrapping_sub(START_KERNEL_MAP));
        let ranges = vec![(0..end, RamKind::Usable)];
        Some(RamMap { sources: vec![RamSource { name: "testguest_image", complete: false, ranges }], unread: Vec::new() })
    }
}

//! The purpose-built test guest as a [`TargetKernel`]: symbols and build-id
//! from `testguest.elf` (not relocated: runtime = link addresses), the task
//! table `tg_task_table` (layout in `images/testguest/task_table.h`), and its
//! Linux-like kernel mapping (`PML4[511] -> PDPT[510] -> PD` of 2 MiB pages,
//! `__START_KERNEL_map` = `0xffffffff80000000`). Its RAM is its image plus,
//! with `tg.sleepers=N`, the sleepers' stacks (`tg_sleeper_area`, identity
//! mapped): an arena anywhere else above the image's end is free.
//!
//! The table's change ring (`testguest_ring`) lets the pause read only the
//! entries that changed since the incremental pre-check's read.
//!
//! Task table version 2 gives each task a switch counter (`switches`, bumped
//! with `saved_sp` under the table's seq at every switch away): the
//! incremental check's evidence ([`TaskInfo::evidence`]). Version 1 tables
//! (no counter) are still read, without evidence.

use std::ops::Range;
use std::path::Path;

use super::testguest_ring::{self as ring, Reread};
use super::testguest_table as table;
use super::TargetKernel;
use crate::model::{GuestTasks, RamKind, RamMap, RamSource, TargetError, TargetKind, TaskList};
use crate::os::elf::{ElfImage, ElfImageError};
use crate::model::backend::VcpuState;
use crate::model::mem::KernelMemory;
use crate::model::symbols::SymbolTable;

/// `__START_KERNEL_map`: physical = virtual - this, for the kernel image.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// End of the 1 GiB the kernel image's page directory covers.
const KERNEL_PD_END: u64 = START_KERNEL_MAP + (1 << 30);
pub use super::testguest_table::TASK_MAGIC;
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
    /// `tg_sleeper_area` and `tg_sleeper_area_size` (older images have
    /// neither); boxed to keep the struct small in enums that hold it.
    sleeper_area: Option<Box<(u64, u64)>>,
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
        let sleeper_area = need("tg_sleeper_area").ok().zip(need("tg_sleeper_area_size").ok()).map(Box::new);
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
        let (at, size_at) = *self.sleeper_area.clone()?;
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



impl TestGuest {
    /// The whole table, `recycle`'s storage reused.
    fn whole(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], recycle: Vec<crate::model::TaskInfo>) -> Result<GuestTasks, TargetError> {
        let (tasks, h) = table::read(mem, self.task_table, recycle)?;
        // The ring's count is worth handing back only when there is a ring.
        let changes = (h.ring != 0 && h.ring_size != 0).then_some(h.changes);
        Ok(GuestTasks { list: TaskList { tasks, cpu_stacks: Vec::new() }, vcpu_cpus: table::vcpu_cpus(vcpus), source: "testguest", source_at: None, changes, changed: None, reread: None })
    }
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
        self.whole(mem, vcpus, Vec::new())
    }

    /// With the change ring (`testguest_ring`): only the entries changed
    /// since `prev` was read are read again, and `changed` names them;
    /// otherwise the whole table, `prev`'s storage recycled.
    fn tasks_again(&self, mem: &mut dyn KernelMemory, vcpus: &[VcpuState], _source_at: Option<u64>, prev: GuestTasks, _retry: bool) -> Result<GuestTasks, TargetError> {
        let Some(since) = prev.changes else {
            return self.whole(mem, vcpus, prev.list.tasks);
        };
        match ring::read_changed(mem, self.task_table, prev.list.tasks, since)? {
            Reread::Changed(tasks, changed, changes) => Ok(GuestTasks {
                list: TaskList { tasks, cpu_stacks: Vec::new() },
                vcpu_cpus: table::vcpu_cpus(vcpus),
                source: "testguest",
                source_at: None,
                changes: Some(changes),
                changed: Some(changed),
                reread: Some("changes"),
            }),
            Reread::Whole(tasks, why) => {
                tracing::debug!(why, "task table change ring cannot tell: the whole table read");
                self.whole(mem, vcpus, tasks)
            }
        }
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

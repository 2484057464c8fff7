//! Guest RAM layout, the e820 map with the patch arena, and the Linux zero page.
//!
//! Guest RAM starts at 0 and runs up to the 32-bit MMIO hole at
//! [`MMIO_GAP_START`]; the rest continues at [`RAM_64BIT_START`]. The e820 map
//! gives the guest: RAM below the EBDA, the EBDA and BIOS area reserved (MP
//! table and ACPI tables live there), RAM from 1 MiB up, and the *patch arena*
//! reserved: 2 MiB aligned at the top of guest RAM, so the guest allocator
//! never touches it and vsplice can map new code there. The zero page
//! (`struct boot_params`) carries the map, the command line, the initrd and
//! the RSDP address to the kernel.

use std::ops::Range;

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ARENA_ALIGN, BIOS_END, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START, MIN_MEMORY_SIZE,
    MIN_USABLE_MEMORY, MMIO_GAP_START, RAM_64BIT_START, ZERO_PAGE_START,
};

/// `boot_flag` magic of the setup header.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic of the setup header ("HdrS").
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: undefined boot loader.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` written when there is no bzImage header.
pub const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// `heap_end_ptr`: end of the real-mode heap, relative to the setup code
/// (conventional value; the 64-bit entry does not use it).
pub const HEAP_END_PTR: u16 = 0xfe00 - 0x200;
/// Command-line limit of kernels older than boot protocol 2.06.
const OLD_CMDLINE_MAX: u32 = 255;
/// Most e820 entries the zero page holds.
pub const E820_MAX_ENTRIES: usize = linux_loader::bootparam::E820_MAX_ENTRIES_ZEROPAGE;
/// Page size for initrd alignment.
const PAGE_SIZE: u64 = 0x1000;

/// Errors building the memory map or the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// Less guest memory than [`MIN_MEMORY_SIZE`].
    #[error("guest memory of {size:#x} bytes is below the minimum {min:#x}")]
    MemoryTooSmall {
        /// Requested memory.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// Arena size zero or not a multiple of 2 MiB.
    #[error("patch arena size {size:#x} is not a non-zero multiple of 2 MiB")]
    ArenaSize {
        /// Requested arena size.
        size: u64,
    },
    /// No RAM region can hold the arena.
    #[error("patch arena of {size:#x} bytes does not fit in guest RAM")]
    ArenaDoesNotFit {
        /// Requested arena size.
        size: u64,
    },
    /// The arena leaves less than [`MIN_USABLE_MEMORY`] to the guest.
    #[error("patch arena of {size:#x} bytes leaves too little RAM to the guest")]
    ArenaTooLarge {
        /// Requested arena size.
        size: u64,
    },
    /// More e820 entries than the zero page holds.
    #[error("{count} e820 entries, the zero page holds {max}")]
    TooManyE820Entries {
        /// Entries given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// The command line is longer than the kernel (or we) accept.
    #[error("command line of {size} bytes exceeds the limit of {max}")]
    CmdlineTooLong {
        /// Size including the terminating NUL.
        size: usize,
        /// Largest accepted size including the NUL.
        max: usize,
    },
    /// No usable RAM below the limit can hold the initrd.
    #[error("no room for an initrd of {size:#x} bytes")]
    InitrdNoRoom {
        /// Initrd size.
        size: u64,
    },
    /// The zero page is not in guest memory.
    #[error("cannot write the zero page")]
    Write(#[source] vm_memory::GuestMemoryError),
}

impl BootParamsError {
    /// Stable machine-readable name of the error.
    pub fn cause(&self) -> &'static str {
        match self {
            BootParamsError::MemoryTooSmall { .. } => "memory_too_small",
            BootParamsError::ArenaSize { .. } => "arena_size",
            BootParamsError::ArenaDoesNotFit { .. } => "arena_does_not_fit",
            BootParamsError::ArenaTooLarge { .. } => "arena_too_large",
            BootParamsError::TooManyE820Entries { .. } => "e820_too_many_entries",
            BootParamsError::CmdlineTooLong { .. } => "cmdline_too_long",
            BootParamsError::InitrdNoRoom { .. } => "initrd_no_room",
            BootParamsError::Write(_) => "zero_page_write",
        }
    }
}

/// Kind of an e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (`E820_TYPE_RAM`, 1).
    Ram,
    /// Reserved (`E820_TYPE_RESERVED`, 2).
    Reserved,
}

impl E820Kind {
    /// The numeric type Linux reads.
    pub fn as_u32(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One range of the e820 memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

impl E820Entry {
    /// End address (exclusive).
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

fn align_down(v: u64, align: u64) -> u64 {
    v - v % align
}

fn ram_ranges(mem_size: u64) -> Vec<Range<u64>> {
    let mut ranges = Vec::with_capacity(2);
    ranges.push(0..mem_size.min(MMIO_GAP_START));
    if mem_size > MMIO_GAP_START {
        ranges.push(RAM_64BIT_START..RAM_64BIT_START + (mem_size - MMIO_GAP_START));
    }
    ranges
}

/// The guest RAM regions for `mem_size` bytes of RAM, for
/// `GuestMemoryMmap::from_ranges`: below the MMIO hole, and above 4 GiB.
pub fn guest_ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    ram_ranges(mem_size)
        .into_iter()
        .map(|r| (GuestAddress(r.start), (r.end - r.start) as usize))
        .collect()
}

/// The e820 map for `mem_size` bytes of guest RAM with a patch arena of
/// `arena_size` bytes, and the arena's guest-physical range. The arena is the
/// top 2 MiB-aligned `arena_size` bytes of the highest RAM region that holds
/// it; a sub-2 MiB tail above it (memory sizes not a multiple of 2 MiB) is
/// left out of the map.
pub fn e820_map(
    mem_size: u64,
    arena_size: u64,
) -> Result<(Vec<E820Entry>, Range<u64>), BootParamsError> {
    if mem_size < MIN_MEMORY_SIZE {
        return Err(BootParamsError::MemoryTooSmall {
            size: mem_size,
            min: MIN_MEMORY_SIZE,
        });
    }
    if arena_size == 0 || !arena_size.is_multiple_of(ARENA_ALIGN) {
        return Err(BootParamsError::ArenaSize { size: arena_size });
    }
    if mem_size - arena_size.min(mem_size) < MIN_USABLE_MEMORY {
        return Err(BootParamsError::ArenaTooLarge { size: arena_size });
    }
    let regions = ram_ranges(mem_size);
    let (arena_region, arena) = regions
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, r)| {
            let top = align_down(r.end, ARENA_ALIGN);
            let start = top.checked_sub(arena_size)?;
            (start >= r.start.max(HIMEM_START)).then_some((i, start..top))
        })
        .ok_or(BootParamsError::ArenaDoesNotFit { size: arena_size })?;

    let mut map = Vec::new();
    let mut push = |addr: u64, end: u64, kind| {
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    push(0, EBDA_START, E820Kind::Ram);
    push(EBDA_START, BIOS_END, E820Kind::Reserved);
    for (i, r) in regions.iter().enumerate() {
        let start = r.start.max(HIMEM_START);
        if i == arena_region {
            push(start, arena.start, E820Kind::Ram);
            push(arena.start, arena.end, E820Kind::Reserved);
        } else {
            push(start, r.end, E820Kind::Ram);
        }
    }
    Ok((map, arena))
}

/// The highest page-aligned address at or above `lowest` where `initrd_size`
/// bytes fit in e820 RAM and end at or below `max_addr` (inclusive, like the
/// setup header's `initrd_addr_max`). Pass the kernel's end as `lowest`.
pub fn initrd_load_addr_above(
    e820: &[E820Entry],
    initrd_size: u64,
    lowest: u64,
    max_addr: u64,
) -> Result<u64, BootParamsError> {
    let limit = max_addr.saturating_add(1);
    e820.iter()
        .filter(|e| e.kind == E820Kind::Ram)
        .filter_map(|e| {
            let end = e.end().min(limit);
            let start = align_down(end.checked_sub(initrd_size)?, PAGE_SIZE);
            (start >= e.addr.max(lowest)).then_some(start)
        })
        .max()
        .ok_or(BootParamsError::InitrdNoRoom { size: initrd_size })
}

/// Where to load an initrd of `initrd_size` bytes: page-aligned at the top of
/// usable RAM above 1 MiB (so below the arena) and ending at or below `max_addr`.
pub fn initrd_load_addr(
    e820: &[E820Entry],
    initrd_size: u64,
    max_addr: u64,
) -> Result<u64, BootParamsError> {
    initrd_load_addr_above(e820, initrd_size, HIMEM_START, max_addr)
}

/// Builds the zero page. `setup_header` is the bzImage's header (from
/// linux-loader) or `None` for an ELF kernel; `cmdline_size` includes the
/// terminating NUL; `initrd` is `(address, size)`; `rsdp` 0 means no ACPI.
pub fn build_boot_params(
    setup_header: Option<setup_header>,
    cmdline_addr: u64,
    cmdline_size: usize,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    let mut max_cmdline = CMDLINE_MAX_SIZE;
    match setup_header {
        Some(hdr) => {
            params.hdr = hdr;
            let kernel_max = if hdr.version >= 0x206 {
                hdr.cmdline_size
            } else {
                OLD_CMDLINE_MAX
            };
            max_cmdline = max_cmdline.min(kernel_max as usize + 1);
            params.hdr.loadflags |= CAN_USE_HEAP;
            params.hdr.heap_end_ptr = HEAP_END_PTR;
            params.hdr.setup_data = 0;
            if params.hdr.kernel_alignment == 0 {
                params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
            }
        }
        None => {
            params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
            params.hdr.cmdline_size = cmdline_size as u32;
        }
    }
    if cmdline_size > max_cmdline {
        return Err(BootParamsError::CmdlineTooLong {
            size: cmdline_size,
            max: max_cmdline,
        });
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = cmdline_addr as u32;
    params.ext_cmd_line_ptr = (cmdline_addr >> 32) as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }

    if e820.len() > E820_MAX_ENTRIES {
        return Err(BootParamsError::TooManyE820Entries {
            count: e820.len(),
            max: E820_MAX_ENTRIES,
        });
    }
    for (i, e) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.as_u32(),
        };
    }
    params.e820_entries = e820.len() as u8;
    params.acpi_rsdp_addr = rsdp;
    Ok(params)
}

/// Builds the zero page (see [`build_boot_params`]) and writes it at
/// [`ZERO_PAGE_START`], the address to pass in RSI.
pub fn configure_boot_params(
    mem: &GuestMemoryMmap,
    setup_header: Option<setup_header>,
    cmdline_addr: u64,
    cmdline_size: usize,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<(), BootParamsError> {
    let params = build_boot_params(setup_header, cmdline_addr, cmdline_size, initrd, e820, rsdp)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootParamsError::Write)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "boot_params_tests.rs"]
mod tests;

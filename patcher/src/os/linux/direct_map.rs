//! Find the kernel's direct map of physical memory (`page_offset_base`,
//! randomized by CONFIG_RANDOMIZE_MEMORY) using only kernel-virtual reads:
//! probe the kernel-image area for `_text`, read the image until the first
//! hole, decode kallsyms from it and read the variable. A backend without
//! physical access can then read physical address P at `base + P`.

use tracing::debug;

use super::kallsyms::{Kallsyms, KallsymsError};
use super::kernel::KernelError;
use super::layout::{KERNEL_IMAGE_AREA_END, START_KERNEL_MAP};
use crate::model::mem::{KernelMemory, MemError};

const STEP: u64 = 2 << 20;

/// `page_offset_base`, plus the image start found on the way.
pub fn find_direct_map<M: KernelMemory + ?Sized>(mem: &mut M) -> Result<(u64, u64), KernelError> {
    let mut probe = [0u8; 8];
    let mut text = None;
    let mut va = START_KERNEL_MAP;
    while va < KERNEL_IMAGE_AREA_END {
        if mem.read(va, &mut probe).is_ok() {
            text = Some(va);
            break;
        }
        va += STEP;
    }
    let text = text.ok_or(KernelError::NoKernelMapping(MemError::NotMapped { vaddr: START_KERNEL_MAP }))?;
    // Read the contiguous image, 2 MiB at a time, until kallsyms decodes
    // (tried every 8 MiB) or the first hole.
    let mut image = Vec::new();
    let mut chunk = vec![0u8; STEP as usize];
    let mut at = text;
    let k = loop {
        let more = at < KERNEL_IMAGE_AREA_END && mem.read(at, &mut chunk).is_ok();
        if more {
            image.extend_from_slice(&chunk);
            at += STEP;
        }
        if !more || (at - text) % (4 * STEP) == 0 {
            match Kallsyms::locate_in(&image, text) {
                Ok(k) => break k,
                Err(e) if !more => return Err(e.into()),
                Err(_) => {}
            }
        }
    };
    debug!(text = format_args!("{text:#x}"), bytes = image.len(), "kernel image read through virtual addresses");
    let pob = k.first_addr("page_offset_base").ok_or_else(|| KallsymsError::Corrupt("no page_offset_base symbol".into()))?;
    let base = mem.read_u64(pob)?;
    Ok((base, text))
}

//! What an ELF kernel image must be before linux-loader copies it into
//! guest memory: at least one `PT_LOAD` segment (else the guest runs into
//! zeroed memory forever), a sane program-header table, and every segment
//! (`p_paddr` .. `p_paddr + p_memsz`, which is where the loader puts it)
//! inside one RAM range of the e820 map the VMM built: never over the patch
//! arena, past the end of guest memory, or wrapping. linux-loader checks
//! none of this (`p_memsz` is not looked at; only `p_filesz` bytes are
//! copied, and a segment over the arena lands in it).

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use thiserror::Error;

/// Most program headers read.
pub const MAX_PHDRS: u16 = 256;
const PT_LOAD: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: u16 = 56;

/// Why an ELF kernel image is refused before loading.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfCheckError {
    /// Not a 64-bit little-endian ELF header, or cut short.
    #[error("not a complete 64-bit little-endian ELF header ({0})")]
    Header(String),
    /// No program headers, or none of type PT_LOAD.
    #[error("the ELF image has no loadable segment (e_phnum {phnum}): nothing would be loaded")]
    NoSegments {
        /// Program headers found.
        phnum: u16,
    },
    /// More program headers than [`MAX_PHDRS`], or entries of the wrong size.
    #[error("the ELF program-header table is unusable: {0}")]
    BadPhdrs(String),
    /// A segment's memory size is below its file size, or it wraps.
    #[error("ELF segment {index} at {paddr:#x} has p_memsz {memsz:#x} (p_filesz {filesz:#x})")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// p_paddr.
        paddr: u64,
        /// p_memsz.
        memsz: u64,
        /// p_filesz.
        filesz: u64,
    },
    /// A segment outside guest RAM (over the patch arena, past the end of
    /// memory, in the MMIO hole).
    #[error("ELF segment {index} [{start:#x}, {end:#x}) is not inside guest RAM (it would cover the patch arena, a hole or memory past the end)")]
    OutsideRam {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// End (exclusive, saturated).
        end: u64,
    },
}

impl ElfCheckError {
    /// Stable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Header(_) => "elf_bad_header",
            Self::NoSegments { .. } => "elf_no_segments",
            Self::BadPhdrs(_) => "elf_bad_phdrs",
            Self::BadSegment { .. } => "elf_bad_segment",
            Self::OutsideRam { .. } => "elf_segment_outside_ram",
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(o..o + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

/// Checks the ELF image read from `f` against `ram` (the e820 RAM ranges).
pub fn check_elf<R: Read + Seek>(f: &mut R, ram: &[Range<u64>]) -> Result<(), ElfCheckError> {
    let io = |e: std::io::Error| ElfCheckError::Header(e.to_string());
    let mut eh = [0u8; EHDR_SIZE];
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.read_exact(&mut eh).map_err(io)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err(ElfCheckError::Header("not ELF64 little-endian".into()));
    }
    let (phoff, phentsize, phnum) = (u64_at(&eh, 0x20), u16_at(&eh, 0x36), u16_at(&eh, 0x38));
    if phnum == 0 {
        return Err(ElfCheckError::NoSegments { phnum });
    }
    if phnum > MAX_PHDRS || phentsize < PHDR_SIZE {
        return Err(ElfCheckError::BadPhdrs(format!("{phnum} entries of {phentsize} bytes")));
    }
    let len = usize::from(phnum) * usize::from(phentsize);
    let mut table = vec![0u8; len];
    f.seek(SeekFrom::Start(phoff)).map_err(|e| ElfCheckError::BadPhdrs(e.to_string()))?;
    f.read_exact(&mut table).map_err(|e| ElfCheckError::BadPhdrs(format!("table at {phoff:#x}: {e}")))?;
    let mut loads = 0;
    for (index, ph) in table.chunks_exact(usize::from(phentsize)).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        loads += 1;
        let (paddr, filesz, memsz) = (u64_at(ph, 0x18), u64_at(ph, 0x20), u64_at(ph, 0x28));
        let end = paddr.checked_add(memsz).filter(|_| memsz >= filesz).ok_or(ElfCheckError::BadSegment { index, paddr, memsz, filesz })?;
        if memsz == 0 {
            continue;
        }
        if !ram.iter().any(|r| r.start <= paddr && end <= r.end) {
            return Err(ElfCheckError::OutsideRam { index, start: paddr, end });
        }
    }
    if loads == 0 {
        return Err(ElfCheckError::NoSegments { phnum });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    /// An ELF64 header and `segs` program headers `(type, paddr, filesz, memsz)`.
    fn elf(segs: &[(u32, u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&PHDR_SIZE.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for &(t, paddr, filesz, memsz) in segs {
            let mut ph = vec![0u8; usize::from(PHDR_SIZE)];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            ph[0x18..0x20].copy_from_slice(&paddr.to_le_bytes());
            ph[0x20..0x28].copy_from_slice(&filesz.to_le_bytes());
            ph[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
            b.extend_from_slice(&ph);
        }
        b
    }

    /// 512 MiB with the arena's 4 MiB at the top reserved.
    fn ram() -> Vec<Range<u64>> {
        vec![0..0x9fc00, MIB..508 * MIB]
    }

    fn check(b: Vec<u8>) -> Result<(), ElfCheckError> {
        check_elf(&mut Cursor::new(b), &ram())
    }

    #[test]
    fn a_kernel_in_ram_passes() {
        assert_eq!(check(elf(&[(PT_LOAD, 16 * MIB, 0x1000, 0x2000), (4, 0, 0, 0)])), Ok(()));
    }

    #[test]
    fn no_program_headers_or_no_load_segment_is_refused() {
        assert_eq!(check(elf(&[])).unwrap_err().cause(), "elf_no_segments");
        assert_eq!(check(elf(&[(4, 16 * MIB, 0x10, 0x10)])).unwrap_err().cause(), "elf_no_segments");
    }

    #[test]
    fn segments_over_the_arena_past_memory_or_huge_are_refused() {
        // Over the arena (508..512 MiB).
        assert_eq!(check(elf(&[(PT_LOAD, 507 * MIB, 0x10, 2 * MIB)])).unwrap_err().cause(), "elf_segment_outside_ram");
        // Past the end of guest memory.
        assert_eq!(check(elf(&[(PT_LOAD, 600 * MIB, 0x10, 0x10)])).unwrap_err().cause(), "elf_segment_outside_ram");
        // p_memsz 2^40.
        assert_eq!(check(elf(&[(PT_LOAD, 16 * MIB, 0x10, 1 << 40)])).unwrap_err().cause(), "elf_segment_outside_ram");
        // Wrapping, and memsz below filesz.
        assert_eq!(check(elf(&[(PT_LOAD, u64::MAX - 4, 0x10, 0x10)])).unwrap_err().cause(), "elf_bad_segment");
        assert_eq!(check(elf(&[(PT_LOAD, 16 * MIB, 0x20, 0x10)])).unwrap_err().cause(), "elf_bad_segment");
    }

    #[test]
    fn bad_headers_and_tables_are_refused_without_large_reads() {
        assert_eq!(check(b"\x7fELF".to_vec()).unwrap_err().cause(), "elf_bad_header");
        let mut b = elf(&[(PT_LOAD, 16 * MIB, 0x10, 0x10)]);
        b[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(check(b).unwrap_err().cause(), "elf_bad_phdrs");
        let mut b = elf(&[(PT_LOAD, 16 * MIB, 0x10, 0x10)]);
        b[0x20..0x28].copy_from_slice(&(1u64 << 50).to_le_bytes());
        assert_eq!(check(b).unwrap_err().cause(), "elf_bad_phdrs");
    }
}

//! The kernel image file offline: a bzImage's compressed payload (found via
//! the setup header's `payload_offset`/`payload_length`) decompressed to the
//! vmlinux ELF, whose loadable segments are readable at their link
//! addresses through [`KernelMemory`].

use std::path::Path;

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection};
use thiserror::Error;

use crate::mem::{KernelMemory, MemError};

/// Why an image could not be opened.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a bzImage / not a vmlinux ELF.
    #[error("not a kernel image: {0}")]
    Format(String),
    /// The payload uses a compression this build does not decode.
    #[error("unsupported payload compression: {0}")]
    Compression(&'static str),
    /// Decompression failed.
    #[error("payload decompression failed")]
    Decompress(#[source] std::io::Error),
}

impl ImageError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Format(_) => "bad_image",
            Self::Compression(_) => "unsupported_compression",
            Self::Decompress(_) => "decompress",
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    vaddr: u64,
    file_off: usize,
    filesz: usize,
    memsz: usize,
}

/// The vmlinux ELF, readable at link addresses.
#[derive(Debug)]
pub struct ImageMemory {
    elf: Vec<u8>,
    segments: Vec<Segment>,
    /// `(name, vaddr, size)` of each allocated section.
    pub sections: Vec<(String, u64, u64)>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Extract and decompress the payload of a bzImage.
pub fn bzimage_payload(bz: &[u8]) -> Result<Vec<u8>, ImageError> {
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err(ImageError::Format("no HdrS setup header signature".into()));
    }
    let mut setup_sects = *bz.get(0x1f1).unwrap_or(&0) as usize;
    if setup_sects == 0 {
        setup_sects = 4;
    }
    let pm_start = (setup_sects + 1) * 512;
    let off = u32_at(bz, 0x248).ok_or_else(|| ImageError::Format("short header".into()))? as usize;
    let len = u32_at(bz, 0x24c).ok_or_else(|| ImageError::Format("short header".into()))? as usize;
    let payload = bz
        .get(pm_start + off..pm_start + off + len)
        .ok_or_else(|| ImageError::Format(format!("payload {off:#x}+{len:#x} outside the file")))?;
    decompress(payload)
}

fn decompress(p: &[u8]) -> Result<Vec<u8>, ImageError> {
    if p.starts_with(b"\xfd7zXZ\x00") {
        // The kernel appends the uncompressed size (le32) after the stream,
        // so decode exactly one stream and stop at its end.
        let mut stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
            .map_err(|e| ImageError::Decompress(std::io::Error::other(e)))?;
        let mut out: Vec<u8> = Vec::with_capacity(p.len() * 5);
        let mut input = p;
        loop {
            if out.capacity() - out.len() < 1 << 20 {
                out.reserve(16 << 20);
            }
            let before_in = stream.total_in();
            let status = stream
                .process_vec(input, &mut out, liblzma::stream::Action::Finish)
                .map_err(|e| ImageError::Decompress(std::io::Error::other(e)))?;
            let used = (stream.total_in() - before_in) as usize;
            input = &input[used..];
            if status == liblzma::stream::Status::StreamEnd {
                break;
            }
            if used == 0 && input.is_empty() && out.capacity() > out.len() {
                return Err(ImageError::Decompress(std::io::Error::other("xz stream ends early")));
            }
        }
        return Ok(out);
    }
    if p.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        return lz4_legacy(p);
    }
    if p.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(p.len() * 4);
        // Trailing bytes after the gzip member (the appended size) are ignored.
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(p), &mut out).map_err(ImageError::Decompress)?;
        return Ok(out);
    }
    let name = if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if p.starts_with(b"BZh") {
        "bzip2"
    } else if p.starts_with(&[0x5d, 0x00, 0x00]) {
        "lzma"
    } else if p.starts_with(b"\x89LZO") {
        "lzo"
    } else {
        "unknown"
    };
    Err(ImageError::Compression(name))
}

/// LZ4 "legacy" frames as the kernel writes them: the magic, then blocks
/// each preceded by its compressed size (le32) and decompressing to at most
/// 8 MiB; the kernel appends the uncompressed size (le32) at the very end.
fn lz4_legacy(p: &[u8]) -> Result<Vec<u8>, ImageError> {
    const MAGIC: u32 = 0x184c_2102;
    const CHUNK: usize = 8 << 20;
    let bad = |why: &str| ImageError::Decompress(std::io::Error::other(format!("lz4: {why}")));
    let mut out = Vec::with_capacity(p.len() * 3);
    let mut o = 4usize;
    while o + 4 <= p.len() {
        let size = u32_at(p, o).ok_or_else(|| bad("truncated"))? as usize;
        if size as u32 == MAGIC {
            o += 4; // a new legacy stream
            continue;
        }
        if o + 4 + size > p.len() {
            break; // the appended uncompressed size, not a block
        }
        let start = out.len();
        out.resize(start + CHUNK, 0);
        let n = lz4_flex::block::decompress_into(&p[o + 4..o + 4 + size], &mut out[start..]).map_err(|e| bad(&e.to_string()))?;
        out.truncate(start + n);
        o += 4 + size;
    }
    if out.is_empty() {
        return Err(bad("no blocks"));
    }
    Ok(out)
}

impl ImageMemory {
    /// Open a bzImage or a vmlinux ELF file.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let data = std::fs::read(path).map_err(|source| ImageError::Io { path: path.display().to_string(), source })?;
        Self::from_bytes(data)
    }

    /// From the bytes of a bzImage or a vmlinux ELF.
    pub fn from_bytes(data: Vec<u8>) -> Result<Self, ImageError> {
        let elf = if data.starts_with(b"\x7fELF") { data } else { bzimage_payload(&data)? };
        Self::from_elf(elf)
    }

    fn from_elf(elf: Vec<u8>) -> Result<Self, ImageError> {
        let file = ElfFile64::<Endianness>::parse(&*elf).map_err(|e| ImageError::Format(format!("vmlinux ELF: {e}")))?;
        let endian = file.endian();
        let mut segments = Vec::new();
        let phdrs = file.elf_header().program_headers(endian, &*elf).map_err(|e| ImageError::Format(e.to_string()))?;
        for ph in phdrs {
            if ph.p_type(endian) == object::elf::PT_LOAD {
                segments.push(Segment {
                    vaddr: ph.p_vaddr(endian),
                    file_off: ph.p_offset(endian) as usize,
                    filesz: ph.p_filesz(endian) as usize,
                    memsz: ph.p_memsz(endian) as usize,
                });
            }
        }
        let sections = file
            .sections()
            .filter(|s| s.address() != 0 || s.name() == Ok(".data..percpu"))
            .map(|s| (s.name().unwrap_or("?").to_string(), s.address(), s.size()))
            .collect();
        if segments.is_empty() {
            return Err(ImageError::Format("vmlinux has no loadable segments".into()));
        }
        Ok(Self { elf, segments, sections })
    }

    /// A section by name: `(vaddr, size)`.
    pub fn section(&self, name: &str) -> Option<(u64, u64)> {
        self.sections.iter().find(|(n, _, _)| n == name).map(|(_, a, s)| (*a, *s))
    }

    /// The file bytes backing `[vaddr, vaddr+len)` when entirely in one segment's file part.
    pub fn slice(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.segments.iter().find_map(|s| {
            let off = vaddr.checked_sub(s.vaddr)? as usize;
            if off.checked_add(len)? <= s.filesz {
                self.elf.get(s.file_off + off..s.file_off + off + len)
            } else {
                None
            }
        })
    }

    /// The size of the decompressed vmlinux.
    pub fn elf_len(&self) -> usize {
        self.elf.len()
    }
}

impl KernelMemory for ImageMemory {
    fn read(&mut self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let err = || MemError::NotInImage { vaddr, len: buf.len() as u64 };
        let seg = self
            .segments
            .iter()
            .find(|s| vaddr.checked_sub(s.vaddr).is_some_and(|o| (o as usize) < s.memsz))
            .ok_or_else(err)?;
        let off = (vaddr - seg.vaddr) as usize;
        if off + buf.len() > seg.memsz {
            return Err(err());
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let o = off + i;
            *b = if o < seg.filesz { self.elf.get(seg.file_off + o).copied().unwrap_or(0) } else { 0 };
        }
        Ok(())
    }
}

//! The kernel image file offline: a bzImage's compressed payload (found via
//! the setup header's `payload_offset`/`payload_length`) decompressed to the
//! vmlinux ELF, whose loadable segments are readable at their link
//! addresses through [`KernelMemory`].

use std::path::Path;

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection};
use thiserror::Error;

use crate::model::mem::{KernelMemory, MemError};

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
    /// The payload decompresses to more than any kernel's vmlinux.
    #[error("payload decompresses to more than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
}

impl ImageError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Format(_) => "bad_image",
            Self::Compression(_) => "unsupported_compression",
            Self::Decompress(_) => "decompress",
            Self::TooLarge { .. } => "payload_too_large",
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

/// The most a payload may decompress to (the input is untrusted; a
/// stripped vmlinux is tens of MiB).
const MAX_VMLINUX: usize = 512 << 20;

/// The most memory the XZ decoder may use (the kernel's dictionary is 32 MiB at most).
const XZ_MEMLIMIT: u64 = 256 << 20;

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
    decompress(payload, MAX_VMLINUX)
}

/// The payload `p` decompressed, refused past `limit` bytes.
fn decompress(p: &[u8], limit: usize) -> Result<Vec<u8>, ImageError> {
    if p.starts_with(b"\xfd7zXZ\x00") {
        // The kernel appends the uncompressed size (le32) after the stream,
        // so decode exactly one stream and stop at its end.
        let mut stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
            .map_err(|e| ImageError::Decompress(std::io::Error::other(e)))?;
        let mut out: Vec<u8> = Vec::with_capacity(p.len() * 5);
        let mut input = p;
        loop {
            if out.len() > limit {
                return Err(ImageError::TooLarge { limit });
            }
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
        return within(out, limit);
    }
    if p.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        return lz4_legacy(p, limit);
    }
    if p.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(p.len() * 4);
        // Trailing bytes after the gzip member (the appended size) are ignored.
        let gz = flate2::read::GzDecoder::new(p);
        std::io::Read::read_to_end(&mut std::io::Read::take(gz, limit as u64 + 1), &mut out).map_err(ImageError::Decompress)?;
        return within(out, limit);
    }
    if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return zstd(p, limit);
    }
    let name = if p.starts_with(b"BZh") {
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

/// `out`, unless it is longer than `limit`.
fn within(out: Vec<u8>, limit: usize) -> Result<Vec<u8>, ImageError> {
    if out.len() > limit {
        return Err(ImageError::TooLarge { limit });
    }
    Ok(out)
}

/// One zstd frame, its checksum verified when it has one; the kernel appends
/// the uncompressed size (le32) after the frame, which is not read. The
/// decoder refuses windows over 128 MiB (the kernel's `zstd -22` uses 128 MiB).
fn zstd(p: &[u8], limit: usize) -> Result<Vec<u8>, ImageError> {
    let bad = |why: String| ImageError::Decompress(std::io::Error::other(format!("zstd: {why}")));
    let mut dec = ruzstd::decoding::StreamingDecoder::new(p).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(p.len() * 4);
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut dec, limit as u64 + 1), &mut out).map_err(ImageError::Decompress)?;
    let out = within(out, limit)?;
    let frame = &dec.decoder;
    if !frame.is_finished() {
        return Err(bad("the frame ends early".into()));
    }
    if let (Some(want), Some(got)) = (frame.get_checksum_from_data(), frame.get_calculated_checksum()) {
        if want != got {
            return Err(bad(format!("checksum {got:#010x} != {want:#010x}")));
        }
    }
    Ok(out)
}

/// LZ4 "legacy" frames as the kernel writes them: the magic, then blocks
/// each preceded by its compressed size (le32) and decompressing to at most
/// 8 MiB; the kernel appends the uncompressed size (le32) at the very end.
fn lz4_legacy(p: &[u8], limit: usize) -> Result<Vec<u8>, ImageError> {
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
        if start > limit {
            return Err(ImageError::TooLarge { limit });
        }
        out.resize(start + CHUNK, 0);
        let n = lz4_flex::block::decompress_into(&p[o + 4..o + 4 + size], &mut out[start..]).map_err(|e| bad(&e.to_string()))?;
        out.truncate(start + n);
        o += 4 + size;
    }
    if out.is_empty() {
        return Err(bad("no blocks"));
    }
    within(out, limit)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// `b"vsplice zstd payload\n"` eight times, as `zstd -19` (v1.5.4)
    /// compresses it: a compressed block with a repeat, and a checksum.
    const REFERENCE_FRAME: [u8; 41] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x24, 0xa8, 0xe5, 0x00, 0x00, 0xa8, 0x76, 0x73, 0x70, 0x6c, 0x69, 0x63, 0x65, 0x20, 0x7a, 0x73, 0x74,
        0x64, 0x20, 0x70, 0x61, 0x79, 0x6c, 0x6f, 0x61, 0x64, 0x0a, 0x01, 0x00, 0x21, 0x48, 0x4d, 0x26, 0x64, 0x83, 0xee, 0x42,
    ];

    fn reference_content() -> Vec<u8> {
        b"vsplice zstd payload\n".repeat(8)
    }

    /// What the kernel's build puts in the payload: the compressed stream,
    /// then the uncompressed size (le32).
    fn with_size(stream: &[u8], size: usize) -> Vec<u8> {
        let mut p = stream.to_vec();
        p.extend_from_slice(&(size as u32).to_le_bytes());
        p
    }

    /// A bzImage around `payload`: one setup sector, the payload at the
    /// start of the protected-mode part.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut bz = vec![0u8; 1024];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(payload);
        bz
    }

    const VADDR: u64 = 0xffff_ffff_8100_0000;

    /// A vmlinux of one PT_LOAD segment at [`VADDR`]: `text`, then 16 bytes of bss.
    fn vmlinux(text: &[u8]) -> Vec<u8> {
        let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for v in [2u16, 0x3e] {
            e.extend_from_slice(&v.to_le_bytes()); // e_type ET_EXEC, e_machine x86-64
        }
        e.extend_from_slice(&1u32.to_le_bytes()); // e_version
        for v in [VADDR, 64, 0] {
            e.extend_from_slice(&v.to_le_bytes()); // e_entry, e_phoff, e_shoff
        }
        e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for v in [64u16, 56, 1, 64, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        }
        e.extend_from_slice(&object::elf::PT_LOAD.to_le_bytes());
        e.extend_from_slice(&5u32.to_le_bytes()); // R+X
        let off = 64 + 56;
        for v in [off, VADDR, 0x100_0000, text.len() as u64, text.len() as u64 + 16, 0x1000] {
            e.extend_from_slice(&v.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
        }
        e.extend_from_slice(text);
        e
    }

    #[test]
    fn a_zstd_frame_of_the_reference_encoder_decodes() {
        let content = reference_content();
        assert_eq!(decompress(&REFERENCE_FRAME, MAX_VMLINUX).unwrap(), content);
        let bz = bzimage(&with_size(&REFERENCE_FRAME, content.len()));
        assert_eq!(bzimage_payload(&bz).unwrap(), content, "the appended size is not read as a second frame");
    }

    #[test]
    fn a_zstd_bzimage_opens_to_its_vmlinux() {
        let text: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).chain(b"zstd vmlinux text".repeat(64)).collect();
        let elf = vmlinux(&text);
        let frame = ruzstd::encoding::compress_to_vec(&elf[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert!(frame.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) && frame.len() < elf.len());
        let mut img = ImageMemory::from_bytes(bzimage(&with_size(&frame, elf.len()))).unwrap();
        assert_eq!(img.elf_len(), elf.len());
        assert_eq!(img.slice(VADDR, text.len()), Some(&text[..]));
        let mut tail = [0xffu8; 20];
        img.read(VADDR + text.len() as u64 - 4, &mut tail).unwrap();
        assert_eq!(&tail[..4], &text[text.len() - 4..]);
        assert_eq!(tail[4..], [0u8; 16], "bss reads as zeros");
    }

    #[test]
    fn damaged_zstd_frames_are_errors_not_panics() {
        // Cut anywhere after the magic: the frame ends early.
        for len in 4..REFERENCE_FRAME.len() {
            let e = decompress(&REFERENCE_FRAME[..len], MAX_VMLINUX).unwrap_err();
            assert_eq!(e.cause(), "decompress", "cut at {len}: {e:?}");
        }
        // A wrong checksum.
        let mut bad = REFERENCE_FRAME;
        bad[40] ^= 1;
        assert_eq!(decompress(&bad, MAX_VMLINUX).unwrap_err().cause(), "decompress");
        // Any single flipped bit past the magic: an error or some output, never a panic.
        for i in 4..REFERENCE_FRAME.len() {
            for bit in 0..8 {
                let mut f = REFERENCE_FRAME;
                f[i] ^= 1 << bit;
                let _ = decompress(&f, MAX_VMLINUX);
            }
        }
        // A window of 2 GiB (window descriptor exponent 21): refused before any allocation.
        let huge = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3, 0x01, 0x00, 0x00];
        let e = decompress(&huge, MAX_VMLINUX).unwrap_err();
        let ImageError::Decompress(io) = &e else { panic!("{e:?}") };
        assert!(io.to_string().contains("window_size is too big"), "{io}");
    }

    #[test]
    fn payloads_that_decompress_past_the_bound_are_refused() {
        let content = reference_content();
        let limit = content.len() - 1;
        let gz = {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut enc, &content).unwrap();
            enc.finish().unwrap()
        };
        let xz = {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
            std::io::Write::write_all(&mut enc, &content).unwrap();
            enc.finish().unwrap()
        };
        for (what, p) in [("zstd", REFERENCE_FRAME.to_vec()), ("gzip", gz), ("xz", xz)] {
            let p = with_size(&p, content.len());
            assert_eq!(decompress(&p, content.len()).unwrap(), content, "{what} at the bound");
            let e = decompress(&p, limit).unwrap_err();
            assert_eq!(e.cause(), "payload_too_large", "{what}: {e:?}");
        }
    }
}

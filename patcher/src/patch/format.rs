//! The patch file: one self-contained file with a fixed header, the JSON
//! manifest and the ELF relocatable object.
//!
//! ```text
//! off  size  field
//! 0x00  8    magic "VSPLICE\0"
//! 0x08  4    format version (1), little-endian
//! 0x0c  4    header size (64)
//! 0x10  8    manifest length (bytes of JSON)
//! 0x18  8    object length (bytes of ELF)
//! 0x20  32   SHA-256 of manifest || object
//! 0x40       manifest JSON, then the object
//!            then nothing, or one signature block ([`super::sign`])
//! ```
//!
//! Everything in a patch file is untrusted: the whole file is at most
//! [`MAX_FILE_SIZE`] (the API's body bound too), [`read_bounded`] reads
//! only regular files and never more than that, the writer refuses what the
//! reader would, and the manifest is validated against the object
//! ([`super::manifest::Manifest::validate`]).

use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::manifest::{Manifest, ManifestError, MANIFEST_VERSION};

/// File magic.
pub const MAGIC: &[u8; 8] = b"VSPLICE\0";
/// File format version.
pub const FORMAT_VERSION: u32 = 1;
/// Header size.
pub const HEADER_SIZE: usize = 64;
/// Largest patch file accepted, signature block included (the API's
/// request body bound is this constant too).
pub const MAX_FILE_SIZE: u64 = 64 << 20;
/// Largest unsigned patch file: room is always left for a signature.
pub const MAX_UNSIGNED_SIZE: u64 = MAX_FILE_SIZE - SIG_BLOCK_LEN as u64;
/// Magic of the signature block ([`super::sign`] writes and checks it).
pub const SIG_MAGIC: &[u8; 8] = b"VSPSIG01";
/// Bytes of a key fingerprint in the block.
pub const FINGERPRINT_LEN: usize = 8;
/// Bytes of the signature block: magic, fingerprint, ed25519 signature.
pub const SIG_BLOCK_LEN: usize = 8 + FINGERPRINT_LEN + 64;

/// Why bytes are not a usable patch file. Every variant is a `bad_patch`.
#[derive(Debug, Error)]
pub enum FormatError {
    /// The file could not be read.
    #[error("cannot read patch file {path}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No vsplice magic.
    #[error("not a vsplice patch file (bad magic)")]
    NotAPatch,
    /// Unknown format version.
    #[error("patch file format {0} is not supported (this vsplice reads {FORMAT_VERSION})")]
    Version(u32),
    /// Shorter than its header says.
    #[error("patch file is truncated: {have} bytes, header says {want}")]
    Truncated {
        /// Bytes present.
        have: u64,
        /// Bytes expected.
        want: u64,
    },
    /// Checksum mismatch.
    #[error("patch file is corrupt (checksum mismatch)")]
    Corrupt,
    /// The manifest is not valid JSON of the expected shape.
    #[error("patch manifest is invalid")]
    Manifest(#[source] serde_json::Error),
    /// Unsupported manifest schema.
    #[error("patch manifest format {0} is not supported (this vsplice reads {MANIFEST_VERSION})")]
    ManifestVersion(u32),
    /// The object is not an ELF relocatable for x86-64.
    #[error("patch object is not an x86-64 ELF relocatable object: {0}")]
    NotElf(String),
    /// The header size field is not the format's.
    #[error("patch header size field is {0}; format {FORMAT_VERSION} has {HEADER_SIZE}")]
    HeaderSize(u32),
    /// Over the size bound (reading, or writing what the reader would refuse).
    #[error("patch file is {size} bytes; at most {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// Bytes after the object that are not one signature block.
    #[error("patch file has {0} bytes after its object that are not a signature block")]
    TrailingBytes(u64),
    /// Not a regular file (a FIFO, a device, a directory).
    #[error("{path} is not a regular file ({kind})")]
    NotRegular {
        /// The path.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// The manifest says something the file or the format forbids.
    #[error("patch manifest is invalid")]
    Invalid(#[source] ManifestError),
}

impl FormatError {
    /// Stable detail name (the cause is always `bad_patch`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } => "unreadable",
            Self::NotAPatch => "not_a_patch",
            Self::Version(_) => "format_version",
            Self::Truncated { .. } => "truncated",
            Self::Corrupt => "corrupt",
            Self::Manifest(_) => "bad_manifest",
            Self::ManifestVersion(_) => "manifest_version",
            Self::NotElf(_) => "not_elf",
            Self::HeaderSize(_) => "header_size",
            Self::TooLarge { .. } => "too_large",
            Self::TrailingBytes(_) => "trailing_bytes",
            Self::NotRegular { .. } => "not_a_file",
            Self::Invalid(e) => e.reason,
        }
    }
}

/// A parsed patch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchFile {
    /// The manifest.
    pub manifest: Manifest,
    /// The ELF relocatable object.
    pub object: Vec<u8>,
}

impl PatchFile {
    /// Serializes to the file format; refuses (`too_large`, or the
    /// manifest's own reason) what [`Self::parse`] would refuse.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        self.manifest.validate(&self.object).map_err(FormatError::Invalid)?;
        let manifest = serde_json::to_vec_pretty(&self.manifest).map_err(FormatError::Manifest)?;
        let size = (HEADER_SIZE + manifest.len() + self.object.len()) as u64;
        if size > MAX_UNSIGNED_SIZE {
            return Err(FormatError::TooLarge { size, max: MAX_UNSIGNED_SIZE });
        }
        let mut h = Sha256::new();
        h.update(&manifest);
        h.update(&self.object);
        let mut out = Vec::with_capacity(HEADER_SIZE + manifest.len() + self.object.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.object.len() as u64).to_le_bytes());
        out.extend_from_slice(&h.finalize());
        out.extend_from_slice(&manifest);
        out.extend_from_slice(&self.object);
        Ok(out)
    }

    /// Parses and checks a patch file (header, checksum, manifest, ELF
    /// class, the manifest against the object). A trailing signature block
    /// is allowed (not checked here: [`super::trust`]); any other trailing
    /// byte is refused.
    pub fn parse(b: &[u8]) -> Result<Self, FormatError> {
        let (body, _) = split_signature(b)?;
        let (hsize, mlen) = (HEADER_SIZE, read_u64(body, 16) as usize);
        let manifest_bytes = &body[hsize..hsize + mlen];
        let object = &body[hsize + mlen..];
        let mut h = Sha256::new();
        h.update(manifest_bytes);
        h.update(object);
        if h.finalize().as_slice() != &body[32..64] {
            return Err(FormatError::Corrupt);
        }
        let manifest: Manifest = serde_json::from_slice(manifest_bytes).map_err(FormatError::Manifest)?;
        if manifest.format != MANIFEST_VERSION {
            return Err(FormatError::ManifestVersion(manifest.format));
        }
        check_elf_rel(object)?;
        manifest.validate(object).map_err(FormatError::Invalid)?;
        Ok(Self { manifest, object: object.to_vec() })
    }

    /// Reads ([`read_bounded`]) and parses a patch file.
    pub fn read(path: &Path) -> Result<Self, FormatError> {
        Self::parse(&read_bounded(path)?)
    }
}

fn read_u64(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

/// The length of the unsigned patch file from its header (magic, version,
/// header size and lengths checked; the bytes may hold more: a signature).
pub fn body_len(b: &[u8]) -> Result<usize, FormatError> {
    if b.len() < 8 || &b[..8] != MAGIC {
        return Err(FormatError::NotAPatch);
    }
    if b.len() < HEADER_SIZE {
        return Err(FormatError::Truncated { have: b.len() as u64, want: HEADER_SIZE as u64 });
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let hsize = u32_at(12);
    if hsize as usize != HEADER_SIZE {
        return Err(FormatError::HeaderSize(hsize));
    }
    let want = (HEADER_SIZE as u64).saturating_add(read_u64(b, 16)).saturating_add(read_u64(b, 24));
    if want > MAX_UNSIGNED_SIZE {
        return Err(FormatError::TooLarge { size: want, max: MAX_UNSIGNED_SIZE });
    }
    if (b.len() as u64) < want {
        return Err(FormatError::Truncated { have: b.len() as u64, want });
    }
    Ok(want as usize)
}

/// Splits a patch file into the unsigned file and its signature block (if
/// any), by the header's lengths. Anything after the object that is not
/// exactly one block is `trailing_bytes`.
pub fn split_signature(b: &[u8]) -> Result<(&[u8], Option<&[u8]>), FormatError> {
    let (body, rest) = b.split_at(body_len(b)?);
    if rest.is_empty() {
        return Ok((body, None));
    }
    if rest.len() != SIG_BLOCK_LEN || &rest[..8] != SIG_MAGIC {
        return Err(FormatError::TrailingBytes(rest.len() as u64));
    }
    Ok((body, Some(rest)))
}

/// Reads a patch file: a regular file only (a FIFO would block, a device
/// never end) of at most [`MAX_FILE_SIZE`] bytes, checked before reading
/// and while reading. Opened non-blocking so that even opening a FIFO
/// cannot hang.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, FormatError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let shown = || path.display().to_string();
    let rerr = |source| FormatError::Read { path: shown(), source };
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(rerr)?;
    let meta = f.metadata().map_err(rerr)?;
    let t = meta.file_type();
    if !t.is_file() {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(FormatError::NotRegular { path: shown(), kind });
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(FormatError::TooLarge { size: meta.len(), max: MAX_FILE_SIZE });
    }
    let mut b = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE_SIZE + 1).read_to_end(&mut b).map_err(rerr)?;
    if b.len() as u64 > MAX_FILE_SIZE {
        return Err(FormatError::TooLarge { size: b.len() as u64, max: MAX_FILE_SIZE });
    }
    Ok(b)
}

/// Checks the ELF identification: 64-bit, little-endian, ET_REL, x86-64.
pub fn check_elf_rel(o: &[u8]) -> Result<(), FormatError> {
    if o.len() < 64 || &o[..4] != b"\x7fELF" {
        return Err(FormatError::NotElf("no ELF magic".into()));
    }
    let e_type = u16::from_le_bytes([o[16], o[17]]);
    let e_machine = u16::from_le_bytes([o[18], o[19]]);
    if o[4] != 2 || o[5] != 1 || e_type != object::elf::ET_REL || e_machine != object::elf::EM_X86_64 {
        return Err(FormatError::NotElf(format!("class {} data {} type {e_type} machine {e_machine}", o[4], o[5])));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::patch::manifest::{BuildInfo, TargetSpec};

    fn elf_rel() -> Vec<u8> {
        let mut o = vec![0u8; 64];
        o[..4].copy_from_slice(b"\x7fELF");
        o[4] = 2;
        o[5] = 1;
        o[16] = 1;
        o[18] = 62;
        o
    }

    fn file(object: Vec<u8>) -> PatchFile {
        PatchFile {
            manifest: Manifest {
                format: MANIFEST_VERSION,
                name: "t".into(),
                id: crate::patch::manifest::patch_id("t", &object),
                target: TargetSpec { kind: crate::model::TargetKind::TestGuest, build_id: None },
                cumulative: false,
                replacements: vec![],
                symbols: vec![],
                build: BuildInfo::default(),
                info: Default::default(),
            },
            object,
        }
    }

    #[test]
    fn round_trip_and_every_damage_has_its_reason() {
        let f = file(elf_rel());
        let b = f.to_bytes().unwrap();
        assert_eq!(PatchFile::parse(&b).unwrap(), f);
        assert_eq!(PatchFile::parse(&b[..b.len() - 1]).unwrap_err().reason(), "truncated");
        assert_eq!(PatchFile::parse(&b[..40]).unwrap_err().reason(), "truncated");
        assert_eq!(PatchFile::parse(b"\x7fELF\x02\x01\x01\x00").unwrap_err().reason(), "not_a_patch");
        let mut c = b.clone();
        let last = c.len() - 1;
        c[last] ^= 1;
        assert_eq!(PatchFile::parse(&c).unwrap_err().reason(), "corrupt");
        let mut v = b.clone();
        v[8] = 9;
        assert_eq!(PatchFile::parse(&v).unwrap_err().reason(), "format_version");
        let not_elf = file(b"#!/bin/sh\necho definitely not an object file, but long enough......".to_vec());
        assert_eq!(PatchFile::parse(&not_elf.to_bytes().unwrap()).unwrap_err().reason(), "not_elf");
    }

    #[test]
    fn header_size_fields_and_trailing_bytes_are_named() {
        let b = file(elf_rel()).to_bytes().unwrap();
        for (hsize, shown) in [(0u32, "header size field is 0"), (63, "header size field is 63"), (65, "header size field is 65")] {
            let mut h = b.clone();
            h[12..16].copy_from_slice(&hsize.to_le_bytes());
            let e = PatchFile::parse(&h).unwrap_err();
            assert_eq!(e.reason(), "header_size");
            assert!(e.to_string().contains(shown), "{e}");
        }
        let mut t = b.clone();
        t.push(0);
        assert_eq!(PatchFile::parse(&t).unwrap_err().reason(), "trailing_bytes");
        let mut t = b.clone();
        t.extend_from_slice(&[0u8; SIG_BLOCK_LEN]);
        assert_eq!(PatchFile::parse(&t).unwrap_err().reason(), "trailing_bytes");
        // Lengths whose sum wraps or passes the bound.
        let mut big = b.clone();
        big[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(PatchFile::parse(&big).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn the_writer_refuses_what_the_reader_would() {
        let mut f = file(vec![0u8; MAX_UNSIGNED_SIZE as usize]);
        f.object[..64].copy_from_slice(&elf_rel());
        f.manifest.id = crate::patch::manifest::patch_id("t", &f.object);
        assert_eq!(f.to_bytes().unwrap_err().reason(), "too_large");
        let mut f = file(elf_rel());
        f.manifest.id = "0123456789abcdef".into();
        assert_eq!(f.to_bytes().unwrap_err().reason(), "id_mismatch");
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("vsplice-format-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO with no writer: opening it must not block, nor reading.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(PatchFile::read(&fifo).unwrap_err().reason(), "not_a_file");
        assert_eq!(PatchFile::read(Path::new("/dev/zero")).unwrap_err().reason(), "not_a_file");
        assert_eq!(PatchFile::read(&dir).unwrap_err().reason(), "not_a_file");
        // A 2 GiB sparse file is refused by its size, before a byte is read.
        let sparse = dir.join("sparse.vsp");
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(2 << 30).unwrap();
        let e = PatchFile::read(&sparse).unwrap_err();
        assert_eq!(e.reason(), "too_large");
        assert!(e.to_string().contains(&(2u64 << 30).to_string()), "{e}");
        // A good file reads.
        let good = dir.join("good.vsp");
        std::fs::write(&good, file(elf_rel()).to_bytes().unwrap()).unwrap();
        assert_eq!(PatchFile::read(&good).unwrap(), file(elf_rel()));
        assert_eq!(PatchFile::read(&dir.join("none")).unwrap_err().reason(), "unreadable");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

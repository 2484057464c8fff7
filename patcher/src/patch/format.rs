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
//! ```

use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::manifest::{Manifest, MANIFEST_VERSION};

/// File magic.
pub const MAGIC: &[u8; 8] = b"VSPLICE\0";
/// File format version.
pub const FORMAT_VERSION: u32 = 1;
/// Header size.
pub const HEADER_SIZE: usize = 64;
/// Largest patch file accepted.
pub const MAX_FILE_SIZE: u64 = 64 << 20;

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
    /// Serializes to the file format.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let manifest = serde_json::to_vec_pretty(&self.manifest)?;
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

    /// Parses and checks a patch file (header, checksum, manifest, ELF class).
    pub fn parse(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < 8 || &b[..8] != MAGIC {
            return Err(FormatError::NotAPatch);
        }
        if b.len() < HEADER_SIZE {
            return Err(FormatError::Truncated { have: b.len() as u64, want: HEADER_SIZE as u64 });
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let hsize = u64::from(u32_at(12));
        let (mlen, olen) = (u64_at(16), u64_at(24));
        let want = hsize.saturating_add(mlen).saturating_add(olen);
        if hsize < HEADER_SIZE as u64 || want > MAX_FILE_SIZE || (b.len() as u64) < want {
            return Err(FormatError::Truncated { have: b.len() as u64, want });
        }
        let (hsize, mlen, olen) = (hsize as usize, mlen as usize, olen as usize);
        let manifest_bytes = &b[hsize..hsize + mlen];
        let object = &b[hsize + mlen..hsize + mlen + olen];
        let mut h = Sha256::new();
        h.update(manifest_bytes);
        h.update(object);
        if h.finalize().as_slice() != &b[32..64] {
            return Err(FormatError::Corrupt);
        }
        let manifest: Manifest = serde_json::from_slice(manifest_bytes).map_err(FormatError::Manifest)?;
        if manifest.format != MANIFEST_VERSION {
            return Err(FormatError::ManifestVersion(manifest.format));
        }
        check_elf_rel(object)?;
        Ok(Self { manifest, object: object.to_vec() })
    }

    /// Reads and parses a patch file.
    pub fn read(path: &Path) -> Result<Self, FormatError> {
        let b = std::fs::read(path).map_err(|source| FormatError::Read { path: path.display().to_string(), source })?;
        Self::parse(&b)
    }
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
                id: "0123456789abcdef".into(),
                target: TargetSpec { kind: crate::model::TargetKind::TestGuest, build_id: None },
                cumulative: false,
                replacements: vec![],
                symbols: vec![],
                build: BuildInfo::default(),
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
}

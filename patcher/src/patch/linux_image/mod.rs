//! A stock Linux kernel image file as the patch builder sees it
//! ([`LinuxImage`]: kallsyms at link addresses, the GNU build-id from the
//! notes, each function's bytes, and the masks of everything the kernel
//! rewrites in its own text at boot, [`rewrites`]). The Kbuild compilation
//! of a Linux patch is [`crate::patch::build::kbuild`].

pub mod relocs;
pub mod rewrites;
#[cfg(test)]
mod tests;

use std::path::Path;

use thiserror::Error;
use tracing::{debug, warn};

use crate::os::linux::image::{bzimage_payload, ImageError, ImageMemory};
use crate::os::linux::kallsyms::Kallsyms;
use crate::os::linux::kernel::{open_image, KernelError};
use crate::os::linux::notes;
use crate::model::mem::MemError;
use crate::patch::manifest::ByteMask;
use crate::os::linux::symbols::symbol_table;
use crate::model::SymbolTable;
use rewrites::Rewrites;

/// Why a Linux image cannot be used to build patches.
#[derive(Debug, Error)]
pub enum LinuxImageError {
    /// The file could not be read.
    #[error("cannot read kernel image {path}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a bzImage / vmlinux, or unreadable payload.
    #[error("not a usable kernel image")]
    Image(#[from] #[source] ImageError),
    /// kallsyms, notes or BTF could not be read.
    #[error("cannot identify the kernel in the image")]
    Kernel(#[from] #[source] KernelError),
    /// A boot-rewrite table could not be read.
    #[error("cannot read the kernel's boot-time rewrite tables")]
    Tables(#[from] #[source] MemError),
    /// A relocatable (KASLR) bzImage without its relocation table.
    #[error("the image's payload carries no vmlinux.relocs table (KASLR relocations cannot be tolerated)")]
    NoRelocs,
}

impl LinuxImageError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Read { .. } => "image_unreadable",
            Self::Image(e) => e.cause(),
            Self::Kernel(e) => e.cause(),
            Self::Tables(_) => "image_tables",
            Self::NoRelocs => "image_no_relocs",
        }
    }
}

/// A Linux kernel image file, at link addresses.
#[derive(Debug)]
pub struct LinuxImage {
    mem: ImageMemory,
    kallsyms: Kallsyms,
    symbols: SymbolTable,
    build_id: Option<String>,
    banner: Option<String>,
    rewrites: Rewrites,
}

impl LinuxImage {
    /// Opens a bzImage (or a vmlinux ELF, which carries no relocation table:
    /// then only a kernel booted without KASLR matches functions holding
    /// absolute addresses).
    pub fn open(path: &Path) -> Result<Self, LinuxImageError> {
        let data = std::fs::read(path).map_err(|source| LinuxImageError::Read { path: path.display().to_string(), source })?;
        let (payload, bz) = if data.starts_with(b"\x7fELF") { (data, false) } else { (bzimage_payload(&data)?, true) };
        let mut mem = ImageMemory::from_bytes(payload.clone())?;
        let info = open_image(&mut mem)?;
        let k = info.kallsyms;
        let range = match (k.first_addr("_text"), k.first_addr("_end")) {
            (Some(a), Some(b)) if a < b => a..b,
            _ => return Err(KernelError::Kallsyms(crate::os::linux::kallsyms::KallsymsError::Corrupt("no _text/_end".into())).into()),
        };
        let relocs = match relocs::parse(&payload, range) {
            Some(r) => r,
            None if bz => return Err(LinuxImageError::NoRelocs),
            None => {
                warn!("vmlinux ELF without relocation table: KASLR-relocated fields are not tolerated");
                relocs::Relocs::default()
            }
        };
        drop(payload);
        let rewrites = Rewrites::read(&mut mem, &k, &relocs)?;
        debug!(counts = ?rewrites.counts, "boot-time rewrite sites");
        Ok(Self {
            symbols: symbol_table(&k),
            build_id: info.build_id.as_deref().map(notes::hex),
            banner: info.banner,
            kallsyms: k,
            mem,
            rewrites,
        })
    }

    /// The symbols at link addresses.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// kallsyms at link addresses.
    pub fn kallsyms(&self) -> &Kallsyms {
        &self.kallsyms
    }

    /// GNU build-id, lower-case hex.
    pub fn build_id(&self) -> Option<&str> {
        self.build_id.as_deref()
    }

    /// `linux_banner`.
    pub fn banner(&self) -> Option<&str> {
        self.banner.as_deref()
    }

    /// The bytes at link address `addr` as the image file holds them.
    pub fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        self.mem.slice(addr, usize::try_from(len).ok()?)
    }

    /// Boot-time rewrite sites.
    pub fn rewrites(&self) -> &Rewrites {
        &self.rewrites
    }

    /// Run-pre masks of the function at `[addr, addr + size)`.
    pub fn masks(&self, addr: u64, size: u64) -> Vec<ByteMask> {
        self.rewrites.masks(addr, size)
    }
}

//! A kernel image file in ELF form (the test guest's `testguest.elf`, or a
//! vmlinux): its symbol table with source files for local symbols, its GNU
//! build-id, and its bytes at link addresses (for run-pre digests).

use std::path::Path;

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader, Sym};
use object::{elf, Endianness};
use thiserror::Error;

use crate::model::symbols::{Symbol, SymbolKind, SymbolTable};

/// Why an ELF kernel image could not be used.
#[derive(Debug, Error)]
pub enum ElfImageError {
    /// The file could not be read.
    #[error("cannot read kernel image {path}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a 64-bit ELF file.
    #[error("kernel image is not a 64-bit ELF file: {0}")]
    NotElf(String),
    /// No symbol table (stripped).
    #[error("kernel image has no symbol table (stripped?)")]
    NoSymbols,
}

impl ElfImageError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Read { .. } => "image_unreadable",
            Self::NotElf(_) => "image_not_elf",
            Self::NoSymbols => "image_no_symbols",
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    vaddr: u64,
    paddr: u64,
    offset: usize,
    filesz: u64,
    memsz: u64,
}

/// A parsed ELF kernel image.
#[derive(Debug, Clone)]
pub struct ElfImage {
    data: Vec<u8>,
    segments: Vec<Segment>,
    symbols: SymbolTable,
    build_id: Option<String>,
}

impl ElfImage {
    /// Reads and parses `path`.
    pub fn open(path: &Path) -> Result<Self, ElfImageError> {
        let data = std::fs::read(path).map_err(|source| ElfImageError::Read { path: path.display().to_string(), source })?;
        Self::parse(data)
    }

    /// Parses an image already in memory.
    pub fn parse(data: Vec<u8>) -> Result<Self, ElfImageError> {
        let (segments, syms, build_id) = {
            let file = ElfFile64::<Endianness>::parse(&*data).map_err(|e| ElfImageError::NotElf(e.to_string()))?;
            let e = file.endian();
            let hdr = file.elf_header();
            let mut segments = Vec::new();
            for ph in file.elf_program_headers() {
                if ph.p_type(e) == elf::PT_LOAD {
                    segments.push(Segment {
                        vaddr: ph.p_vaddr(e),
                        paddr: ph.p_paddr(e),
                        offset: ph.p_offset(e) as usize,
                        filesz: ph.p_filesz(e),
                        memsz: ph.p_memsz(e),
                    });
                }
            }
            let sections = hdr.sections(e, &*data).map_err(|e| ElfImageError::NotElf(e.to_string()))?;
            let symtab = sections.symbols(e, &*data, elf::SHT_SYMTAB).map_err(|e| ElfImageError::NotElf(e.to_string()))?;
            if symtab.is_empty() {
                return Err(ElfImageError::NoSymbols);
            }
            let mut syms = Vec::new();
            let mut file_name: Option<String> = None;
            for s in symtab.iter() {
                let name = String::from_utf8_lossy(s.name(e, symtab.strings()).unwrap_or_default()).into_owned();
                let st_type = s.st_type();
                if st_type == elf::STT_FILE {
                    file_name = Some(name);
                    continue;
                }
                if name.is_empty() || st_type == elf::STT_SECTION || s.st_shndx(e) == elf::SHN_UNDEF {
                    continue;
                }
                let local = s.st_bind() == elf::STB_LOCAL;
                let kind = match st_type {
                    elf::STT_FUNC => SymbolKind::Func,
                    elf::STT_OBJECT => SymbolKind::Object,
                    _ => SymbolKind::Other,
                };
                syms.push(Symbol {
                    name,
                    addr: s.st_value(e),
                    size: s.st_size(e),
                    kind,
                    local,
                    file: if local { file_name.clone() } else { None },
                    position: 0,
                });
            }
            let mut build_id = None;
            for sh in sections.iter() {
                if let Ok(Some(mut notes)) = sh.notes(e, &*data) {
                    while let Ok(Some(n)) = notes.next() {
                        if n.name() == b"GNU" && n.n_type(e) == elf::NT_GNU_BUILD_ID {
                            build_id = Some(hex(n.desc()));
                        }
                    }
                }
            }
            (segments, syms, build_id)
        };
        Ok(Self { data, segments, symbols: SymbolTable::new(syms), build_id })
    }

    /// The symbol table.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// GNU build-id as lower-case hex.
    pub fn build_id(&self) -> Option<&str> {
        self.build_id.as_deref()
    }

    /// `len` bytes at link address `vaddr` (file-backed part of a PT_LOAD only).
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        let end = vaddr.checked_add(len)?;
        let seg = self.segments.iter().find(|s| vaddr >= s.vaddr && end <= s.vaddr + s.filesz)?;
        let off = seg.offset + (vaddr - seg.vaddr) as usize;
        self.data.get(off..off + len as usize)
    }

    /// Physical load address of link address `vaddr`.
    pub fn phys_of(&self, vaddr: u64) -> Option<u64> {
        self.segments.iter().find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.memsz).map(|s| s.paddr + (vaddr - s.vaddr))
    }
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

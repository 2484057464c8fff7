//! The patch linker (the kernel module loader's job, done from outside): lays out a patch object's sections in the arena (code
//! slot: code and read-only data; data slot: data and bss), resolves every
//! relocation against the patch's own symbols and the target's symbols
//! (aliases and qualifiers from the manifest; ambiguous local names refused),
//! turns the fentry calls listed in `__mcount_loc` into 5-byte NOPs, does
//! what the special sections of a Kbuild object ask ([`special`]:
//! alternatives for the guest's CPU, jump labels frozen, WARN sites
//! dropped, return thunks aimed at the guest's) with what it knows of the
//! running kernel ([`env::LinkEnv`]), and refuses by name the sections the
//! table in `patcher/docs/livepatch.md` ("Linking") refuses.
//!
//! Loading is split in two so the arena can be allocated in between:
//! [`Object::parse`] + [`Object::layout`] give the sizes, [`Object::link`]
//! produces the bytes for the chosen addresses.

pub mod env;
pub mod error;
pub mod layout;
pub mod reloc;
pub mod sections;
pub mod special;
#[cfg(test)]
mod special_tests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use object::read::elf::ElfFile64;
use object::{Endianness, Object as _, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex, SymbolSection};

pub use env::{CheckEnv, CpuCaps, LinkEnv, UnknownEnv};
pub use error::LoadError;
use layout::Layout;
use sections::SectionClass;

use crate::patch::manifest::SymbolAlias;
use crate::model::{LookupError, SymbolTable};

/// The 5-byte NOP (`nopl 0x0(%rax,%rax,1)`) ftrace leaves at a function entry.
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// A parsed patch object with its layout.
#[derive(Debug)]
pub struct Object<'a> {
    file: ElfFile64<'a, Endianness>,
    layout: Layout,
}

/// A patch object linked at its final addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// Runtime address of the code part.
    pub code_addr: u64,
    /// Code and read-only data bytes.
    pub code: Vec<u8>,
    /// Runtime address of the data part.
    pub data_addr: u64,
    /// Data bytes (bss zeroed).
    pub data: Vec<u8>,
    /// Defined function and object symbols of the patch, at runtime addresses.
    pub symbols: HashMap<String, u64>,
    /// Fentry calls turned into NOPs.
    pub fentry_nops: usize,
    /// Target symbols the patch uses, name -> address.
    pub imports: Vec<(String, u64)>,
    /// What the loader did that the user should know (alternatives applied,
    /// jump labels frozen, WARN sites dropped).
    pub notes: Vec<String>,
}

impl<'a> Object<'a> {
    /// Parses the object and lays out its sections (refusing unsupported ones).
    pub fn parse(data: &'a [u8]) -> Result<Self, LoadError> {
        crate::patch::format::check_elf_rel(data).map_err(|e| LoadError::Elf(e.to_string()))?;
        let file = ElfFile64::<Endianness>::parse(data).map_err(|e| LoadError::Elf(e.to_string()))?;
        let layout = layout::plan(&file)?;
        Ok(Self { file, layout })
    }

    /// The layout (sizes and alignment of the code and data parts).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Is `name` a function defined by the patch?
    pub fn defines_function(&self, name: &str) -> bool {
        self.file.symbols().any(|s| {
            s.name() == Ok(name) && s.kind() == object::SymbolKind::Text && matches!(s.section(), SymbolSection::Section(i) if self.layout.class(i) == Some(SectionClass::Code))
        })
    }

    /// Runtime address of section `index` when linked at `code_addr` /
    /// `data_addr` (`None`: the section is not loaded).
    pub fn section_addr(&self, index: SectionIndex, code_addr: u64, data_addr: u64) -> Option<u64> {
        let p = self.layout.placed(index)?;
        Some(match p.class {
            SectionClass::Code | SectionClass::ReadOnly => code_addr.wrapping_add(p.offset),
            _ => data_addr.wrapping_add(p.offset),
        })
    }

    /// Sites (section, offset) of fentry calls listed in `__mcount_loc`.
    fn mcount_sites(&self) -> Result<HashSet<(SectionIndex, u64)>, LoadError> {
        let mut sites = HashSet::new();
        for s in self.file.sections() {
            if self.layout.class(s.index()) != Some(SectionClass::Mcount) {
                continue;
            }
            for (_, r) in s.relocations() {
                let RelocationTarget::Symbol(si) = r.target() else {
                    return Err(LoadError::Malformed("__mcount_loc relocation without symbol".into()));
                };
                let sym = self.file.symbol_by_index(si).map_err(|e| LoadError::Elf(e.to_string()))?;
                let SymbolSection::Section(sec) = sym.section() else {
                    return Err(LoadError::Malformed("__mcount_loc entry outside the object".into()));
                };
                let off = (sym.address() as i64).wrapping_add(r.addend()) as u64;
                sites.insert((sec, off));
            }
        }
        Ok(sites)
    }

    /// Resolves an undefined symbol through the aliases and the target's table.
    fn resolve_external(name: &str, aliases: &[SymbolAlias], target: &SymbolTable) -> Result<u64, LoadError> {
        let (tname, qual) = match aliases.iter().find(|a| a.name == name) {
            Some(a) => (a.target.as_str(), a.qualifier.as_ref()),
            None => (name, None),
        };
        match target.resolve(tname, qual) {
            Ok(s) => Ok(s.addr),
            Err(LookupError::NotFound { name, qual }) => Err(LoadError::UnknownSymbol { name, qual }),
            Err(LookupError::Ambiguous { name, candidates }) => Err(LoadError::Ambiguous { name, candidates }),
        }
    }

    /// Produces the bytes of the code and data parts for their runtime
    /// addresses, knowing nothing of the running kernel beyond its symbols
    /// (objects with alternatives or jump labels are refused).
    pub fn link(&self, code_addr: u64, data_addr: u64, aliases: &[SymbolAlias], target: &SymbolTable) -> Result<Linked, LoadError> {
        self.link_with(code_addr, data_addr, aliases, target, &mut UnknownEnv)
    }

    /// Produces the bytes of the code and data parts for their runtime
    /// addresses, with `env` telling what the running kernel is like.
    pub fn link_with(&self, code_addr: u64, data_addr: u64, aliases: &[SymbolAlias], target: &SymbolTable, env: &mut dyn LinkEnv) -> Result<Linked, LoadError> {
        let mut code = vec![0u8; self.layout.code_size as usize];
        let mut data = vec![0u8; self.layout.data_size as usize];
        for p in self.layout.sections.iter().filter(|p| p.class.loaded() && p.class != SectionClass::Bss) {
            let s = self.file.section_by_index(p.index).map_err(|e| LoadError::Elf(e.to_string()))?;
            let bytes = s.data().map_err(|e| LoadError::Elf(e.to_string()))?;
            let dst = match p.class {
                SectionClass::Code | SectionClass::ReadOnly => &mut code,
                _ => &mut data,
            };
            let start = p.offset as usize;
            let dst = start
                .checked_add(bytes.len())
                .and_then(|end| dst.get_mut(start..end))
                .ok_or_else(|| LoadError::Malformed(format!("section {} has more bytes than its size", p.name)))?;
            dst.copy_from_slice(bytes);
        }
        // Fentry calls -> NOPs; their relocations are skipped.
        let mcount = self.mcount_sites()?;
        let mut skip: HashSet<(SectionIndex, u64)> = HashSet::new();
        let mut fentry_nops = 0;
        for &(sec, off) in &mcount {
            let p = self.layout.placed(sec).filter(|p| p.class == SectionClass::Code).ok_or_else(|| {
                LoadError::Malformed(format!("__mcount_loc entry points into a non-code section at {off:#x}"))
            })?;
            let past = || LoadError::Malformed("__mcount_loc entry past its section".into());
            let at = usize::try_from(p.offset.checked_add(off).ok_or_else(past)?).map_err(|_| past())?;
            let site = at.checked_add(5).and_then(|end| code.get_mut(at..end)).ok_or_else(past)?;
            if site[0] == 0xe8 {
                site.copy_from_slice(&NOP5);
                skip.insert((sec, off.wrapping_add(1)));
                fentry_nops += 1;
            } else if site != NOP5 {
                return Err(LoadError::Malformed(format!("__mcount_loc site {}+{off:#x} is neither a call nor a 5-byte NOP", p.name)));
            }
        }
        let mut imports = Vec::new();
        for s in self.file.sections() {
            let Some(p) = self.layout.placed(s.index()) else { continue };
            let base = self.section_addr(s.index(), code_addr, data_addr).unwrap_or(0);
            for (off, r) in s.relocations() {
                let RelocationFlags::Elf { r_type } = r.flags() else {
                    return Err(LoadError::Malformed("non-ELF relocation".into()));
                };
                if skip.contains(&(s.index(), off)) {
                    continue;
                }
                if p.class == SectionClass::Bss {
                    return Err(LoadError::Malformed(format!("relocation in bss section {}", p.name)));
                }
                let value = match r.target() {
                    RelocationTarget::Symbol(si) => {
                        let sym = self.file.symbol_by_index(si).map_err(|e| LoadError::Elf(e.to_string()))?;
                        match sym.section() {
                            SymbolSection::Section(ts) => self.section_addr(ts, code_addr, data_addr).map(|b| b.wrapping_add(sym.address())).ok_or_else(|| {
                                let n = self.file.section_by_index(ts).ok().and_then(|x| x.name().ok().map(str::to_owned)).unwrap_or_default();
                                LoadError::Malformed(format!("{}+{off:#x} refers to section {n}, which is not loaded", p.name))
                            })?,
                            SymbolSection::Undefined => {
                                let name = sym.name().map_err(|e| LoadError::Elf(e.to_string()))?;
                                let v = Self::resolve_external(name, aliases, target)?;
                                imports.push((name.to_owned(), v));
                                v
                            }
                            SymbolSection::Absolute => sym.address(),
                            SymbolSection::Common => {
                                return Err(LoadError::Malformed(format!("common symbol {:?}: build with -fno-common", sym.name())))
                            }
                            _ => return Err(LoadError::Malformed(format!("symbol {:?} has no usable section", sym.name()))),
                        }
                    }
                    RelocationTarget::Absolute => 0,
                    _ => return Err(LoadError::Malformed("relocation against a section index".into())),
                };
                let buf = match p.class {
                    SectionClass::Code | SectionClass::ReadOnly => &mut code,
                    _ => &mut data,
                };
                // `off` comes from the object: past its section it is refused
                // by `reloc::apply` (the field does not fit), never wrapped.
                let at = usize::try_from(p.offset.saturating_add(off)).unwrap_or(usize::MAX);
                let field_end = buf.len().min(p.offset.saturating_add(p.size) as usize);
                reloc::apply(&mut buf[..field_end], at, r_type, value, r.addend(), base.wrapping_add(off), &p.name)?;
            }
        }
        let mut parts = special::Parts { code: &mut code, data: &mut data, code_addr, data_addr };
        let notes = self.finish_specials(&mut parts, aliases, target, env)?;
        imports.sort();
        imports.dedup();
        let mut symbols = HashMap::new();
        for sym in self.file.symbols() {
            if let (Ok(name), SymbolSection::Section(sec)) = (sym.name(), sym.section()) {
                if matches!(sym.kind(), object::SymbolKind::Text | object::SymbolKind::Data) && !name.is_empty() {
                    if let Some(b) = self.section_addr(sec, code_addr, data_addr) {
                        symbols.insert(name.to_owned(), b.wrapping_add(sym.address()));
                    }
                }
            }
        }
        Ok(Linked { code_addr, code, data_addr, data, symbols, fentry_nops, imports, notes })
    }
}

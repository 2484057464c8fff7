//! A read-only view of one Kbuild object built with `-ffunction-sections
//! -fdata-sections`: its functions and data objects by name, and every
//! relocation with its target put in a form that does not depend on where
//! the compiler happened to place things (a named symbol and an offset from
//! it, or the text of a merged string), so two builds of one file can be
//! compared relocation by relocation.

use std::collections::HashMap;

use object::read::elf::{ElfFile64, SectionHeader};
use object::{elf, Endianness, Object as _, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex, SymbolIndex, SymbolSection};

/// Where a relocation points, independent of section layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A named symbol (defined or not) plus an offset from its start.
    Sym {
        /// Symbol name.
        name: String,
        /// Offset from it (the relocation's S + A minus the symbol's address).
        off: i64,
    },
    /// A merged string, by its text, plus an offset from its first byte.
    Str {
        /// The string's bytes (without the NUL).
        text: Vec<u8>,
        /// Offset from the string's first byte.
        off: i64,
    },
    /// Anything else: a section by name and an offset into it.
    Sec {
        /// Section name.
        name: String,
        /// Offset into it.
        off: i64,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sym { name, off } => write!(f, "{name}{off:+#x}"),
            Self::Str { text, off } => write!(f, "\"{}\"{off:+#x}", String::from_utf8_lossy(text).escape_debug()),
            Self::Sec { name, off } => write!(f, "[{name}]{off:+#x}"),
        }
    }
}

/// One relocation of a function or data object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloc {
    /// Offset from the start of the function / object.
    pub at: u64,
    /// ELF `r_type`.
    pub r_type: u32,
    /// Where it points.
    pub target: Target,
}

/// A defined function or data object.
#[derive(Debug, Clone)]
pub struct Item {
    /// Symbol name.
    pub name: String,
    /// Its section.
    pub section: SectionIndex,
    /// Section name.
    pub section_name: String,
    /// Offset in the section.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Bytes (empty for bss).
    pub bytes: Vec<u8>,
    /// Relocations inside it, in offset order.
    pub relocs: Vec<Reloc>,
    /// A function (else data).
    pub func: bool,
    /// Global (else local).
    pub global: bool,
    /// In a writable section.
    pub writable: bool,
}

/// An object file seen as named functions and data.
#[derive(Debug)]
pub struct View<'a> {
    /// The parsed ELF.
    pub file: ElfFile64<'a, Endianness>,
    /// Functions and data objects by name.
    pub items: HashMap<String, Item>,
}

/// True for PC-relative relocation types (the field sits 4 bytes or more
/// before the end of its instruction, so S + A is 4 before what it means).
pub fn pc_relative(r_type: u32) -> bool {
    matches!(r_type, elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 | elf::R_X86_64_PC64)
}

impl<'a> View<'a> {
    /// Parses `data` and collects its functions and data objects.
    pub fn parse(data: &'a [u8]) -> Result<Self, String> {
        let file = ElfFile64::<Endianness>::parse(data).map_err(|e| e.to_string())?;
        let mut v = Self { file, items: HashMap::new() };
        let mut items = HashMap::new();
        for sym in v.file.symbols() {
            let (Ok(name), SymbolSection::Section(sec)) = (sym.name(), sym.section()) else { continue };
            let func = match sym.kind() {
                object::SymbolKind::Text => true,
                object::SymbolKind::Data => false,
                _ => continue,
            };
            if name.is_empty() {
                continue;
            }
            let s = v.file.section_by_index(sec).map_err(|e| e.to_string())?;
            let flags = s.elf_section_header().sh_flags(v.file.endian());
            let bytes = match s.data() {
                Ok(d) if !d.is_empty() => {
                    let start = usize::try_from(sym.address()).map_err(|e| e.to_string())?;
                    let end = start.saturating_add(usize::try_from(sym.size()).map_err(|e| e.to_string())?);
                    d.get(start..end).ok_or_else(|| format!("symbol {name} lies outside its section"))?.to_vec()
                }
                _ => Vec::new(),
            };
            let relocs = v.relocs_in(sec, sym.address(), sym.size())?;
            items.insert(
                name.to_owned(),
                Item {
                    name: name.to_owned(),
                    section: sec,
                    section_name: s.name().unwrap_or("?").to_owned(),
                    addr: sym.address(),
                    size: sym.size(),
                    bytes,
                    relocs,
                    func,
                    global: sym.is_global(),
                    writable: flags & u64::from(elf::SHF_WRITE) != 0,
                },
            );
        }
        v.items = items;
        Ok(v)
    }

    /// The relocations of section `sec` in `[start, start + size)`, targets canonical.
    pub fn relocs_in(&self, sec: SectionIndex, start: u64, size: u64) -> Result<Vec<Reloc>, String> {
        let s = self.file.section_by_index(sec).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for (off, r) in s.relocations() {
            if off < start || off >= start.saturating_add(size) {
                continue;
            }
            let RelocationFlags::Elf { r_type } = r.flags() else { return Err("non-ELF relocation".into()) };
            let RelocationTarget::Symbol(si) = r.target() else { return Err("relocation without a symbol".into()) };
            out.push(Reloc { at: off - start, r_type, target: self.target(si, r.addend(), r_type)? });
        }
        out.sort_by_key(|r| r.at);
        Ok(out)
    }

    /// Canonical target of symbol `si` + `addend`.
    pub fn target(&self, si: SymbolIndex, addend: i64, r_type: u32) -> Result<Target, String> {
        let sym = self.file.symbol_by_index(si).map_err(|e| e.to_string())?;
        let sec = match sym.section() {
            SymbolSection::Section(sec) => sec,
            SymbolSection::Undefined => return Ok(Target::Sym { name: sym.name().map_err(|e| e.to_string())?.to_owned(), off: addend }),
            _ => return Ok(Target::Sec { name: format!("*{}", sym.name().unwrap_or("?")), off: addend }),
        };
        let v = (sym.address() as i64).wrapping_add(addend);
        let probe = if pc_relative(r_type) { v.wrapping_add(4) } else { v };
        if let Some((name, addr)) = self.symbol_covering(sec, probe) {
            return Ok(Target::Sym { name, off: v.wrapping_sub(addr as i64) });
        }
        let s = self.file.section_by_index(sec).map_err(|e| e.to_string())?;
        let flags = s.elf_section_header().sh_flags(self.file.endian());
        if flags & u64::from(elf::SHF_STRINGS) != 0 {
            let d = s.data().map_err(|e| e.to_string())?;
            let at = usize::try_from(probe.max(0)).unwrap_or(usize::MAX).min(d.len());
            let start = d[..at].iter().rposition(|&b| b == 0).map_or(0, |p| p + 1);
            let end = d[start..].iter().position(|&b| b == 0).map_or(d.len(), |p| start + p);
            return Ok(Target::Str { text: d[start..end].to_vec(), off: v.wrapping_sub(start as i64) });
        }
        Ok(Target::Sec { name: s.name().unwrap_or("?").to_owned(), off: v })
    }

    /// The named function or data symbol of `sec` covering `off` (or the
    /// only one of the section), with its address.
    pub fn symbol_covering(&self, sec: SectionIndex, off: i64) -> Option<(String, u64)> {
        let mut only = None;
        let mut count = 0;
        for s in self.file.symbols() {
            if s.section() != SymbolSection::Section(sec) || !matches!(s.kind(), object::SymbolKind::Text | object::SymbolKind::Data) {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            if name.is_empty() {
                continue;
            }
            count += 1;
            only = Some((name.to_owned(), s.address()));
            let (a, z) = (s.address() as i64, s.address().saturating_add(s.size().max(1)) as i64);
            if off >= a && off < z {
                return Some((name.to_owned(), s.address()));
            }
        }
        if count == 1 {
            only
        } else {
            None
        }
    }

    /// Name of section `sec`.
    pub fn section_name(&self, sec: SectionIndex) -> String {
        self.file.section_by_index(sec).ok().and_then(|s| s.name().ok().map(str::to_owned)).unwrap_or_default()
    }

    /// The source file the object was compiled from (its first `STT_FILE` symbol).
    pub fn source_file(&self) -> Option<String> {
        self.file.symbols().find(|s| s.kind() == object::SymbolKind::File).and_then(|s| s.name().ok().map(str::to_owned))
    }
}

//! A module's `.ko` (the file the guest loads) as the patch builder sees
//! it: its symbols as the kernel keeps them in the loaded module's kallsyms
//! (defined, in allocated sections, not `.init*`; same order, so the N-th
//! symbol of a name here is the N-th at runtime), at the build-time
//! addresses of [`crate::patch::objects::ko_addr`]; each function's bytes;
//! and the masks of everything the module loader and the kernel rewrite in
//! its text: every relocated field, and the sites of its `__mcount_loc`,
//! `.altinstructions`, `.parainstructions`, `__jump_table`,
//! `.static_call_sites`, `.return_sites`, `.retpoline_sites` and
//! `.smp_locks`. Run-pre compares the unfixed build and, at apply, the
//! loaded module's text, under these masks.
//!
//! The `.ko` is untrusted input: every offset is bounded, nothing panics.

use iced_x86::{Decoder, DecoderOptions};
use object::read::elf::{ElfFile64, SectionHeader};
use object::{elf, Endianness, Object as _, ObjectSection, ObjectSymbol, RelocationTarget, SymbolSection};

use crate::model::{Symbol, SymbolKind, SymbolTable};
use crate::patch::build::PatchImage;
use crate::patch::link::LinkEnv;
use crate::patch::linux_image::rewrites::{Rewrites, Site};
use crate::patch::manifest::{ByteMask, SymbolAlias};
use crate::patch::objects::{combined, ko_addr, KO_BASE, VMLINUX};

/// A parsed `.ko`.
pub struct KoImage<'k> {
    /// Module name.
    pub name: String,
    /// The module's own symbols, at `ko_addr` addresses.
    pub own: SymbolTable,
    sections: Vec<Vec<u8>>,
    rewrites: Rewrites,
    /// What the link check resolves against (the kernel's table plus the
    /// module entries), set by the caller.
    pub link_table: SymbolTable,
    kernel: &'k dyn PatchImage,
}

impl std::fmt::Debug for KoImage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KoImage").field("name", &self.name).field("symbols", &self.own.len()).finish_non_exhaustive()
    }
}

/// Length of the instruction at the start of `code`, or `fallback`.
fn insn_len(code: &[u8], fallback: u32) -> u32 {
    let mut d = Decoder::new(64, code, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        fallback
    } else {
        i.len() as u32
    }
}

/// Site table sections: (name, entry size, how long each site is).
enum Len {
    Fixed(u32),
    /// The byte at this offset of the entry.
    EntryByte(usize),
    /// Decoded from the code (fallback, clamp).
    Decode(u32, u32, u32),
}

const TABLES: [(&str, u64, Len, &str); 8] = [
    ("__mcount_loc", 8, Len::Fixed(5), "fentry"),
    (".altinstructions", 12, Len::EntryByte(10), "alternative"),
    (".parainstructions", 16, Len::EntryByte(9), "paravirt"),
    ("__jump_table", 16, Len::Decode(5, 2, 5), "jump_label"),
    (".static_call_sites", 8, Len::Fixed(5), "static_call"),
    (".return_sites", 4, Len::Fixed(5), "return_thunk"),
    (".retpoline_sites", 4, Len::Decode(6, 1, 15), "retpoline"),
    (".smp_locks", 4, Len::Fixed(1), "smp_lock"),
];

impl<'k> KoImage<'k> {
    /// Parses the `.ko` bytes of module `name`; `kernel` is the vmlinux image
    /// (build-id, link-check environment).
    pub fn parse(name: &str, data: &[u8], kernel: &'k dyn PatchImage) -> Result<Self, String> {
        let f = ElfFile64::<Endianness>::parse(data).map_err(|e| format!("{name}.ko: {e}"))?;
        let mut sections = Vec::new();
        let mut exec = Vec::new();
        for s in f.sections() {
            let i = s.index().0;
            if sections.len() <= i {
                sections.resize(i + 1, Vec::new());
                exec.resize(i + 1, false);
            }
            let flags = s.elf_section_header().sh_flags(f.endian());
            exec[i] = flags & u64::from(elf::SHF_EXECINSTR) != 0;
            if s.kind() != object::SectionKind::UninitializedData {
                sections[i] = s.data().map(<[u8]>::to_vec).unwrap_or_default();
            }
        }
        // The symbols the kernel keeps for a loaded module, in table order.
        let mut syms = Vec::new();
        for s in f.symbols() {
            let (Ok(n), SymbolSection::Section(sec)) = (s.name(), s.section()) else { continue };
            let kind = match s.kind() {
                object::SymbolKind::Text => SymbolKind::Func,
                object::SymbolKind::Data => SymbolKind::Object,
                object::SymbolKind::Unknown => SymbolKind::Other,
                _ => continue,
            };
            let Ok(sh) = f.section_by_index(sec) else { continue };
            let alloc = sh.elf_section_header().sh_flags(f.endian()) & u64::from(elf::SHF_ALLOC) != 0;
            if n.is_empty() || !alloc || sh.name().is_ok_and(|sn| sn.starts_with(".init")) {
                continue;
            }
            syms.push(Symbol { name: n.to_owned(), addr: ko_addr(sec.0, s.address()), size: s.size(), kind, local: !s.is_global(), file: None, position: 0 });
        }
        let mut sites = Vec::new();
        // Every relocated field of executable sections.
        for s in f.sections().filter(|s| exec.get(s.index().0).copied().unwrap_or(false)) {
            for (off, r) in s.relocations() {
                let object::RelocationFlags::Elf { r_type } = r.flags() else { continue };
                let len = if matches!(r_type, elf::R_X86_64_64 | elf::R_X86_64_PC64) { 8 } else { 4 };
                sites.push(Site { addr: ko_addr(s.index().0, off), len, why: "reloc" });
            }
        }
        // The special tables: each entry's first field points at a site.
        for (table, entry, len, why) in &TABLES {
            let Some(t) = f.section_by_name(table) else { continue };
            let tdata = t.data().unwrap_or_default();
            for (off, r) in t.relocations() {
                if off % entry != 0 {
                    continue;
                }
                let RelocationTarget::Symbol(si) = r.target() else { continue };
                let Ok(sym) = f.symbol_by_index(si) else { continue };
                let SymbolSection::Section(sec) = sym.section() else { continue };
                let at = (sym.address() as i64).wrapping_add(r.addend());
                let Ok(at) = u64::try_from(at) else { continue };
                let code = sections.get(sec.0).and_then(|d| d.get(usize::try_from(at).unwrap_or(usize::MAX)..)).unwrap_or_default();
                let n = match len {
                    Len::Fixed(n) => *n,
                    Len::EntryByte(b) => u32::from(usize::try_from(off).ok().and_then(|o| tdata.get(o + b)).copied().unwrap_or(0)),
                    Len::Decode(fb, lo, hi) => insn_len(&code[..code.len().min(15)], *fb).clamp(*lo, *hi),
                };
                if n > 0 {
                    sites.push(Site { addr: ko_addr(sec.0, at), len: n, why });
                }
            }
        }
        Ok(Self { name: name.to_owned(), own: SymbolTable::new(syms), sections, rewrites: Rewrites::from_sites(sites), link_table: SymbolTable::default(), kernel })
    }

    /// Where a site count per kind can be logged.
    pub fn site_count(&self) -> usize {
        self.rewrites.sites().len()
    }
}

impl PatchImage for KoImage<'_> {
    fn symbols(&self) -> &SymbolTable {
        &self.link_table
    }
    fn build_id(&self) -> Option<&str> {
        self.kernel.build_id()
    }
    fn bytes_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let rel = addr.checked_sub(KO_BASE)?;
        let (sec, off) = (usize::try_from(rel >> 24).ok()?, usize::try_from(rel & 0xff_ffff).ok()?);
        self.sections.get(sec)?.get(off..off.checked_add(usize::try_from(len).ok()?)?)
    }
    fn masks(&self, addr: u64, size: u64) -> Vec<ByteMask> {
        self.rewrites.masks(addr, size)
    }
    fn check_env(&self) -> Box<dyn LinkEnv> {
        self.kernel.check_env()
    }
}

/// The aliases of a module patch's undefined names: a name the module
/// defines binds to the module (by file among duplicates, as for vmlinux:
/// [`super::bind::qualifier`] on the module's own table); a name another
/// module exports (`Module.symvers`) binds to that module; anything else to
/// vmlinux (qualified when the kernel holds it more than once). Also the
/// link check's table: the kernel's plus the module's entries, and
/// placeholders in the module area for other modules' exports (their
/// `.ko` is not read: `Module.symvers` vouches that they exist).
pub fn bind_externals(
    externals: &std::collections::BTreeMap<String, super::emit::External>,
    pre: &super::view::View<'_>,
    ko: &KoImage<'_>,
    kernel: &SymbolTable,
    exports: &std::collections::HashMap<String, String>,
) -> Result<(Vec<SymbolAlias>, SymbolTable), super::DiffError> {
    let mut aliases = Vec::new();
    let mut others: std::collections::BTreeMap<String, Vec<Symbol>> = std::collections::BTreeMap::new();
    for (name, ext) in externals {
        let local = ext.local && pre.items.contains_key(name);
        if !ko.own.all(name).is_empty() {
            let qualifier = super::bind::qualifier(name, local, pre, &ko.own)?;
            aliases.push(SymbolAlias { name: name.clone(), target: name.clone(), qualifier, object: Some(ko.name.clone()) });
        } else if let Some(m) = exports.get(name).filter(|m| *m != VMLINUX && !local) {
            let table = others.entry(m.clone()).or_default();
            let addr = KO_BASE.wrapping_sub(0x100_0000).wrapping_add(16 * (aliases.len() as u64 + 1));
            table.push(Symbol { name: name.clone(), addr, size: 16, kind: if ext.func { SymbolKind::Func } else { SymbolKind::Object }, local: false, file: None, position: 0 });
            aliases.push(SymbolAlias { name: name.clone(), target: name.clone(), qualifier: None, object: Some(m.clone()) });
        } else if let Some(q) = super::bind::qualifier(name, local, pre, kernel)? {
            aliases.push(SymbolAlias { name: name.clone(), target: name.clone(), qualifier: Some(q), object: None });
        }
    }
    let other_tables: Vec<(String, SymbolTable)> = others.into_iter().map(|(m, v)| (m, SymbolTable::new(v))).collect();
    let mut tables: Vec<(&str, &SymbolTable)> = vec![(ko.name.as_str(), &ko.own)];
    tables.extend(other_tables.iter().map(|(m, t)| (m.as_str(), t)));
    Ok((aliases, combined(kernel, &tables)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::patch::diff::compare::tests::cc;

    struct NoKernel(SymbolTable);
    impl PatchImage for NoKernel {
        fn symbols(&self) -> &SymbolTable {
            &self.0
        }
        fn build_id(&self) -> Option<&str> {
            Some("ab")
        }
        fn bytes_at(&self, _: u64, _: u64) -> Option<&[u8]> {
            None
        }
        fn masks(&self, _: u64, _: u64) -> Vec<ByteMask> {
            Vec::new()
        }
        fn check_env(&self) -> Box<dyn LinkEnv> {
            Box::new(crate::patch::link::UnknownEnv)
        }
    }

    #[test]
    fn a_ko_gives_symbols_bytes_and_masks_of_its_relocated_fields() {
        let Some(obj) = cc("extern int other(int);\nstatic int helper(int x) { return other(x) + 1; }\nint f(int x) { return helper(x) * 3; }\n") else { return };
        let k = NoKernel(SymbolTable::default());
        let ko = KoImage::parse("m", &obj, &k).unwrap();
        let f = ko.own.resolve("f", None).unwrap();
        assert!(f.addr >= KO_BASE && f.size > 0);
        let bytes = ko.bytes_at(f.addr, f.size).unwrap();
        assert_eq!(bytes.len() as u64, f.size);
        // The call of `other` (or of `helper`) is a relocated field: masked.
        let all: Vec<ByteMask> = ko.own.iter().filter(|s| s.kind == SymbolKind::Func).flat_map(|s| ko.masks(s.addr, s.size)).collect();
        assert!(all.iter().any(|m| m.why.contains("reloc") && m.len == 4), "{all:?}");
        assert_eq!(ko.build_id(), Some("ab"));
        // Bounded: nothing past a section, garbage refused.
        assert!(ko.bytes_at(f.addr, 1 << 30).is_none());
        assert!(ko.bytes_at(1, 1).is_none());
        assert!(KoImage::parse("m", b"\x7fELF garbage", &k).is_err());
    }
}

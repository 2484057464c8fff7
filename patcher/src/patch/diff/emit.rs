//! Writing the patch object from the fixed build: only the functions to
//! replace (and new ones, each with its `.cold` part), the read-only data
//! they need copied (strings, constants, changed or new tables), new data;
//! every other reference becomes an undefined symbol bound to the running
//! kernel's copy (unchanged functions, existing data, which must keep their
//! identity). Special sections keep only the entries of carried code:
//! `__mcount_loc`, `__bug_table`, `.altinstructions` (with the whole
//! `.altinstr_replacement`), `__jump_table`, `.return_sites`; the site lists
//! the loader ignores are dropped, and an exception-table entry in carried
//! code is refused (the guest's fault handler could not find it).
//!
//! Several compiled files (a multi-file diff) go into one object
//! ([`emit_all`]): each part's sections and symbols are copied as they are,
//! its special-section entries appended to one section per name, and a
//! name two parts would both define, or both leave undefined with a
//! different meaning (a local of each file), is renamed `NAME.vsplice.K`
//! in part K ([`Emitted::renamed`]); each part's undefined names are bound
//! by that part's own file.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use object::read::elf::SectionHeader;
use object::write::{self, SectionId, SymbolId};
use object::{elf, Object as _, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex, SymbolSection};

use super::view::View;
use super::{DiffError, Refusal};

/// A reference to the running kernel that the patch object leaves undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// Defined (as a local) in the compiled file: bound by file, not by name alone.
    pub local: bool,
    /// A function (else data).
    pub func: bool,
}

/// The written object and what it refers to.
#[derive(Debug)]
pub struct Emitted {
    /// ELF relocatable bytes.
    pub object: Vec<u8>,
    /// Undefined names and what they are in the compiled file.
    pub externals: BTreeMap<String, External>,
    /// What was dropped or kept of the special sections.
    pub notes: Vec<String>,
    /// Names given in the object instead of the compiled file's (output
    /// name → the file's name), when two parts would clash.
    pub renamed: BTreeMap<String, String>,
}

/// One compiled file to write into the object.
#[derive(Debug)]
pub struct Part<'v, 'a> {
    /// The fixed build (or its WARN-as-call build).
    pub post: &'v View<'a>,
    /// Functions to carry.
    pub carry: &'v BTreeSet<String>,
    /// Data objects to carry.
    pub keep_data: &'v BTreeSet<String>,
}

/// Names already used in the object, across parts.
#[derive(Default)]
struct Names {
    /// Defined function and data names.
    defined: std::collections::HashSet<String>,
    /// Undefined names: `Some(part)` a local of that part's file, `None` a global.
    undefined: HashMap<String, Option<usize>>,
    /// Special sections written so far.
    specials: HashMap<String, SectionId>,
}

/// Special sections: entry size; entries kept when their first field
/// points into carried code.
const KEPT_SPECIALS: &[(&str, usize)] = &[("__mcount_loc", 8), ("__bug_table", 12), (".altinstructions", 12), ("__jump_table", 16), (".return_sites", 4)];

struct Emitter<'v, 'a, 'o> {
    post: &'v View<'a>,
    out: &'o mut write::Object<'static>,
    names: &'o mut Names,
    part: usize,
    renamed: BTreeMap<String, String>,
    map: HashMap<SectionIndex, SectionId>,
    ext: HashMap<String, SymbolId>,
    externals: BTreeMap<String, External>,
    carry: &'v BTreeSet<String>,
    keep_data: &'v BTreeSet<String>,
    todo: Vec<SectionIndex>,
}

fn err(what: String) -> DiffError {
    DiffError::Object(what)
}

impl Emitter<'_, '_, '_> {
    fn flags(&self, sec: SectionIndex) -> Result<(u32, u64), DiffError> {
        let s = self.post.file.section_by_index(sec).map_err(|e| err(e.to_string()))?;
        let h = s.elf_section_header();
        Ok((h.sh_type(self.post.file.endian()), h.sh_flags(self.post.file.endian())))
    }

    /// Copies section `sec` (bytes and symbols); its relocations later.
    fn section(&mut self, sec: SectionIndex) -> Result<SectionId, DiffError> {
        if let Some(&id) = self.map.get(&sec) {
            return Ok(id);
        }
        let s = self.post.file.section_by_index(sec).map_err(|e| err(e.to_string()))?;
        let name = s.name().map_err(|e| err(e.to_string()))?.to_owned();
        let (sh_type, sh_flags) = self.flags(sec)?;
        let kind = if sh_flags & u64::from(elf::SHF_EXECINSTR) != 0 {
            object::SectionKind::Text
        } else if sh_type == elf::SHT_NOBITS {
            object::SectionKind::UninitializedData
        } else if sh_flags & u64::from(elf::SHF_WRITE) != 0 {
            object::SectionKind::Data
        } else {
            object::SectionKind::ReadOnlyData
        };
        let id = self.out.add_section(Vec::new(), name.into_bytes(), kind);
        if sh_type == elf::SHT_NOBITS {
            self.out.append_section_bss(id, s.size(), s.align().max(1));
        } else {
            let d = s.data().map_err(|e| err(e.to_string()))?;
            self.out.append_section_data(id, d, s.align().max(1));
        }
        self.out.section_mut(id).flags = object::SectionFlags::Elf { sh_flags };
        for sym in self.post.file.symbols() {
            if sym.section() != SymbolSection::Section(sec) || !matches!(sym.kind(), object::SymbolKind::Text | object::SymbolKind::Data) {
                continue;
            }
            let Ok(n) = sym.name() else { continue };
            if n.is_empty() {
                continue;
            }
            let out_name = if self.names.defined.contains(n) { format!("{n}.vsplice.{}", self.part) } else { n.to_owned() };
            if out_name != n {
                self.renamed.insert(out_name.clone(), n.to_owned());
            }
            self.names.defined.insert(out_name.clone());
            self.out.add_symbol(write::Symbol {
                name: out_name.into_bytes(),
                value: sym.address(),
                size: sym.size(),
                kind: sym.kind(),
                scope: if sym.is_global() { object::SymbolScope::Linkage } else { object::SymbolScope::Compilation },
                weak: false,
                section: write::SymbolSection::Section(id),
                flags: object::SymbolFlags::None,
            });
        }
        self.map.insert(sec, id);
        self.todo.push(sec);
        Ok(id)
    }

    fn external(&mut self, name: &str, local: bool, func: bool) -> SymbolId {
        if let Some(&id) = self.ext.get(name) {
            return id;
        }
        let owner = local.then_some(self.part);
        let out_name = match self.names.undefined.get(name) {
            Some(o) if *o != owner => format!("{name}.vsplice.{}", self.part),
            _ => name.to_owned(),
        };
        if out_name != name {
            self.renamed.insert(out_name.clone(), name.to_owned());
        }
        self.names.undefined.insert(out_name.clone(), owner);
        let id = self.out.add_symbol(write::Symbol {
            name: out_name.clone().into_bytes(),
            value: 0,
            size: 0,
            kind: object::SymbolKind::Unknown,
            scope: object::SymbolScope::Unknown,
            weak: false,
            section: write::SymbolSection::Undefined,
            flags: object::SymbolFlags::None,
        });
        self.ext.insert(name.to_owned(), id);
        self.externals.insert(out_name, External { local, func });
        id
    }

    /// The output symbol and addend for a relocation against `si` + `addend`.
    fn target(&mut self, si: object::SymbolIndex, addend: i64, r_type: u32) -> Result<(SymbolId, i64), DiffError> {
        let sym = self.post.file.symbol_by_index(si).map_err(|e| err(e.to_string()))?;
        let ts = match sym.section() {
            SymbolSection::Section(ts) => ts,
            SymbolSection::Undefined => {
                let n = sym.name().map_err(|e| err(e.to_string()))?;
                return Ok((self.external(n, false, sym.kind() == object::SymbolKind::Text), addend));
            }
            _ => return Err(err(format!("relocation against {:?}, which has no section", sym.name()))),
        };
        let v = (sym.address() as i64).wrapping_add(addend);
        let (_, sh_flags) = self.flags(ts)?;
        let exec = sh_flags & u64::from(elf::SHF_EXECINSTR) != 0;
        let probe = if super::view::pc_relative(r_type) { v.wrapping_add(4) } else { v };
        let covering = self.post.symbol_covering(ts, probe);
        let carried = match &covering {
            _ if self.map.contains_key(&ts) => true,
            // Once-flags of `pr_*_once()` / `WARN_ONCE()` (`__already_done.N`
            // in `.data.once`, often without a symbol of their own): the
            // patch gets fresh ones. At worst a once-message prints once
            // more after the patch, as after the kernel's own reset of the
            // section (debugfs `clear_warn_once`).
            _ if self.post.section_name(ts) == ".data.once" => true,
            // An empty section holds nothing to duplicate: the lockdep keys of
            // `mutex_init()` & co. (`__key.N`, compiler-numbered, many copies
            // in the kernel) are empty structs when lockdep is off, their
            // address an identity nothing reads. With lockdep on they have a
            // size and stay bound (or refused `ambiguous_local`).
            Some((n, _)) if self.post.file.section_by_index(ts).is_ok_and(|s| s.size() == 0) && !self.post.items.get(n).is_some_and(|i| i.global) => true,
            Some((n, _)) if exec => self.carry.contains(n),
            None if exec => self.post.section_name(ts).starts_with(".altinstr_"),
            // Compiler-numbered read-only locals (`__func__.12`): copied, their
            // numbers are not stable between builds and their identity is unused.
            Some((n, _)) => self.keep_data.contains(n) || (sh_flags & u64::from(elf::SHF_WRITE) == 0 && n.contains('.') && !self.post.items.get(n).is_some_and(|i| i.global)),
            None => sh_flags & u64::from(elf::SHF_WRITE) == 0, // strings, constants: copied
        };
        if carried {
            let id = self.section(ts)?;
            return Ok((self.out.section_symbol(id), v));
        }
        let Some((name, addr)) = covering else {
            return Err(err(format!("a reference into section {} has no symbol to bind to the kernel", self.post.section_name(ts))));
        };
        let global = self.post.items.get(&name).is_some_and(|i| i.global);
        Ok((self.external(&name, !global, exec), v.wrapping_sub(addr as i64)))
    }

    fn relocations(&mut self, sec: SectionIndex, keep: impl Fn(u64) -> Option<u64>) -> Result<Vec<write::Relocation>, DiffError> {
        let s = self.post.file.section_by_index(sec).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        for (off, r) in s.relocations() {
            let Some(new_off) = keep(off) else { continue };
            let RelocationFlags::Elf { r_type } = r.flags() else { return Err(err("non-ELF relocation".into())) };
            let RelocationTarget::Symbol(si) = r.target() else { return Err(err("relocation without a symbol".into())) };
            let (symbol, addend) = self.target(si, r.addend(), r_type)?;
            out.push(write::Relocation { offset: new_off, symbol, addend, flags: RelocationFlags::Elf { r_type } });
        }
        Ok(out)
    }

    fn drain(&mut self) -> Result<(), DiffError> {
        while let Some(sec) = self.todo.pop() {
            let relocs = self.relocations(sec, Some)?;
            let id = self.map[&sec];
            for r in relocs {
                self.out.add_relocation(id, r).map_err(|e| err(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The section a relocation at `off` of special section `sec` points into.
    fn anchor(&self, sec: SectionIndex, off: u64) -> Option<SectionIndex> {
        let s = self.post.file.section_by_index(sec).ok()?;
        let (_, r) = s.relocations().find(|(o, _)| *o == off)?;
        let RelocationTarget::Symbol(si) = r.target() else { return None };
        match self.post.file.symbol_by_index(si).ok()?.section() {
            SymbolSection::Section(ts) => Some(ts),
            _ => None,
        }
    }

    fn specials(&mut self, notes: &mut Vec<String>) -> Result<(), DiffError> {
        let sections: Vec<(SectionIndex, String)> = self.post.file.sections().map(|s| (s.index(), s.name().unwrap_or("").to_owned())).collect();
        for (sec, name) in &sections {
            if name == "__ex_table" {
                let n = self.post.file.section_by_index(*sec).map(|s| s.size() / 12).unwrap_or(0);
                for i in 0..n {
                    if let Some(ts) = self.anchor(*sec, 12 * i).filter(|ts| self.map.contains_key(ts)) {
                        return Err(DiffError::Refused { cause: Refusal::ExTable, symbol: self.post.section_name(ts), why: "it has exception-table entries (user-memory accesses), which the guest's fault handler would not find".into() });
                    }
                }
            }
            let Some(&(_, size)) = KEPT_SPECIALS.iter().find(|(n, _)| n == name) else { continue };
            let s = self.post.file.section_by_index(*sec).map_err(|e| err(e.to_string()))?;
            let data = s.data().map_err(|e| err(e.to_string()))?.to_vec();
            let mut kept: Vec<u64> = Vec::new();
            for i in 0..(data.len() / size) as u64 {
                if self.anchor(*sec, i * size as u64).is_some_and(|ts| self.map.contains_key(&ts)) {
                    kept.push(i);
                }
            }
            if kept.is_empty() {
                continue;
            }
            let (_, sh_flags) = self.flags(*sec)?;
            let kind = if sh_flags & u64::from(elf::SHF_WRITE) != 0 { object::SectionKind::Data } else { object::SectionKind::ReadOnlyData };
            // One section per special name, whichever part its entries come from.
            let id = match self.names.specials.get(name) {
                Some(&id) => id,
                None => {
                    let id = self.out.add_section(Vec::new(), name.as_bytes().to_vec(), kind);
                    self.out.section_mut(id).flags = object::SectionFlags::Elf { sh_flags };
                    self.names.specials.insert(name.clone(), id);
                    id
                }
            };
            let mut bytes = Vec::new();
            for &i in &kept {
                let at = i as usize * size;
                bytes.extend_from_slice(&data[at..at + size]);
            }
            let base = self.out.append_section_data(id, &bytes, s.align().max(1));
            let size = size as u64;
            let relocs = self.relocations(*sec, |off| kept.iter().position(|&i| off / size == i).map(|k| base + k as u64 * size + off % size))?;
            for r in relocs {
                self.out.add_relocation(id, r).map_err(|e| err(e.to_string()))?;
            }
            notes.push(format!("{name}: {} of {} entries kept (those of carried code)", kept.len(), data.len() / size as usize));
            // Their targets (replacement code, strings) may have added sections.
            self.drain()?;
        }
        Ok(())
    }
}

/// Writes the patch object: `carry` are the functions to carry (changed,
/// new, with their `.cold` parts), `keep_data` the data objects to carry
/// (new or changed read-only ones); `bug_policy` the words of
/// `.vsplice.bug_policy` for the loader.
pub fn emit(post: &View<'_>, carry: &BTreeSet<String>, keep_data: &BTreeSet<String>, bug_policy: &str) -> Result<Emitted, DiffError> {
    emit_all(&[Part { post, carry, keep_data }], bug_policy)
}

/// Writes one patch object from several compiled files (see the module
/// doc); [`Emitted::externals`] and [`Emitted::renamed`] per part, in order.
pub fn emit_all(parts: &[Part<'_, '_>], bug_policy: &str) -> Result<Emitted, DiffError> {
    let (object, mut per) = emit_parts(parts, bug_policy)?;
    let mut all = Emitted { object, externals: BTreeMap::new(), notes: Vec::new(), renamed: BTreeMap::new() };
    for p in per.iter_mut() {
        all.externals.append(&mut p.externals);
        all.notes.append(&mut p.notes);
        all.renamed.append(&mut p.renamed);
    }
    Ok(all)
}

/// Writes one patch object from several compiled files; returns it and,
/// per part, its undefined names, notes and renames (the `object` field of
/// each is empty).
pub fn emit_parts(parts: &[Part<'_, '_>], bug_policy: &str) -> Result<(Vec<u8>, Vec<Emitted>), DiffError> {
    let mut out = write::Object::new(object::BinaryFormat::Elf, object::Architecture::X86_64, object::Endianness::Little);
    let mut names = Names::default();
    let mut per = Vec::new();
    for (part, p) in parts.iter().enumerate() {
        let mut e = Emitter {
            post: p.post,
            out: &mut out,
            names: &mut names,
            part,
            renamed: BTreeMap::new(),
            map: HashMap::new(),
            ext: HashMap::new(),
            externals: BTreeMap::new(),
            carry: p.carry,
            keep_data: p.keep_data,
            todo: Vec::new(),
        };
        if let Some(f) = p.post.source_file() {
            e.out.add_file_symbol(f.into_bytes());
        }
        for name in p.carry {
            let item = p.post.items.get(name).ok_or_else(|| err(format!("function {name} is not in the fixed build")))?;
            e.section(item.section)?;
        }
        for name in p.keep_data {
            if let Some(item) = p.post.items.get(name) {
                e.section(item.section)?;
            }
        }
        e.drain()?;
        let mut notes = Vec::new();
        e.specials(&mut notes)?;
        per.push(Emitted { object: Vec::new(), externals: e.externals, notes, renamed: e.renamed });
    }
    let pol = out.add_section(Vec::new(), crate::patch::link::special::BUG_POLICY_SECTION.as_bytes().to_vec(), object::SectionKind::Metadata);
    out.append_section_data(pol, bug_policy.as_bytes(), 1);
    let object = out.write().map_err(|x| err(x.to_string()))?;
    Ok((object, per))
}

#[cfg(test)]
#[path = "emit_tests.rs"]
mod tests;

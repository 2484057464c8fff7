//! Binding the names of one compiled file to the running kernel's symbols,
//! and proving the source is the kernel's (run-pre).
//!
//! A local name that the kernel's kallsyms holds more than once is bound
//! to the copy that lies among this file's own symbols: vmlinux keeps each
//! object's sections contiguous, so the right copy has, as address
//! neighbours in kallsyms, symbols that this object defines and that exist
//! only once in the kernel (hence are this file's). Exactly one candidate
//! must qualify, or the build is refused (`ambiguous_local`); the binding is
//! written as a `pos:N` qualifier (kallsyms order), never guessed.
//!
//! Run-pre: each function to replace, as the unfixed source compiles, must
//! equal the kernel image's bytes outside relocated fields and the ranges the
//! kernel rewrites at boot; otherwise SRC is not the running kernel's
//! source (`source_mismatch`).

use crate::model::{Qualifier, Symbol, SymbolTable};
use crate::patch::build::PatchImage;

use super::view::{Item, View};
use super::{DiffError, Refusal};

/// How many kallsyms neighbours on each side are looked at.
const NEIGHBOURS: usize = 3;

/// Does `s` lie among the symbols of the file `pre` was compiled from?
fn in_file(s: &Symbol, pre: &View<'_>, syms: &SymbolTable) -> bool {
    syms.neighbours(s.addr, NEIGHBOURS)
        .iter()
        .any(|n| n.name != s.name && pre.items.contains_key(&n.name) && syms.all(&n.name).len() == 1)
}

/// The qualifier that names this file's `name` in the kernel (`None` when
/// the name alone is unambiguous).
pub fn qualifier(name: &str, local: bool, pre: &View<'_>, syms: &SymbolTable) -> Result<Option<Qualifier>, DiffError> {
    let all = syms.all(name);
    if all.len() <= 1 {
        return Ok(None);
    }
    if !local && all.iter().filter(|s| !s.local).count() == 1 {
        return Ok(None);
    }
    let hits: Vec<&&Symbol> = all.iter().filter(|s| s.local == local && in_file(s, pre, syms)).collect();
    match hits.as_slice() {
        [one] => Ok(Some(Qualifier::Position(one.position))),
        _ => Err(DiffError::Refused {
            cause: Refusal::AmbiguousLocal,
            symbol: name.to_owned(),
            why: format!("{} copies in the kernel and {} of them lie among this file's symbols", all.len(), hits.len()),
        }),
    }
}

/// Checks that `item` (from the unfixed build) is the kernel's `sym`.
pub fn run_pre(item: &Item, sym: &Symbol, image: &dyn PatchImage) -> Result<(), DiffError> {
    let mismatch = |why: String| DiffError::Refused { cause: Refusal::SourceMismatch, symbol: item.name.clone(), why };
    if sym.size != 0 && item.size > sym.size {
        return Err(mismatch(format!("the source compiles it to {:#x} bytes, the kernel's is {:#x}: SRC is not the running kernel's source", item.size, sym.size)));
    }
    let bytes = image.bytes_at(sym.addr, item.size).ok_or_else(|| mismatch("its bytes are not in the kernel image".into()))?;
    let mut skip = vec![false; item.bytes.len()];
    for r in &item.relocs {
        let len = if matches!(r.r_type, object::elf::R_X86_64_64 | object::elf::R_X86_64_PC64) { 8 } else { 4 };
        for b in skip.iter_mut().skip(r.at as usize).take(len) {
            *b = true;
        }
    }
    for m in image.masks(sym.addr, item.size) {
        for b in skip.iter_mut().skip(m.offset as usize).take(m.len as usize) {
            *b = true;
        }
    }
    let first = item.bytes.iter().zip(bytes).zip(&skip).position(|((a, b), s)| !s && a != b);
    match first {
        None => Ok(()),
        Some(at) => Err(mismatch(format!("the unfixed source compiles to different code at +{at:#x}: SRC (or its configuration or compiler) is not the running kernel's"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::SymbolKind;
    use crate::patch::diff::compare::tests::cc;

    fn sym(name: &str, addr: u64, local: bool) -> Symbol {
        Symbol { name: name.into(), addr, size: 0x10, kind: SymbolKind::Func, local, file: None, position: 0 }
    }

    #[test]
    fn a_duplicated_local_is_bound_to_the_copy_among_this_files_symbols() {
        let Some(obj) = cc("static int helper(int x) { return x + 1; }\nint only_here(int x) { return helper(x) * 3; }\nint also_here(int x) { return x - 2; }\n") else { return };
        let pre = View::parse(&obj).unwrap();
        let k = 0xffff_ffff_8100_0000u64;
        // Another file's `helper` first, ours between this file's functions.
        let table = SymbolTable::new(vec![
            sym("other_file_fn", k, false),
            sym("helper", k + 0x10, true),
            sym("zzz_unrelated", k + 0x20, false),
            sym("a", k + 0x30, false),
            sym("b", k + 0x40, false),
            sym("c", k + 0x50, false),
            sym("only_here", k + 0x100, false),
            sym("helper", k + 0x110, true),
            sym("also_here", k + 0x120, false),
        ]);
        assert_eq!(qualifier("helper", true, &pre, &table).unwrap(), Some(Qualifier::Position(2)));
        // A unique name needs no qualifier.
        assert_eq!(qualifier("only_here", false, &pre, &table).unwrap(), None);
        // Both copies among this file's symbols: refused, never guessed.
        let both = SymbolTable::new(vec![sym("only_here", k, false), sym("helper", k + 0x10, true), sym("helper", k + 0x20, true), sym("also_here", k + 0x30, false)]);
        assert_eq!(qualifier("helper", true, &pre, &both).unwrap_err().cause(), "ambiguous_local");
    }
}

//! Which object of the kernel a patch's names belong to: `vmlinux` or a
//! module. A replacement or a symbol alias of the manifest names its object
//! (`object`: a module's name; absent means `vmlinux`, as in every patch
//! written before modules could be targets).
//!
//! The linker resolves names against one [`SymbolTable`]. For a patch that
//! touches modules, that table is the kernel's own plus, for each module,
//! entries under names no kernel symbol can have (`nfsd:name`, and
//! `nfsd:name@pos:N` for the N-th symbol of that name in the module's
//! table); [`link_aliases`] rewrites the manifest's module aliases to those
//! names and [`combined`] builds the table. The same two functions serve
//! the build's link check (the module's `.ko` at the addresses of
//! [`ko_addr`]) and the apply (the loaded module's kallsyms, runtime
//! addresses), so both link alike.

use crate::model::{Symbol, SymbolTable};
use crate::patch::manifest::SymbolAlias;

pub use crate::model::module::{valid_module_name, VMLINUX};

/// Where a `.ko`'s sections are numbered at build time: section `i`,
/// offset `o` is `KO_BASE + (i << 24) + o` (in the module area, so the link
/// check's rel32 reach is the loaded module's).
pub const KO_BASE: u64 = 0xffff_ffff_a000_0000;

/// The build-time address of offset `off` of section `shndx` of a `.ko`.
pub fn ko_addr(shndx: usize, off: u64) -> u64 {
    KO_BASE.wrapping_add((shndx as u64) << 24).wrapping_add(off)
}


fn entry_name(object: &str, name: &str, position: Option<u32>) -> String {
    match position {
        Some(p) => format!("{object}:{name}@pos:{p}"),
        None => format!("{object}:{name}"),
    }
}

/// The manifest's aliases as the linker takes them: a module's symbol under
/// its entry name in the [`combined`] table.
pub fn link_aliases(aliases: &[SymbolAlias]) -> Vec<SymbolAlias> {
    aliases
        .iter()
        .map(|a| match (&a.object, &a.qualifier) {
            (Some(o), Some(crate::model::Qualifier::Position(p))) => SymbolAlias { name: a.name.clone(), target: entry_name(o, &a.target, Some(*p)), qualifier: None, object: None },
            (Some(o), _) => SymbolAlias { name: a.name.clone(), target: entry_name(o, &a.target, None), qualifier: None, object: None },
            (None, _) => a.clone(),
        })
        .collect()
}

/// The kernel's table plus every module's entries.
pub fn combined(kernel: &SymbolTable, modules: &[(&str, &SymbolTable)]) -> SymbolTable {
    let mut all: Vec<Symbol> = kernel.iter().cloned().collect();
    for (object, table) in modules {
        for s in table.iter() {
            all.push(Symbol { name: entry_name(object, &s.name, Some(s.position)), ..s.clone() });
            if table.resolve(&s.name, None).is_ok_and(|one| one.position == s.position) {
                all.push(Symbol { name: entry_name(object, &s.name, None), ..s.clone() });
            }
        }
    }
    SymbolTable::new(all)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Qualifier, SymbolKind};

    fn sym(name: &str, addr: u64, local: bool) -> Symbol {
        Symbol { name: name.into(), addr, size: 8, kind: SymbolKind::Func, local, file: None, position: 0 }
    }

    #[test]
    fn module_names_resolve_in_their_module_and_kernel_names_in_the_kernel() {
        let kernel = SymbolTable::new(vec![sym("printk", 0x1000, false), sym("helper", 0x2000, true)]);
        let nfsd = SymbolTable::new(vec![sym("helper", 0xa000, true), sym("helper", 0xa100, true), sym("nfsd4_sequence", 0xa200, false)]);
        let table = combined(&kernel, &[("nfsd", &nfsd)]);
        let aliases = vec![
            SymbolAlias { name: "helper".into(), target: "helper".into(), qualifier: Some(Qualifier::Position(2)), object: Some("nfsd".into()) },
            SymbolAlias { name: "nfsd4_sequence".into(), target: "nfsd4_sequence".into(), qualifier: None, object: Some("nfsd".into()) },
            SymbolAlias { name: "khelper".into(), target: "helper".into(), qualifier: None, object: None },
        ];
        let linkable = link_aliases(&aliases);
        let addr = |a: &SymbolAlias| table.resolve(&a.target, a.qualifier.as_ref()).map(|s| s.addr);
        assert_eq!(addr(&linkable[0]), Ok(0xa100));
        assert_eq!(addr(&linkable[1]), Ok(0xa200));
        // A kernel alias is left alone; the kernel's own `helper` is still the only plain one.
        assert_eq!(addr(&linkable[2]), Ok(0x2000));
        // A duplicated module name has no plain entry: never a guess.
        assert!(table.resolve("nfsd:helper", None).is_err());
        assert!(valid_module_name("nfsd") && valid_module_name("snd-hda_intel") && !valid_module_name("vmlinux") && !valid_module_name("a/b"));
        assert_eq!(ko_addr(3, 0x10), KO_BASE + (3 << 24) + 0x10);
    }
}

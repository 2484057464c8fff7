//! kallsyms as a [`SymbolTable`]: every symbol in table order (so the
//! positions used by `pos:N` qualifiers are the same in the image file and
//! in the running kernel), the type character's case telling local from
//! global, the size up to the next higher address (kallsyms stores none),
//! and no source files (kallsyms does not know them).

use crate::os::linux::kallsyms::Kallsyms;
use crate::model::{Symbol, SymbolKind, SymbolTable};

/// The kind of a kallsyms type character; weak symbols are code when they
/// lie in the kernel text.
fn kind_of(c: char, addr: u64, text: &std::ops::Range<u64>) -> SymbolKind {
    match c {
        't' | 'T' => SymbolKind::Func,
        'w' | 'W' if text.contains(&addr) => SymbolKind::Func,
        'd' | 'D' | 'b' | 'B' | 'r' | 'R' | 'v' | 'V' | 'w' | 'W' | 'a' | 'A' => SymbolKind::Object,
        _ => SymbolKind::Other,
    }
}

/// Every kallsyms symbol at the addresses `k` holds (runtime addresses for
/// a live kernel, link addresses for an image file).
pub fn symbol_table(k: &Kallsyms) -> SymbolTable {
    let text = match (k.first_addr("_stext").or_else(|| k.first_addr("_text")), k.first_addr("_etext")) {
        (Some(a), Some(b)) if a < b => a..b,
        _ => 0..0,
    };
    let syms = k
        .symbols()
        .iter()
        .enumerate()
        .map(|(i, s)| Symbol {
            name: s.name.clone(),
            addr: s.addr,
            size: k.size_of(i).unwrap_or(0),
            kind: kind_of(s.kind, s.addr, &text),
            local: s.kind.is_ascii_lowercase(),
            file: None,
            position: 0,
        })
        .collect();
    SymbolTable::new(syms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_characters_map_to_kinds() {
        let text = 0x1000..0x2000;
        assert_eq!(kind_of('t', 0x1000, &text), SymbolKind::Func);
        assert_eq!(kind_of('W', 0x1800, &text), SymbolKind::Func);
        assert_eq!(kind_of('W', 0x3000, &text), SymbolKind::Object);
        assert_eq!(kind_of('D', 0x3000, &text), SymbolKind::Object);
        assert_eq!(kind_of('A', 0x10, &text), SymbolKind::Object);
        assert_eq!(kind_of('?', 0x10, &text), SymbolKind::Other);
    }
}

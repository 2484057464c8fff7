//! A target kernel's symbol table: every symbol with its duplicates kept,
//! each with a qualifier (1-based position among symbols of that name, and
//! the source file where the table knows it), lookup by name that refuses to
//! guess between duplicates, and address to symbol.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a symbol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolKind {
    /// Code.
    Func,
    /// Data.
    Object,
    /// A label without type (linker symbols such as `_end`).
    Other,
}

/// One symbol of the target kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Name as in the symbol table.
    pub name: String,
    /// Runtime address.
    pub addr: u64,
    /// Size in bytes (0 when unknown).
    pub size: u64,
    /// Code, data or label.
    pub kind: SymbolKind,
    /// Local (static) symbol.
    pub local: bool,
    /// Source file of a local symbol, where the table records it.
    pub file: Option<String>,
    /// 1-based position among the symbols of this name, in table order.
    pub position: u32,
}

/// How a patch names one of several symbols that share a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qualifier {
    /// The symbol defined in this source file (`file:lib.c`; a path suffix matches).
    File(String),
    /// The n-th symbol of that name in the table (`pos:2`, 1-based, like kpatch's sympos).
    Position(u32),
}

impl Qualifier {
    /// Parses `file:NAME`, `pos:N`, or empty (no qualifier).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        if let Some(f) = s.strip_prefix("file:") {
            if f.is_empty() {
                return Err("empty file qualifier".into());
            }
            return Ok(Some(Self::File(f.to_owned())));
        }
        if let Some(p) = s.strip_prefix("pos:") {
            return match p.parse::<u32>() {
                Ok(n) if n > 0 => Ok(Some(Self::Position(n))),
                _ => Err(format!("bad position qualifier `{s}` (want pos:N, N >= 1)")),
            };
        }
        Err(format!("bad qualifier `{s}` (want file:NAME or pos:N)"))
    }

    fn matches(&self, s: &Symbol) -> bool {
        match self {
            Self::Position(n) => s.position == *n,
            Self::File(f) => s.file.as_deref().is_some_and(|sf| sf == f || sf.ends_with(&format!("/{f}"))),
        }
    }
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(n) => write!(f, "file:{n}"),
            Self::Position(n) => write!(f, "pos:{n}"),
        }
    }
}

/// Why a name could not be resolved to exactly one symbol.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// No symbol of that name (or none matching the qualifier).
    #[error("symbol `{name}`{} not found in the target", qual.as_ref().map(|q| format!(" ({q})")).unwrap_or_default())]
    NotFound {
        /// The name.
        name: String,
        /// The qualifier given.
        qual: Option<Qualifier>,
    },
    /// Several symbols of that name and no qualifier to choose one.
    #[error("symbol `{name}` is ambiguous: {} candidates ({}); name one with a qualifier (file:NAME or pos:N)", candidates.len(), candidates.join(", "))]
    Ambiguous {
        /// The name.
        name: String,
        /// `file:…/pos:N @ address` of each candidate.
        candidates: Vec<String>,
    },
}

/// Every symbol of a target, with an index by name and by address.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    syms: Vec<Symbol>,
    by_name: HashMap<String, Vec<usize>>,
    /// Indices of sized or typed symbols, sorted by address.
    by_addr: Vec<usize>,
}

impl SymbolTable {
    /// Builds the table from symbols in table order; positions are assigned here.
    pub fn new(mut syms: Vec<Symbol>) -> Self {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in syms.iter_mut().enumerate() {
            let v = by_name.entry(s.name.clone()).or_default();
            v.push(i);
            s.position = v.len() as u32;
        }
        let mut by_addr: Vec<usize> = (0..syms.len()).filter(|&i| syms[i].kind != SymbolKind::Other || syms[i].size > 0).collect();
        by_addr.sort_by_key(|&i| (syms[i].addr, std::cmp::Reverse(syms[i].size)));
        Self { syms, by_name, by_addr }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Every symbol of this name, in table order (all duplicates).
    pub fn all(&self, name: &str) -> Vec<&Symbol> {
        self.by_name.get(name).map(|v| v.iter().map(|&i| &self.syms[i]).collect()).unwrap_or_default()
    }

    /// Exactly one symbol for `name`: the qualified one, else the only one,
    /// else the only global one (what a link would bind); never a guess.
    pub fn resolve(&self, name: &str, qual: Option<&Qualifier>) -> Result<&Symbol, LookupError> {
        let all = self.all(name);
        let not_found = || LookupError::NotFound { name: name.to_owned(), qual: qual.cloned() };
        if let Some(q) = qual {
            let hits: Vec<&Symbol> = all.into_iter().filter(|s| q.matches(s)).collect();
            return match hits.as_slice() {
                [one] => Ok(one),
                [] => Err(not_found()),
                many => Err(Self::ambiguous(name, many)),
            };
        }
        match all.as_slice() {
            [] => Err(not_found()),
            [one] => Ok(one),
            many => {
                let globals: Vec<&&Symbol> = many.iter().filter(|s| !s.local).collect();
                match globals.as_slice() {
                    [one] => Ok(one),
                    _ => Err(Self::ambiguous(name, many)),
                }
            }
        }
    }

    fn ambiguous(name: &str, many: &[&Symbol]) -> LookupError {
        let candidates = many
            .iter()
            .map(|s| match &s.file {
                Some(f) => format!("file:{f} / pos:{} @ {:#x}", s.position, s.addr),
                None => format!("pos:{} @ {:#x}", s.position, s.addr),
            })
            .collect();
        LookupError::Ambiguous { name: name.to_owned(), candidates }
    }

    /// Up to `n` symbols on each side of `addr` in address order (the symbol
    /// at `addr` itself excluded): what lies next to it in the image.
    pub fn neighbours(&self, addr: u64, n: usize) -> Vec<&Symbol> {
        let idx = self.by_addr.partition_point(|&i| self.syms[i].addr < addr);
        let hi = idx.saturating_add(n).saturating_add(1).min(self.by_addr.len());
        (idx.saturating_sub(n)..hi).map(|k| &self.syms[self.by_addr[k]]).filter(|s| s.addr != addr).collect()
    }

    /// The sized symbol containing `addr`, and the offset into it.
    pub fn lookup_addr(&self, addr: u64) -> Option<(&Symbol, u64)> {
        let idx = self.by_addr.partition_point(|&i| self.syms[i].addr <= addr);
        (idx.saturating_sub(16)..idx)
            .rev()
            .map(|k| &self.syms[self.by_addr[k]])
            .find(|s| s.size > 0 && addr < s.addr.saturating_add(s.size))
            .map(|s| (s, addr - s.addr))
    }

    /// `name+0xoff` for an address, or the bare hex address.
    pub fn describe(&self, addr: u64) -> String {
        match self.lookup_addr(addr) {
            Some((s, 0)) => s.name.clone(),
            Some((s, off)) => format!("{}+{off:#x}", s.name),
            None => format!("{addr:#x}"),
        }
    }

    /// Every symbol in table order.
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.syms.iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sym(name: &str, addr: u64, size: u64, local: bool, file: Option<&str>) -> Symbol {
        Symbol { name: name.into(), addr, size, kind: SymbolKind::Func, local, file: file.map(Into::into), position: 0 }
    }

    fn table() -> SymbolTable {
        SymbolTable::new(vec![
            sym("helper", 0x1000, 0x10, true, Some("a.c")),
            sym("main", 0x1010, 0x20, false, None),
            sym("helper", 0x1030, 0x10, true, Some("dir/b.c")),
            sym("dup", 0x1040, 0x8, true, Some("a.c")),
            sym("dup", 0x1048, 0x8, false, None),
        ])
    }

    #[test]
    fn unique_and_global_names_resolve() {
        let t = table();
        assert_eq!(t.resolve("main", None).unwrap().addr, 0x1010);
        assert_eq!(t.resolve("dup", None).unwrap().addr, 0x1048, "the one global wins over locals");
    }

    #[test]
    fn duplicates_need_a_qualifier_and_are_never_guessed() {
        let t = table();
        let err = t.resolve("helper", None).unwrap_err();
        assert!(matches!(&err, LookupError::Ambiguous { candidates, .. } if candidates.len() == 2), "{err}");
        assert!(err.to_string().contains("file:a.c"));
        assert_eq!(t.resolve("helper", Some(&Qualifier::File("b.c".into()))).unwrap().addr, 0x1030);
        assert_eq!(t.resolve("helper", Some(&Qualifier::File("a.c".into()))).unwrap().addr, 0x1000);
        assert_eq!(t.resolve("helper", Some(&Qualifier::Position(2))).unwrap().addr, 0x1030);
        assert!(matches!(t.resolve("helper", Some(&Qualifier::Position(3))), Err(LookupError::NotFound { .. })));
        assert!(matches!(t.resolve("nothing", None), Err(LookupError::NotFound { .. })));
        assert_eq!(t.all("helper").len(), 2);
    }

    #[test]
    fn qualifiers_parse() {
        assert_eq!(Qualifier::parse("").unwrap(), None);
        assert_eq!(Qualifier::parse("file:x.c").unwrap(), Some(Qualifier::File("x.c".into())));
        assert_eq!(Qualifier::parse("pos:3").unwrap(), Some(Qualifier::Position(3)));
        assert!(Qualifier::parse("pos:0").is_err());
        assert!(Qualifier::parse("x.c").is_err());
    }

    #[test]
    fn addresses_map_back_to_symbols() {
        let t = table();
        assert_eq!(t.describe(0x1015), "main+0x5");
        assert_eq!(t.describe(0x1030), "helper");
        assert_eq!(t.describe(0x2000), "0x2000");
    }
}

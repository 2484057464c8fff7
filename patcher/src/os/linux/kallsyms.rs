//! The kernel's own symbol table (kallsyms), decoded from its compressed
//! tables: lookup by name (every duplicate, with its position), by address
//! (containing symbol + offset) and the size of a symbol (up to the next
//! higher address: kallsyms stores no sizes).

use std::collections::HashMap;


use super::kallsyms_locate::{self, KallsymsTables};
use crate::model::mem::KernelMemory;

pub use super::kallsyms_locate::KallsymsError;

/// One kallsyms entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Name without the type character.
    pub name: String,
    /// Address (runtime address in a live guest, link address in an image).
    pub addr: u64,
    /// Type character as in /proc/kallsyms (`T`, `t`, `D`, …).
    pub kind: char,
}

/// A symbol found by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrHit<'a> {
    /// Position in the table.
    pub index: usize,
    /// The symbol containing the address.
    pub symbol: &'a Symbol,
    /// Offset of the address from the symbol's start.
    pub offset: u64,
    /// Distance to the next higher symbol address, if any.
    pub size: Option<u64>,
}

/// The decoded table.
#[derive(Debug, Clone)]
pub struct Kallsyms {
    /// Where the tables are.
    pub tables: KallsymsTables,
    syms: Vec<Symbol>,
    by_name: HashMap<String, Vec<u32>>,
}

/// Decode every name with the token table.
fn decode_names(names: &[u8], n: usize, tokens: &[Vec<u8>]) -> Result<Vec<(char, String)>, KallsymsError> {
    let mut out = Vec::with_capacity(n);
    let mut o = 0usize;
    let mut buf = Vec::with_capacity(128);
    for i in 0..n {
        let (h, l) = kallsyms_locate::entry_len(names, o)
            .ok_or_else(|| KallsymsError::Corrupt(format!("names end early at symbol {i}")))?;
        let body = names
            .get(o + h..o + h + l)
            .ok_or_else(|| KallsymsError::Corrupt(format!("name {i} runs past the table")))?;
        buf.clear();
        for &t in body {
            buf.extend_from_slice(&tokens[t as usize]);
        }
        o += h + l;
        let (kind, name) = match buf.split_first() {
            Some((k, rest)) => (*k as char, String::from_utf8_lossy(rest).into_owned()),
            None => return Err(KallsymsError::Corrupt(format!("empty name {i}"))),
        };
        out.push((kind, name));
    }
    Ok(out)
}

impl Kallsyms {
    /// Find the tables in `region` (bytes at virtual `base`) and decode them.
    pub fn locate_in(region: &[u8], base: u64) -> Result<Self, KallsymsError> {
        let tables = kallsyms_locate::locate(region, base)?;
        Self::decode_slice(region, base, tables)
    }

    fn decode_slice(region: &[u8], base: u64, tables: KallsymsTables) -> Result<Self, KallsymsError> {
        tables.check()?;
        let at = |va: u64, len: usize| -> Result<&[u8], KallsymsError> {
            let o = va.checked_sub(base).map(|o| o as usize);
            o.and_then(|o| region.get(o..o.checked_add(len)?))
                .ok_or_else(|| KallsymsError::Corrupt(format!("{va:#x}+{len:#x} outside the region")))
        };
        let n = tables.num_syms as usize;
        let offsets = at(tables.offsets, 4 * n)?;
        let names = at(tables.names, tables.names_len as usize)?;
        let tt = at(tables.token_table, (tables.token_index - tables.token_table) as usize)?;
        Self::build(tables, offsets, names, tt)
    }

    /// Decode tables at known addresses from any kernel memory.
    pub fn read<M: KernelMemory + ?Sized>(mem: &mut M, tables: KallsymsTables) -> Result<Self, KallsymsError> {
        tables.check()?;
        let n = tables.num_syms as usize;
        let offsets = mem.read_vec(tables.offsets, 4 * n)?;
        let names = mem.read_vec(tables.names, tables.names_len as usize)?;
        let tt = mem.read_vec(tables.token_table, (tables.token_index - tables.token_table) as usize)?;
        Self::build(tables, &offsets, &names, &tt)
    }

    fn build(tables: KallsymsTables, offsets: &[u8], names: &[u8], tt: &[u8]) -> Result<Self, KallsymsError> {
        let n = tables.num_syms as usize;
        let (tokens, _) = kallsyms_locate::parse_token_table(tt, 0)
            .ok_or_else(|| KallsymsError::Corrupt("token table does not parse".into()))?;
        let decoded = decode_names(names, n, &tokens)?;
        let mut syms = Vec::with_capacity(n);
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::with_capacity(n);
        for (i, ((kind, name), off)) in decoded.into_iter().zip(offsets.chunks_exact(4)).enumerate() {
            let off = i32::from_le_bytes([off[0], off[1], off[2], off[3]]);
            let addr = kallsyms_locate::sym_address(off, tables.relative_base);
            by_name.entry(name.clone()).or_default().push(i as u32);
            syms.push(Symbol { name, addr, kind });
        }
        Ok(Self { tables, syms, by_name })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// True when empty (never for a real kernel).
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// All symbols in table (address) order.
    pub fn symbols(&self) -> &[Symbol] {
        &self.syms
    }

    /// Every symbol with this name, with its position in the table.
    pub fn lookup_all(&self, name: &str) -> Vec<(usize, &Symbol)> {
        self.by_name
            .get(name)
            .map(|v| v.iter().map(|&i| (i as usize, &self.syms[i as usize])).collect())
            .unwrap_or_default()
    }

    /// The address of a name that must be unique (global symbols).
    pub fn addr_of(&self, name: &str) -> Option<u64> {
        match self.lookup_all(name).as_slice() {
            [(_, s)] => Some(s.addr),
            _ => None,
        }
    }

    /// The address of the first symbol with this name (for names that may
    /// legitimately repeat with the same value).
    pub fn first_addr(&self, name: &str) -> Option<u64> {
        self.lookup_all(name).first().map(|(_, s)| s.addr)
    }

    /// Distance from symbol `index` to the next higher address.
    pub fn size_of(&self, index: usize) -> Option<u64> {
        let a = self.syms.get(index)?.addr;
        self.syms[index..].iter().find(|s| s.addr > a).map(|s| s.addr - a)
    }

    /// The symbol containing `addr` (the first of the aliases at the
    /// highest address not above it), like the kernel's own lookup.
    pub fn lookup_addr(&self, addr: u64) -> Option<AddrHit<'_>> {
        // Kernel addresses resolve only to kernel symbols, small values only
        // to the absolute (per-CPU offset) ones below `relative_base`.
        let rb = self.tables.relative_base;
        if addr < rb && addr > u64::from(u32::MAX) {
            return None; // below the kernel, yet no per-CPU offset
        }
        let lo = if addr >= rb { self.syms.partition_point(|s| s.addr < rb) } else { 0 };
        let hi = self.syms.partition_point(|s| s.addr <= addr);
        if hi <= lo {
            return None;
        }
        let a = self.syms[hi - 1].addr;
        let first = self.syms[lo..hi].partition_point(|s| s.addr < a) + lo;
        let size = self.size_of(first);
        let symbol = &self.syms[first];
        Some(AddrHit { index: first, symbol, offset: addr - a, size })
    }
}

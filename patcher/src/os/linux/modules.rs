//! Loaded kernel modules (6.1 layout, offsets from BTF): the `modules`
//! list, each module's core text range, its ORC tables (`arch.orc_unwind_ip`,
//! `arch.orc_unwind`, `arch.num_orcs`, sorted by the module loader), and
//! its own symbol table (`kallsyms`: `Elf64_Sym` entries whose values are
//! runtime addresses). The precise stack check unwinds through module code
//! with these; the agent finder looks `vsplice_agent`'s symbols up here;
//! a patch of a module resolves its names from [`find_module`]'s table.

use super::btf::Btf;
use super::kallsyms::Kallsyms;
use super::tasks::{walk_list, TaskError};
use crate::model::mem::KernelMemory;
use crate::model::{LoadedModule, Symbol, SymbolKind, SymbolTable};

/// Offsets inside `struct module` from BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleOffsets {
    list: u64,
    name: u64,
    state: u64,
    base: u64,
    size: u64,
    text_size: u64,
    kallsyms: u64,
    num_orcs: Option<u64>,
    orc_ip: Option<u64>,
    orc: Option<u64>,
}

impl ModuleOffsets {
    /// Looks the members up (the ORC ones are optional: kernels without ORC).
    pub fn from_btf(btf: &Btf) -> Result<Self, TaskError> {
        let m = btf.find_struct("module").ok_or_else(|| TaskError::MissingType("struct module".into()))?;
        let need = |path: &str| btf.member(m, path).map(|i| i.offset).ok_or_else(|| TaskError::MissingType(format!("module.{path}")));
        let opt = |path: &str| btf.member(m, path).map(|i| i.offset);
        Ok(Self {
            list: need("list")?,
            name: need("name")?,
            state: need("state")?,
            base: need("core_layout.base")?,
            size: need("core_layout.size")?,
            text_size: need("core_layout.text_size")?,
            kallsyms: need("kallsyms")?,
            num_orcs: opt("arch.num_orcs"),
            orc_ip: opt("arch.orc_unwind_ip"),
            orc: opt("arch.orc_unwind"),
        })
    }
}

/// A module's ORC tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleOrc {
    /// `orc_unwind_ip` (s32 entries relative to their own address).
    pub ip_table: u64,
    /// `orc_unwind` (6-byte entries).
    pub unwind_table: u64,
    /// Entries in each.
    pub entries: u64,
}

/// One loaded module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Address of its `struct module`.
    pub addr: u64,
    /// Name.
    pub name: String,
    /// `MODULE_STATE_*` (0 live, 1 coming, 2 going).
    pub state: u32,
    /// Core layout base (text first).
    pub base: u64,
    /// Core layout size.
    pub size: u64,
    /// Bytes of text at `base`.
    pub text_size: u64,
    /// `struct mod_kallsyms *`.
    pub kallsyms: u64,
    /// ORC tables, when the module has them.
    pub orc: Option<ModuleOrc>,
}

impl Module {
    /// True when `addr` is in the module's core text.
    pub fn contains_text(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.text_size
    }
}

/// `MODULE_STATE_UNFORMED`: being loaded, layout not there yet.
const STATE_UNFORMED: u32 = 3;

/// Every formed module on the `modules` list.
pub fn list_modules<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, off: &ModuleOffsets) -> Result<Vec<Module>, TaskError> {
    let head = k.first_addr("modules").ok_or(TaskError::MissingSymbol("modules"))?;
    let mut out = Vec::new();
    for node in walk_list(mem, head, "modules")? {
        let addr = node.wrapping_sub(off.list);
        let state = mem.read_u32(addr.wrapping_add(off.state))?;
        if state == STATE_UNFORMED {
            continue;
        }
        let mut name = [0u8; 56];
        mem.read(addr.wrapping_add(off.name), &mut name)?;
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let orc = match (off.num_orcs, off.orc_ip, off.orc) {
            (Some(n), Some(ip), Some(u)) => {
                let entries = u64::from(mem.read_u32(addr.wrapping_add(n))?);
                let (ip_table, unwind_table) = (mem.read_u64(addr.wrapping_add(ip))?, mem.read_u64(addr.wrapping_add(u))?);
                (entries > 0 && ip_table != 0 && unwind_table != 0).then_some(ModuleOrc { ip_table, unwind_table, entries })
            }
            _ => None,
        };
        out.push(Module {
            addr,
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
            state,
            base: mem.read_u64(addr.wrapping_add(off.base))?,
            size: u64::from(mem.read_u32(addr.wrapping_add(off.size))?),
            text_size: u64::from(mem.read_u32(addr.wrapping_add(off.text_size))?),
            kallsyms: mem.read_u64(addr.wrapping_add(off.kallsyms))?,
            orc,
        });
    }
    Ok(out)
}

/// One symbol of a module: (name, runtime address, type letter).
pub type ModuleSymbol = (String, u64, char);

/// A module's symbol table (`mod->kallsyms`), at most `max` symbols.
pub fn module_symbols<M: KernelMemory + ?Sized>(mem: &mut M, m: &Module, max: usize) -> Result<Vec<ModuleSymbol>, TaskError> {
    if m.kallsyms == 0 {
        return Ok(Vec::new());
    }
    let symtab = mem.read_u64(m.kallsyms)?;
    let num = (mem.read_u32(m.kallsyms.wrapping_add(8))? as usize).min(max);
    let strtab = mem.read_u64(m.kallsyms.wrapping_add(16))?;
    let typetab = mem.read_u64(m.kallsyms.wrapping_add(24))?;
    if symtab == 0 || strtab == 0 || num == 0 {
        return Ok(Vec::new());
    }
    let syms = mem.read_vec(symtab, num * 24)?;
    let types = if typetab != 0 { mem.read_vec(typetab, num)? } else { vec![b'?'; num] };
    let names_len = syms.chunks_exact(24).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize).max().unwrap_or(0) + 256;
    let names = mem.read_vec(strtab, names_len.min(1 << 20))?;
    let mut out = Vec::with_capacity(num);
    for (i, s) in syms.chunks_exact(24).enumerate() {
        let at = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize;
        let mut v = [0u8; 8];
        v.copy_from_slice(&s[8..16]);
        let name = names.get(at..).map(|n| &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())]).unwrap_or_default();
        if !name.is_empty() {
            out.push((String::from_utf8_lossy(name).into_owned(), u64::from_le_bytes(v), char::from(types[i])));
        }
    }
    Ok(out)
}

/// True when `addr` lies in the module's core layout (text, read-only and
/// writable data of the module after init).
fn in_core(m: &Module, addr: u64) -> bool {
    addr >= m.base && addr - m.base < m.size
}

/// Most symbols read of one module for a patch (nfsd has about 2,700).
pub const MAX_MODULE_SYMBOLS: usize = 1 << 18;

/// A module's symbol table (`mod->kallsyms`) as a [`SymbolTable`]: names,
/// runtime addresses, sizes, local or global, code or data (from the
/// kernel's type letters), in the kernel's order (so positions among
/// duplicates are the `.ko`'s). At most `max` symbols, names within 1 MiB.
pub fn module_symbol_table<M: KernelMemory + ?Sized>(mem: &mut M, m: &Module, max: usize) -> Result<SymbolTable, TaskError> {
    if m.kallsyms == 0 {
        return Ok(SymbolTable::default());
    }
    let symtab = mem.read_u64(m.kallsyms)?;
    let num = (mem.read_u32(m.kallsyms.wrapping_add(8))? as usize).min(max);
    let strtab = mem.read_u64(m.kallsyms.wrapping_add(16))?;
    let typetab = mem.read_u64(m.kallsyms.wrapping_add(24))?;
    if symtab == 0 || strtab == 0 || num == 0 {
        return Ok(SymbolTable::default());
    }
    let raw = mem.read_vec(symtab, num * 24)?;
    let types = if typetab != 0 { mem.read_vec(typetab, num)? } else { vec![b'?'; num] };
    let names_len = raw.chunks_exact(24).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize).max().unwrap_or(0).saturating_add(256).min(1 << 20);
    let names = mem.read_vec(strtab, names_len)?;
    // While a module is COMING, `mod->kallsyms` is the whole ELF symbol
    // table (undefined symbols at the kernel's addresses, `.init` and
    // per-CPU ones too); after init the kernel keeps only the core symbols
    // (`is_core_symbol`). Keeping the named ones inside the core layout
    // gives the same table, in the same order, as after init.
    let coming = m.state == crate::model::MODULE_STATE_COMING;
    let mut syms = Vec::with_capacity(num);
    for (e, &t) in raw.chunks_exact(24).zip(&types) {
        let at = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize;
        let Some(rest) = names.get(at..) else { continue };
        let name = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
        if name.is_empty() {
            continue;
        }
        let word = |o: usize| u64::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3], e[o + 4], e[o + 5], e[o + 6], e[o + 7]]);
        if coming && !in_core(m, word(8)) {
            continue;
        }
        let kind = match t.to_ascii_lowercase() {
            b't' | b'w' => SymbolKind::Func,
            b'd' | b'b' | b'r' | b'g' | b's' => SymbolKind::Object,
            _ => SymbolKind::Other,
        };
        // The binding from st_info (the type letter is lower-case for locals too).
        let local = e[4] >> 4 == 0;
        syms.push(Symbol { name: String::from_utf8_lossy(name).into_owned(), addr: word(8), size: word(16), kind, local, file: None, position: 0 });
    }
    Ok(SymbolTable::new(syms))
}

/// The module called `name` on the module list, with its symbol table;
/// `None` when it is not there (or still unformed).
pub fn find_module<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, btf: &Btf, name: &str) -> Result<Option<LoadedModule>, TaskError> {
    let off = ModuleOffsets::from_btf(btf)?;
    let Some(m) = list_modules(mem, k, &off)?.into_iter().find(|m| m.name == name) else { return Ok(None) };
    let symbols = module_symbol_table(mem, &m, MAX_MODULE_SYMBOLS)?;
    Ok(Some(LoadedModule { name: m.name, addr: m.addr, state: m.state, base: m.base, text_size: m.text_size, symbols }))
}

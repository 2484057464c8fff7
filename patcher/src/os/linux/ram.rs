//! The Linux kernel's own view of guest-physical memory, read from a live
//! guest for the arena check ([`crate::model::ram`]), from two independent
//! places so that one cross-checks the other:
//!
//! - `e820_table` (a pointer to `struct e820_table { u32 nr_entries;
//!   struct e820_entry entries[]; }`, each entry `{ u64 addr; u64 size;
//!   enum e820_type type; }`, packed): the map after `memmap=` and the
//!   kernel's own edits, a complete list (every range not in it is a hole);
//! - the `iomem_resource` tree (`struct resource { start, end, name, flags,
//!   desc, parent, sibling, child }`): what `/proc/iomem` shows, "System
//!   RAM" flagged `IORESOURCE_SYSRAM`.
//!
//! Layouts come from BTF, addresses from kallsyms (the caller's). Every
//! count is capped by the BTF array bound and [`MAX_E820`], the tree walk
//! by [`MAX_RESOURCES`] nodes, [`MAX_DEPTH`] levels and a visited set: a
//! hostile guest gets a named [`RamError`], never a hang or a large
//! allocation. `memblock` is not read: x86 discards it after boot
//! (no `ARCH_KEEP_MEMBLOCK`).

use std::collections::HashSet;

use thiserror::Error;

use super::btf::Btf;
use super::kallsyms::Kallsyms;
use crate::model::mem::{KernelMemory, MemError};
use crate::model::ram::{RamKind, RamMap, RamSource};

/// Most e820 entries read (the kernel's bound is 128 + 3 * MAX_NUMNODES).
pub const MAX_E820: u64 = 3 * 1024 + 128;
/// Most resources walked in the iomem tree.
pub const MAX_RESOURCES: usize = 4096;
/// Deepest nesting walked in the iomem tree.
pub const MAX_DEPTH: usize = 16;

/// `E820_TYPE_RAM`.
const E820_RAM: u32 = 1;
/// `E820_TYPE_RESERVED`.
const E820_RESERVED: u32 = 2;
/// `E820_TYPE_RESERVED_KERN`: RAM the kernel set aside, still RAM.
const E820_RESERVED_KERN: u32 = 128;
/// `IORESOURCE_SYSRAM`.
const IORESOURCE_SYSRAM: u64 = 0x0100_0000;
/// `IORES_DESC_RESERVED`.
const IORES_DESC_RESERVED: u64 = 7;

/// Why one source of the memory map could not be read.
#[derive(Debug, Error)]
pub enum RamError {
    /// kallsyms has no such symbol.
    #[error("the kernel has no symbol `{0}`")]
    MissingSymbol(&'static str),
    /// BTF lacks a type or member.
    #[error("the kernel's BTF has no `{0}`")]
    MissingType(&'static str),
    /// The structure read is impossible (count over its bound, range
    /// ending before it starts, a cycle, too many nodes).
    #[error("the kernel's {what} is malformed: {why}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
    /// Reading guest memory failed.
    #[error("reading guest memory failed")]
    Memory(#[from] #[source] MemError),
}

impl RamError {
    /// Stable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::MissingSymbol(_) => "symbol_missing",
            Self::MissingType(_) => "btf_missing_type",
            Self::Malformed { .. } => "ram_map_malformed",
            Self::Memory(e) => e.cause(),
        }
    }
}

fn le(bytes: &[u8], off: u64, size: u64) -> Option<u64> {
    let off = usize::try_from(off).ok()?;
    let b = bytes.get(off..off.checked_add(usize::try_from(size).ok()?)?)?;
    let mut v = [0u8; 8];
    v.get_mut(..b.len())?.copy_from_slice(b);
    Some(u64::from_le_bytes(v))
}

/// A member's byte offset and size (at most 8 bytes) in a struct.
fn field(btf: &Btf, id: u32, name: &'static str, what: &'static str) -> Result<(u64, u64), RamError> {
    let m = btf.member(id, name).ok_or(RamError::MissingType(what))?;
    Ok((m.offset, m.size.unwrap_or(8).clamp(1, 8)))
}

fn e820_kind(t: u32) -> RamKind {
    match t {
        E820_RAM | E820_RESERVED_KERN => RamKind::Usable,
        E820_RESERVED => RamKind::Reserved,
        _ => RamKind::Other,
    }
}

/// The e820 table `e820_table` (the address of the pointer variable) points to.
pub fn read_e820(mem: &mut dyn KernelMemory, btf: &Btf, e820_table: u64) -> Result<RamSource, RamError> {
    let malformed = |why: String| RamError::Malformed { what: "e820_table", why };
    let table_id = btf.find_struct("e820_table").ok_or(RamError::MissingType("struct e820_table"))?;
    let entry_id = btf.find_struct("e820_entry").ok_or(RamError::MissingType("struct e820_entry"))?;
    let (nr_off, nr_size) = field(btf, table_id, "nr_entries", "e820_table.nr_entries")?;
    let entries = btf.member(table_id, "entries").ok_or(RamError::MissingType("e820_table.entries"))?;
    let stride = btf.size_of(entry_id).filter(|&s| (20..=64).contains(&s)).ok_or(RamError::MissingType("sized struct e820_entry"))?;
    let (addr_off, addr_size) = field(btf, entry_id, "addr", "e820_entry.addr")?;
    let (size_off, size_size) = field(btf, entry_id, "size", "e820_entry.size")?;
    let (type_off, type_size) = field(btf, entry_id, "type", "e820_entry.type")?;
    // The array's own bound, from BTF, and ours.
    let cap = entries.size.map_or(MAX_E820, |s| s / stride).min(MAX_E820);

    let table = mem.read_u64(e820_table)?;
    let head = mem.read_vec(table.wrapping_add(nr_off), nr_size as usize)?;
    let nr = le(&head, 0, nr_size).unwrap_or(0);
    if nr == 0 || nr > cap {
        return Err(malformed(format!("{nr} entries (at most {cap})")));
    }
    let raw = mem.read_vec(table.wrapping_add(entries.offset), (nr * stride) as usize)?;
    let mut ranges = Vec::with_capacity(nr as usize);
    for i in 0..nr {
        let base = i * stride;
        let get = |off: u64, size: u64| le(&raw, base + off, size).ok_or_else(|| malformed(format!("entry {i} is cut short")));
        let (addr, size, ty) = (get(addr_off, addr_size)?, get(size_off, size_size)?, get(type_off, type_size)?);
        let end = addr.checked_add(size).ok_or_else(|| malformed(format!("entry {i} at {addr:#x} of {size:#x} bytes wraps")))?;
        if size != 0 {
            ranges.push((addr..end, e820_kind(ty as u32)));
        }
    }
    Ok(RamSource { name: "e820_table", complete: true, ranges })
}

/// Offsets in `struct resource`.
struct ResLayout {
    size: u64,
    start: (u64, u64),
    end: (u64, u64),
    flags: (u64, u64),
    desc: Option<(u64, u64)>,
    sibling: (u64, u64),
    child: (u64, u64),
}

impl ResLayout {
    fn from_btf(btf: &Btf) -> Result<Self, RamError> {
        let id = btf.find_struct("resource").ok_or(RamError::MissingType("struct resource"))?;
        let size = btf.size_of(id).filter(|&s| (32..=512).contains(&s)).ok_or(RamError::MissingType("sized struct resource"))?;
        Ok(Self {
            size,
            start: field(btf, id, "start", "resource.start")?,
            end: field(btf, id, "end", "resource.end")?,
            flags: field(btf, id, "flags", "resource.flags")?,
            desc: field(btf, id, "desc", "resource.desc").ok(),
            sibling: field(btf, id, "sibling", "resource.sibling")?,
            child: field(btf, id, "child", "resource.child")?,
        })
    }
}

/// Every "System RAM" (and reserved) range of the `iomem_resource` tree
/// (`iomem_resource`: the address of the root `struct resource`).
pub fn read_iomem(mem: &mut dyn KernelMemory, btf: &Btf, iomem_resource: u64) -> Result<RamSource, RamError> {
    let malformed = |why: String| RamError::Malformed { what: "iomem_resource tree", why };
    let l = ResLayout::from_btf(btf)?;
    let root = mem.read_vec(iomem_resource, l.size as usize)?;
    let first = le(&root, l.child.0, l.child.1).unwrap_or(0);
    let mut ranges = Vec::new();
    let mut seen = HashSet::new();
    // (node, depth); siblings are pushed as they are found.
    let mut todo = vec![(first, 0usize)];
    while let Some((node, depth)) = todo.pop() {
        if node == 0 {
            continue;
        }
        if !seen.insert(node) {
            return Err(malformed(format!("resource {node:#x} is reached twice (a cycle)")));
        }
        if seen.len() > MAX_RESOURCES {
            return Err(malformed(format!("more than {MAX_RESOURCES} resources")));
        }
        let raw = mem.read_vec(node, l.size as usize)?;
        let get = |(off, size): (u64, u64)| le(&raw, off, size).unwrap_or(0);
        let (start, end, flags) = (get(l.start), get(l.end), get(l.flags));
        if end < start {
            return Err(malformed(format!("resource {node:#x} ends at {end:#x} before its start {start:#x}")));
        }
        let range = start..end.saturating_add(1);
        let sysram = flags & IORESOURCE_SYSRAM != 0;
        if sysram {
            ranges.push((range, RamKind::Usable));
        } else if l.desc.map(get) == Some(IORES_DESC_RESERVED) {
            ranges.push((range, RamKind::Reserved));
        }
        todo.push((get(l.sibling), depth));
        // System RAM's children (kernel code, data, crash kernel) lie inside it.
        let child = get(l.child);
        if !sysram && child != 0 {
            if depth + 1 > MAX_DEPTH {
                return Err(malformed(format!("nested deeper than {MAX_DEPTH}")));
            }
            todo.push((child, depth + 1));
        }
    }
    Ok(RamSource { name: "iomem_resource", complete: false, ranges })
}

/// Both sources, each read on its own; one that cannot be read is named
/// in [`RamMap::unread`] (the check refuses when neither can).
pub fn read_map(mem: &mut dyn KernelMemory, kallsyms: &Kallsyms, btf: &Btf) -> RamMap {
    let mut map = RamMap::default();
    let readers: [(&'static str, Reader); 2] = [("e820_table", read_e820), ("iomem_resource", read_iomem)];
    for (sym, read) in readers {
        let r = kallsyms.first_addr(sym).ok_or(RamError::MissingSymbol(sym)).and_then(|a| read(mem, btf, a));
        match r {
            Ok(s) => {
                tracing::debug!(source = sym, ranges = s.ranges.len(), "kernel memory map");
                map.sources.push(s);
            }
            Err(e) => {
                tracing::warn!(source = sym, cause = e.cause(), error = %crate::model::chain(&e), "kernel memory map source unreadable");
                map.unread.push(format!("{sym}: {}", crate::model::chain(&e)));
            }
        }
    }
    map
}

type Reader = fn(&mut dyn KernelMemory, &Btf, u64) -> Result<RamSource, RamError>;

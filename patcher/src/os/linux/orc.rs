//! The 6.1 ORC unwind tables: where they are ([`locate`]), what one entry
//! says ([`OrcEntry`], `arch/x86/include/asm/orc_types.h`), and one table
//! read into host memory ([`OrcTable`]: absolute instruction addresses,
//! sorted, with their entries and, for vmlinux, the `orc_lookup` blocks).
//!
//! On disk and in memory: `orc_unwind_ip` is an array of s32, each the
//! distance from its own address to the instruction it describes;
//! `orc_unwind` is an array of packed 6-byte `struct orc_entry`
//! { s16 sp_offset; s16 bp_offset; unsigned sp_reg:4, bp_reg:4, type:2,
//! end:1 } (little-endian bitfields: sp_reg in bits 0-3 of the third
//! 16-bit word, bp_reg 4-7, type 8-9, end 10). `orc_lookup[i]` is the index
//! of the entry covering `_stext + 256 * i`.

use super::kallsyms::Kallsyms;
use crate::model::mem::{KernelMemory, MemError};

/// Size of one `struct orc_entry` (s16 sp_offset, s16 bp_offset, u16 bits).
pub const ORC_ENTRY_SIZE: u64 = 6;
/// `LOOKUP_BLOCK_SIZE`: bytes of text per `orc_lookup` entry.
pub const LOOKUP_BLOCK_SIZE: u64 = 256;

/// Where the ORC tables are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrcTables {
    /// `__start_orc_unwind_ip`.
    pub ip_table: u64,
    /// Number of IP entries.
    pub ip_entries: u64,
    /// `__start_orc_unwind`.
    pub unwind_table: u64,
    /// Number of ORC entries.
    pub unwind_entries: u64,
    /// `orc_lookup`, with its number of u32 entries when `orc_lookup_end` is known.
    pub lookup: Option<(u64, Option<u64>)>,
}

/// Locate the tables from kallsyms; `None` when the kernel has no ORC.
pub fn locate(k: &Kallsyms) -> Option<OrcTables> {
    let ip = k.first_addr("__start_orc_unwind_ip")?;
    let ip_end = k.first_addr("__stop_orc_unwind_ip")?;
    let u = k.first_addr("__start_orc_unwind")?;
    let u_end = k.first_addr("__stop_orc_unwind")?;
    let lookup = k
        .first_addr("orc_lookup")
        .map(|l| (l, k.first_addr("orc_lookup_end").and_then(|e| e.checked_sub(l)).map(|d| d / 4)));
    Some(OrcTables {
        ip_table: ip,
        ip_entries: ip_end.checked_sub(ip)? / 4,
        unwind_table: u,
        unwind_entries: u_end.checked_sub(u)? / ORC_ENTRY_SIZE,
        lookup,
    })
}

/// `ORC_REG_*`: the base registers of the previous SP and BP.
pub mod reg {
    /// The register did not change (BP) / no frame: end or error (SP).
    pub const UNDEFINED: u8 = 0;
    /// The previous frame's SP (the CFA).
    pub const PREV_SP: u8 = 1;
    /// RDX (from full registers).
    pub const DX: u8 = 2;
    /// RDI (from full registers).
    pub const DI: u8 = 3;
    /// RBP.
    pub const BP: u8 = 4;
    /// RSP.
    pub const SP: u8 = 5;
    /// R10 (from full registers).
    pub const R10: u8 = 6;
    /// R13 (from full registers).
    pub const R13: u8 = 7;
    /// `*(BP + offset)`.
    pub const BP_INDIRECT: u8 = 8;
    /// `*SP + offset`.
    pub const SP_INDIRECT: u8 = 9;
}

/// `UNWIND_HINT_TYPE_*` values an entry's `type` may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcType {
    /// A normal call frame: the return address is just below the previous SP.
    Call,
    /// Full `pt_regs` at the previous SP.
    Regs,
    /// Only the IRET frame (ip, cs, flags, sp, ss) at the previous SP.
    RegsPartial,
    /// 3: not a valid ORC entry type.
    Invalid,
}

/// One `struct orc_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrcEntry {
    /// Offset of the previous SP from `sp_reg`.
    pub sp_offset: i16,
    /// Offset of the saved BP from `bp_reg`.
    pub bp_offset: i16,
    /// `reg::*` base of the previous SP.
    pub sp_reg: u8,
    /// `reg::*` base of the saved BP.
    pub bp_reg: u8,
    /// Frame type.
    pub kind: OrcType,
    /// End of the stack (with `sp_reg == UNDEFINED`).
    pub end: bool,
}

impl OrcEntry {
    /// Decodes the 6 packed bytes.
    pub fn parse(b: &[u8; 6]) -> Self {
        let bits = u16::from_le_bytes([b[4], b[5]]);
        Self {
            sp_offset: i16::from_le_bytes([b[0], b[1]]),
            bp_offset: i16::from_le_bytes([b[2], b[3]]),
            sp_reg: (bits & 0xf) as u8,
            bp_reg: ((bits >> 4) & 0xf) as u8,
            kind: match (bits >> 8) & 3 {
                0 => OrcType::Call,
                1 => OrcType::Regs,
                2 => OrcType::RegsPartial,
                _ => OrcType::Invalid,
            },
            end: (bits >> 10) & 1 == 1,
        }
    }

    /// The 6 packed bytes.
    pub fn to_bytes(self) -> [u8; 6] {
        let kind = match self.kind {
            OrcType::Call => 0u16,
            OrcType::Regs => 1,
            OrcType::RegsPartial => 2,
            OrcType::Invalid => 3,
        };
        let bits = u16::from(self.sp_reg & 0xf) | (u16::from(self.bp_reg & 0xf) << 4) | (kind << 8) | (u16::from(self.end) << 10);
        let mut out = [0u8; 6];
        out[0..2].copy_from_slice(&self.sp_offset.to_le_bytes());
        out[2..4].copy_from_slice(&self.bp_offset.to_le_bytes());
        out[4..6].copy_from_slice(&bits.to_le_bytes());
        out
    }

    /// A "weak" section terminator: no frame info and not an end marker.
    pub fn is_terminator(&self) -> bool {
        self.sp_reg == reg::UNDEFINED && !self.end
    }
}

/// Why a table was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrcError {
    /// The IP and entry counts differ, or are empty.
    #[error("ORC tables do not match: {ips} ip entries, {entries} orc entries")]
    Counts {
        /// IP entries.
        ips: u64,
        /// ORC entries.
        entries: u64,
    },
    /// The IPs are not sorted (the kernel sorts them at build or load time).
    #[error("ORC ip table is not sorted at entry {0}")]
    Unsorted(usize),
    /// Reading the tables failed.
    #[error("reading the ORC tables failed")]
    Memory(#[from] #[source] MemError),
}

impl OrcError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Counts { .. } => "orc_counts",
            Self::Unsorted(_) => "orc_unsorted",
            Self::Memory(e) => e.cause(),
        }
    }
}

/// One ORC table in host memory, covering `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrcTable {
    /// What it describes (`vmlinux`, a module's name, `patch <id>`).
    pub name: String,
    /// First text address it covers.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Absolute instruction addresses, sorted.
    pub ips: Vec<u64>,
    /// The entry of each address.
    pub entries: Vec<OrcEntry>,
    /// `orc_lookup` (vmlinux only): entry index per 256-byte block from `start`.
    pub lookup: Option<Vec<u32>>,
    /// More text it covers outside `[start, end)`, searched without the
    /// lookup blocks (vmlinux: the head text before `_stext`, init text).
    pub also: Vec<std::ops::Range<u64>>,
}

impl OrcTable {
    /// A table from absolute addresses and entries (sorted here, weak
    /// terminators before real entries at the same address, as the kernel's
    /// module loader sorts).
    pub fn new(name: &str, start: u64, end: u64, mut rows: Vec<(u64, OrcEntry)>) -> Self {
        rows.sort_by_key(|(ip, e)| (*ip, !e.is_terminator()));
        let (ips, entries) = rows.into_iter().unzip();
        Self { name: name.to_string(), start, end, ips, entries, lookup: None, also: Vec::new() }
    }

    /// Decodes the raw tables: `ip_bytes` (s32 each, relative to
    /// `ip_base + 4 * i`) and `entry_bytes` (6 each). They must be sorted.
    pub fn from_raw(name: &str, start: u64, end: u64, ip_base: u64, ip_bytes: &[u8], entry_bytes: &[u8]) -> Result<Self, OrcError> {
        let n = ip_bytes.len() / 4;
        if n == 0 || entry_bytes.len() / 6 != n {
            return Err(OrcError::Counts { ips: n as u64, entries: (entry_bytes.len() / 6) as u64 });
        }
        let mut ips = Vec::with_capacity(n);
        for (i, c) in ip_bytes.chunks_exact(4).enumerate() {
            let rel = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let ip = ip_base.wrapping_add(4 * i as u64).wrapping_add(rel as i64 as u64);
            if ips.last().is_some_and(|&p| ip < p) {
                return Err(OrcError::Unsorted(i));
            }
            ips.push(ip);
        }
        let entries = entry_bytes.chunks_exact(6).map(|c| OrcEntry::parse(&[c[0], c[1], c[2], c[3], c[4], c[5]])).collect();
        Ok(Self { name: name.to_string(), start, end, ips, entries, lookup: None, also: Vec::new() })
    }

    /// Reads a table from guest memory (`entries` of each kind).
    pub fn read<M: KernelMemory + ?Sized>(mem: &mut M, name: &str, text: (u64, u64), ip_table: u64, unwind_table: u64, entries: u64) -> Result<Self, OrcError> {
        if entries == 0 || entries > 8 << 20 {
            return Err(OrcError::Counts { ips: entries, entries });
        }
        let ipb = mem.read_vec(ip_table, (entries * 4) as usize)?;
        let eb = mem.read_vec(unwind_table, (entries * ORC_ENTRY_SIZE) as usize)?;
        Self::from_raw(name, text.0, text.1, ip_table, &ipb, &eb)
    }

    /// Reads vmlinux's tables and its `orc_lookup` (`_stext.._etext`; the
    /// head text from `_text` and the init text are covered too: the boot
    /// CPU's idle task still returns into them).
    pub fn read_vmlinux<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, t: &OrcTables) -> Result<Self, OrcError> {
        if t.ip_entries != t.unwind_entries {
            return Err(OrcError::Counts { ips: t.ip_entries, entries: t.unwind_entries });
        }
        let start = k.first_addr("_stext").unwrap_or(0);
        let end = k.first_addr("_etext").unwrap_or(u64::MAX);
        let mut table = Self::read(mem, "vmlinux", (start, end), t.ip_table, t.unwind_table, t.ip_entries)?;
        for (a, b) in [("_text", "_stext"), ("_sinittext", "_einittext")] {
            if let (Some(a), Some(b)) = (k.first_addr(a), k.first_addr(b)) {
                if a < b {
                    table.also.push(a..b);
                }
            }
        }
        if let (Some((l, Some(n))), true) = (t.lookup, start != 0) {
            if n > 1 && n <= 1 << 24 {
                let b = mem.read_vec(l, (n * 4) as usize)?;
                let blocks: Vec<u32> = b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                // The kernel fills it at boot (unwind_init); only take a consistent one.
                if blocks.windows(2).all(|w| w[0] <= w[1]) && blocks.iter().all(|&i| (i as usize) < table.ips.len()) {
                    table.lookup = Some(blocks);
                }
            }
        }
        Ok(table)
    }

    /// True when `ip` is in the text this table covers.
    pub fn covers(&self, ip: u64) -> bool {
        (ip >= self.start && ip < self.end) || self.also.iter().any(|r| r.contains(&ip))
    }

    /// The entry for `ip`: the rightmost address `<= ip` (`__orc_find`),
    /// narrowed by `orc_lookup` when there is one.
    pub fn find(&self, ip: u64) -> Option<&OrcEntry> {
        let (mut lo, mut hi) = (0usize, self.ips.len());
        if let (Some(l), true) = (&self.lookup, ip >= self.start && ip < self.end) {
            let idx = ((ip - self.start) / LOOKUP_BLOCK_SIZE) as usize;
            if idx + 1 < l.len() {
                lo = l[idx] as usize;
                hi = (l[idx + 1] as usize + 1).min(self.ips.len());
            }
        }
        let slice = self.ips.get(lo..hi)?;
        let n = slice.partition_point(|&a| a <= ip);
        // n == 0: nothing at or below ip (the kernel would take the first
        // entry of the range; an address below every entry has none).
        self.entries.get((lo + n).checked_sub(1)?).filter(|_| n > 0)
    }
}

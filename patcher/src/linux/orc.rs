//! Locate the ORC unwind tables (parsing is for a later issue): the sorted
//! instruction-pointer table (`__start_orc_unwind_ip`, i32 entries), the
//! entries (`__start_orc_unwind`, 6-byte `struct orc_entry`) and the fast
//! lookup table (`orc_lookup`, u32 entries).

use super::kallsyms::Kallsyms;

/// Size of one `struct orc_entry` (s16 sp_offset, s16 bp_offset, u16 bits).
pub const ORC_ENTRY_SIZE: u64 = 6;

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

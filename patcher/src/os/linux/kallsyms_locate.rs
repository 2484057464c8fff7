//! Find the kallsyms tables in a region of kernel memory without knowing
//! any symbol, by their structure (6.1 layout, CONFIG_KALLSYMS_BASE_RELATIVE,
//! each table 8-byte aligned, in this order):
//!
//! `kallsyms_offsets` (i32 × N), `kallsyms_relative_base` (u64),
//! `kallsyms_num_syms` (u32), `kallsyms_names`, `kallsyms_markers` (u32 ×
//! ⌈N/256⌉), optionally `kallsyms_seqs_of_names` (3 × N bytes, backported
//! into Debian's 6.1), `kallsyms_token_table` (256 NUL-terminated tokens),
//! `kallsyms_token_index` (u16 × 256).
//!
//! The anchor is `relative_base` (a kernel-half address) followed by a
//! plausible `num_syms` and zero padding. A candidate is accepted only when
//! the names decode into exactly N entries whose every 256th offset equals
//! the markers, the token index matches the token table string by string,
//! and the decoded addresses never decrease.

use thiserror::Error;

use crate::model::mem::MemError;

/// Why kallsyms could not be read.
#[derive(Debug, Error)]
pub enum KallsymsError {
    /// No tables with the expected structure were found.
    #[error("kallsyms tables not found: {0}")]
    NotFound(String),
    /// The tables were found but do not decode consistently.
    #[error("kallsyms tables are inconsistent: {0}")]
    Corrupt(String),
    /// The scan for the tables looked at more candidate entries than any
    /// real kernel needs, or ran over its time bound (a region full of
    /// anchor look-alikes).
    #[error("kallsyms scan stopped at its bound after {steps} steps: {why}")]
    ScanBound {
        /// Name entries and offsets checked over all candidates.
        steps: u64,
        /// Which bound.
        why: &'static str,
    },
    /// Reading kernel memory failed.
    #[error("reading kallsyms tables failed")]
    Memory(#[from] #[source] MemError),
}

impl KallsymsError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "kallsyms_not_found",
            Self::Corrupt(_) => "kallsyms_corrupt",
            Self::ScanBound { .. } => "kallsyms_scan_bound",
            Self::Memory(_) => "memory",
        }
    }
}

/// Where each table is (virtual addresses) and the scalars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KallsymsTables {
    /// `kallsyms_offsets`.
    pub offsets: u64,
    /// `kallsyms_relative_base` (address of the variable).
    pub relative_base_addr: u64,
    /// Its value.
    pub relative_base: u64,
    /// `kallsyms_num_syms` value.
    pub num_syms: u32,
    /// `kallsyms_names`.
    pub names: u64,
    /// Byte length of `kallsyms_names`.
    pub names_len: u64,
    /// `kallsyms_markers`.
    pub markers: u64,
    /// `kallsyms_seqs_of_names`, when the kernel has it.
    pub seqs_of_names: Option<u64>,
    /// `kallsyms_token_table`.
    pub token_table: u64,
    /// `kallsyms_token_index`.
    pub token_index: u64,
}

const MIN_SYMS: u32 = 1000;
/// Most symbols a table may claim (a Debian kernel has ~150k; allyesconfig
/// under 1M).
pub const MAX_SYMS: u32 = 4_000_000;
/// Longest `kallsyms_names` accepted (each entry at most 2 + 0x7fff bytes,
/// in practice ~10 bytes a symbol).
pub const MAX_NAMES_LEN: u64 = 64 << 20;
/// Longest token table (256 tokens of at most 256 bytes each).
pub const MAX_TOKEN_TABLE: u64 = 256 * 257;
/// Steps (name entries and offsets checked) over all candidates of one scan.
/// The real table costs about 2 * num_syms; a region of look-alike anchors
/// could otherwise make the scan quadratic in the region size.
pub const MAX_SCAN_STEPS: u64 = 64 << 20;
/// Time bound on one scan.
pub const MAX_SCAN_TIME: std::time::Duration = std::time::Duration::from_secs(30);

impl KallsymsTables {
    /// Check the scalars before anything is sized by them (tables that do
    /// not come from [`locate`] are as untrusted as the guest).
    pub fn check(&self) -> Result<(), KallsymsError> {
        let bad = |why: String| Err(KallsymsError::Corrupt(why));
        if self.num_syms > MAX_SYMS {
            return bad(format!("{} symbols (limit {MAX_SYMS})", self.num_syms));
        }
        if self.names_len > MAX_NAMES_LEN {
            return bad(format!("names table of {:#x} bytes (limit {MAX_NAMES_LEN:#x})", self.names_len));
        }
        match self.token_index.checked_sub(self.token_table) {
            Some(l) if l <= MAX_TOKEN_TABLE => Ok(()),
            _ => bad(format!("token table {:#x}..{:#x}", self.token_table, self.token_index)),
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn align8(x: usize) -> usize {
    (x + 7) & !7
}

/// Length of one `kallsyms_names` entry at `o`: (header bytes, token count).
pub fn entry_len(b: &[u8], o: usize) -> Option<(usize, usize)> {
    let l0 = *b.get(o)? as usize;
    if l0 & 0x80 != 0 {
        let l1 = *b.get(o + 1)? as usize;
        Some((2, (l0 & 0x7f) | (l1 << 7)))
    } else {
        Some((1, l0))
    }
}

/// Parse a token table at `t`; return the 256 tokens and the table length.
pub fn parse_token_table(b: &[u8], t: usize) -> Option<(Vec<Vec<u8>>, usize)> {
    let mut tokens = Vec::with_capacity(256);
    let mut o = t;
    for _ in 0..256 {
        let rest = b.get(o..)?;
        let n = rest.iter().take(256).position(|&c| c == 0)?;
        if n == 0 || !rest[..n].iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            return None;
        }
        tokens.push(rest[..n].to_vec());
        o += n + 1;
    }
    Some((tokens, o - t))
}

fn token_index_matches(b: &[u8], idx: usize, tokens: &[Vec<u8>]) -> bool {
    let mut off = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        if u16_at(b, idx + 2 * i) != Some(off as u16) {
            return false;
        }
        off += t.len() + 1;
    }
    true
}

/// Decoded symbol address per the 6.1 rules (absolute per-CPU symbols).
pub fn sym_address(offset: i32, relative_base: u64) -> u64 {
    if offset >= 0 {
        offset as u64
    } else {
        relative_base.wrapping_sub(1).wrapping_sub(offset as i64 as u64)
    }
}

/// Check one anchor candidate at region offset `q`.
fn try_candidate(b: &[u8], base: u64, q: usize, steps: &mut u64, max_steps: u64) -> Option<KallsymsTables> {
    let relative_base = u64_at(b, q)?;
    let n = u32_at(b, q + 8)?;
    let nn = n as usize;
    let offsets = q.checked_sub(align8(4 * nn))?;
    let names = q + 16;
    // Names: n entries, recording every 256th offset.
    let m = nn.div_ceil(256);
    let mut marks = Vec::with_capacity(m);
    let mut o = names;
    for i in 0..nn {
        if i % 256 == 0 {
            marks.push((o - names) as u32);
        }
        *steps += 1;
        if *steps > max_steps {
            return None;
        }
        let (h, l) = entry_len(b, o)?;
        if l == 0 {
            return None;
        }
        o += h + l;
        if o > b.len() {
            return None;
        }
    }
    let names_len = o - names;
    let markers = align8(o);
    for (i, &mk) in marks.iter().enumerate() {
        if u32_at(b, markers + 4 * i)? != mk {
            return None;
        }
    }
    let after = align8(markers + 4 * m);
    // Token table right after the markers, or after seqs_of_names.
    let mut found = None;
    for (t, seqs) in [(after, None), (align8(after + 3 * nn), Some(after))] {
        if let Some((tokens, len)) = parse_token_table(b, t) {
            let idx = align8(t + len);
            if token_index_matches(b, idx, &tokens) {
                found = Some((t, idx, seqs));
                break;
            }
        }
    }
    let (t, idx, seqs) = found?;
    // Addresses never decrease.
    let mut prev = 0u64;
    for i in 0..nn {
        let a = sym_address(u32_at(b, offsets + 4 * i)? as i32, relative_base);
        if a < prev {
            return None;
        }
        prev = a;
    }
    let va = |x: usize| base + x as u64;
    Some(KallsymsTables {
        offsets: va(offsets),
        relative_base_addr: va(q),
        relative_base,
        num_syms: n,
        names: va(names),
        names_len: names_len as u64,
        markers: va(markers),
        seqs_of_names: seqs.map(va),
        token_table: va(t),
        token_index: va(idx),
    })
}

/// Scan `region` (mapped at `base`, 8-byte aligned) for the tables.
pub fn locate(region: &[u8], base: u64) -> Result<KallsymsTables, KallsymsError> {
    locate_bounded(region, base, MAX_SCAN_STEPS)
}

/// [`locate`] with a step bound of `max_steps`.
pub fn locate_bounded(region: &[u8], base: u64, max_steps: u64) -> Result<KallsymsTables, KallsymsError> {
    if !base.is_multiple_of(8) {
        return Err(KallsymsError::NotFound("region base is not 8-byte aligned".into()));
    }
    let mut candidates = 0usize;
    let mut steps = 0u64;
    let started = std::time::Instant::now();
    let mut q = 0usize;
    while q + 16 <= region.len() {
        if steps > max_steps {
            return Err(KallsymsError::ScanBound { steps, why: "step bound" });
        }
        let rb = u64_at(region, q).unwrap_or(0);
        if rb >= 0xffff_ffff_8000_0000 {
            let n = u32_at(region, q + 8).unwrap_or(0);
            if (MIN_SYMS..=MAX_SYMS).contains(&n) && u32_at(region, q + 12) == Some(0) {
                candidates += 1;
                if candidates.is_multiple_of(64) && started.elapsed() > MAX_SCAN_TIME {
                    return Err(KallsymsError::ScanBound { steps, why: "time bound" });
                }
                if let Some(t) = try_candidate(region, base, q, &mut steps, max_steps) {
                    tracing::debug!(candidates, tables = ?t, "kallsyms tables located");
                    return Ok(t);
                }
            }
        }
        q += 8;
    }
    Err(KallsymsError::NotFound(format!(
        "no kallsyms tables in {:#x}+{:#x} ({candidates} anchor candidates rejected)",
        base,
        region.len()
    )))
}

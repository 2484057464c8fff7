//! A patch's own ORC rows, kept in its registry record: the registry is the
//! only state, so a later vsplice process (which has no patch file, only the
//! guest) unwinds through the patch's code with them instead of falling
//! back to the word scan.
//!
//! Each row is the instruction's offset from the patch's code start (u32,
//! little-endian) and the 6-byte ORC entry as the kernel lays it out, 10
//! bytes written as 20 hex digits in one JSON string. At most [`MAX_ROWS`]
//! rows (20 KiB of JSON) per patch, so that a registry copy
//! ([`super::REGISTRY_COPY`]) holds several patches with their rows; a
//! patch with more keeps none, and stacks through its code are scanned.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Rows a patch may keep in the registry.
pub const MAX_ROWS: usize = 1024;
/// Bytes of one encoded row.
const ROW: usize = 10;

/// Why rows cannot be kept or read back.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PatchOrcError {
    /// More rows than the registry keeps for one patch.
    #[error("{rows} ORC rows, more than the {max} the registry keeps for a patch")]
    TooMany {
        /// Rows.
        rows: usize,
        /// The limit.
        max: usize,
    },
    /// A row describes an address outside the patch's code.
    #[error("ORC row for {addr:#x} is outside the patch's code {:#x}..{:#x}", code.start, code.end)]
    OutsideCode {
        /// The row's address.
        addr: u64,
        /// The patch's code.
        code: Range<u64>,
    },
    /// The recorded rows are not hex of whole rows.
    #[error("recorded ORC rows are malformed")]
    Malformed,
}

impl PatchOrcError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::TooMany { .. } => "orc_too_many_rows",
            Self::OutsideCode { .. } => "orc_outside_code",
            Self::Malformed => "orc_malformed",
        }
    }
}

/// ORC rows of one patch's code, as the registry keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PatchOrc(String);

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl PatchOrc {
    /// Encodes `rows` (absolute address, raw ORC entry) of the code at `code`.
    pub fn encode(code: Range<u64>, rows: &[(u64, [u8; 6])]) -> Result<Self, PatchOrcError> {
        if rows.len() > MAX_ROWS {
            return Err(PatchOrcError::TooMany { rows: rows.len(), max: MAX_ROWS });
        }
        let mut s = String::with_capacity(rows.len() * ROW * 2);
        for (addr, entry) in rows {
            let outside = || PatchOrcError::OutsideCode { addr: *addr, code: code.clone() };
            let off = addr.checked_sub(code.start).filter(|_| code.contains(addr)).ok_or_else(outside)?;
            let off = u32::try_from(off).map_err(|_| outside())?;
            for b in off.to_le_bytes().iter().chain(entry) {
                s.push_str(&format!("{b:02x}"));
            }
        }
        Ok(Self(s))
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.0.len() / (ROW * 2)
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rows back, at absolute addresses of the code at `code`.
    pub fn rows(&self, code: Range<u64>) -> Result<Vec<(u64, [u8; 6])>, PatchOrcError> {
        let hex = self.0.as_bytes();
        if !hex.len().is_multiple_of(ROW * 2) || hex.len() / (ROW * 2) > MAX_ROWS {
            return Err(PatchOrcError::Malformed);
        }
        let mut out = Vec::with_capacity(self.len());
        for row in hex.chunks_exact(ROW * 2) {
            let mut b = [0u8; ROW];
            for (i, pair) in row.chunks_exact(2).enumerate() {
                b[i] = (nibble(pair[0]).ok_or(PatchOrcError::Malformed)? << 4) | nibble(pair[1]).ok_or(PatchOrcError::Malformed)?;
            }
            let addr = code.start.wrapping_add(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            if !code.contains(&addr) {
                return Err(PatchOrcError::OutsideCode { addr, code });
            }
            out.push((addr, [b[4], b[5], b[6], b[7], b[8], b[9]]));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CODE: Range<u64> = 0xffff_ffff_8160_0000..0xffff_ffff_8160_0040;

    #[test]
    fn rows_round_trip_relative_to_the_code_and_are_bounded() {
        let rows = vec![(CODE.start, [1, 0, 0, 0, 0x15, 0]), (CODE.start + 0x3f, [0xff, 0xfe, 0, 0, 0x25, 2])];
        let o = PatchOrc::encode(CODE, &rows).unwrap();
        assert_eq!((o.len(), o.0.len()), (2, 40));
        assert_eq!(o.rows(CODE).unwrap(), rows);
        assert!(!o.is_empty() && PatchOrc::default().is_empty());
        // The JSON is one string, and old registries without rows still read.
        assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{}\"", o.0));
        let moved = CODE.start + 0x1000..CODE.end + 0x1000;
        assert_eq!(o.rows(moved.clone()).unwrap()[1].0, moved.start + 0x3f);
        let e = PatchOrc::encode(CODE, &[(CODE.start + 0x40, [0; 6])]).unwrap_err();
        assert_eq!(e.cause(), "orc_outside_code");
        let many = vec![(CODE.start, [0u8; 6]); MAX_ROWS + 1];
        assert_eq!(PatchOrc::encode(CODE, &many).unwrap_err(), PatchOrcError::TooMany { rows: MAX_ROWS + 1, max: MAX_ROWS });
        assert_eq!(PatchOrc("0g".repeat(10)).rows(CODE).unwrap_err(), PatchOrcError::Malformed);
        assert_eq!(PatchOrc("00".repeat(9)).rows(CODE).unwrap_err(), PatchOrcError::Malformed);
        assert_eq!(o.rows(CODE.start..CODE.end - 1).unwrap_err().cause(), "orc_outside_code");
    }
}

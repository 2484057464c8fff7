//! The patch arena's guest-physical range and the one rule it must follow,
//! whoever describes it (`vsplice run --arena MIB`, `vsplice patch --arena
//! START:SIZE`, the VMM's e820 placement, the transaction, the registry):
//! it starts 2 MiB aligned, is a whole number of 2 MiB slots, has at least
//! two of them (a data slot and a code slot), and does not run past the end
//! of the address space. [`ArenaRange::new`] is the only way to make one.

use std::fmt;
use std::num::ParseIntError;
use std::ops::Range;
use std::str::FromStr;

use thiserror::Error;

/// One arena slot: a 2 MiB page.
pub const SLOT: u64 = 2 << 20;
/// The smallest arena: one data slot and one code slot.
pub const MIN_SIZE: u64 = 2 * SLOT;

const MIB: u64 = 1 << 20;

/// A guest-physical arena range that follows the arena's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArenaRange {
    phys: u64,
    size: u64,
}

/// Why a range cannot be the arena, or a `START:SIZE` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArenaError {
    /// The start is not on a 2 MiB boundary.
    #[error("an arena at {phys:#x} is not 2 MiB aligned")]
    Misaligned {
        /// The start given.
        phys: u64,
    },
    /// The size is not a whole number of 2 MiB slots.
    #[error("a {} arena is not a whole number of 2 MiB slots", Bytes(*size))]
    PartialSlot {
        /// The size given.
        size: u64,
    },
    /// Fewer than two slots.
    #[error("a {} arena is too small: at least 4 MiB are needed (a 2 MiB data slot and a 2 MiB code slot)", Bytes(*size))]
    TooSmall {
        /// The size given.
        size: u64,
    },
    /// Start plus size does not fit in 64 bits.
    #[error("a {} arena at {phys:#x} runs past the end of the address space", Bytes(*size))]
    Overflow {
        /// The start given.
        phys: u64,
        /// The size given.
        size: u64,
    },
    /// A size in MiB that does not fit in 64 bits as bytes.
    #[error("an arena of {mib} MiB is larger than the address space")]
    MibOverflow {
        /// The MiB given.
        mib: u64,
    },
    /// Not `START:SIZE`.
    #[error("`{text}` is not START:SIZE (e.g. 0x3f000000:4M)")]
    Syntax {
        /// The text given.
        text: String,
    },
    /// A start or size that is not a number.
    #[error("`{text}` is not a number (decimal or 0x hex, with an optional K, M or G suffix)")]
    Number {
        /// The text given.
        text: String,
        /// Why it does not parse.
        #[source]
        source: ParseIntError,
    },
    /// A start or size that does not fit in 64 bits once its suffix is applied.
    #[error("`{text}` is too large")]
    NumberTooLarge {
        /// The text given.
        text: String,
    },
}

/// A byte count as people write arena sizes (`4 MiB`, `512 KiB`, `0x1001-byte`).
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n.is_multiple_of(MIB) => write!(f, "{} MiB", n / MIB),
            n if n.is_multiple_of(1 << 10) => write!(f, "{} KiB", n >> 10),
            n => write!(f, "{n:#x}-byte"),
        }
    }
}

impl ArenaRange {
    /// The arena at `phys` of `size` bytes, if it follows the rule.
    pub fn new(phys: u64, size: u64) -> Result<Self, ArenaError> {
        if !phys.is_multiple_of(SLOT) {
            return Err(ArenaError::Misaligned { phys });
        }
        if !size.is_multiple_of(SLOT) {
            return Err(ArenaError::PartialSlot { size });
        }
        if size < MIN_SIZE {
            return Err(ArenaError::TooSmall { size });
        }
        if phys.checked_add(size).is_none() {
            return Err(ArenaError::Overflow { phys, size });
        }
        Ok(Self { phys, size })
    }

    /// The arena at `phys` of `mib` MiB (`vsplice run --arena MIB`, once the
    /// VMM has placed it).
    pub fn from_mib(phys: u64, mib: u64) -> Result<Self, ArenaError> {
        let size = mib.checked_mul(MIB).ok_or(ArenaError::MibOverflow { mib })?;
        Self::new(phys, size)
    }

    /// Checks an arena size given in MiB before the arena is placed (the
    /// VMM's configuration); returns it in bytes.
    pub fn size_from_mib(mib: u64) -> Result<u64, ArenaError> {
        Self::from_mib(0, mib).map(|a| a.size)
    }

    /// Guest-physical start (2 MiB aligned).
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Size in bytes (a multiple of 2 MiB, at least 4 MiB).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Guest-physical end (exclusive).
    pub fn end(&self) -> u64 {
        self.phys + self.size
    }

    /// The range `phys..end`.
    pub fn range(&self) -> Range<u64> {
        self.phys..self.end()
    }

    /// Number of 2 MiB slots.
    pub fn slots(&self) -> u64 {
        self.size / SLOT
    }
}

/// A number with an optional `K`, `M` or `G` suffix, decimal or `0x` hex.
fn parse_num(s: &str) -> Result<u64, ArenaError> {
    let (digits, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let v = match digits.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => digits.parse(),
    }
    .map_err(|source| ArenaError::Number { text: s.to_owned(), source })?;
    v.checked_mul(mul).ok_or_else(|| ArenaError::NumberTooLarge { text: s.to_owned() })
}

/// `START:SIZE`, each decimal or `0x` hex with an optional `K`, `M` or `G`
/// suffix (`0x3f000000:4M`, `134217728:4194304`).
impl FromStr for ArenaRange {
    type Err = ArenaError;

    fn from_str(s: &str) -> Result<Self, ArenaError> {
        let (start, size) = s.split_once(':').ok_or_else(|| ArenaError::Syntax { text: s.to_owned() })?;
        Self::new(parse_num(start)?, parse_num(size)?)
    }
}

/// `START:SIZE` as [`FromStr`] reads it (`0x3f000000:4M`).
impl fmt::Display for ArenaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}:{}M", self.phys, self.size / MIB)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_rule() {
        let a = ArenaRange::new(0x3f00_0000, 4 << 20).unwrap();
        assert_eq!((a.phys(), a.size(), a.end(), a.slots()), (0x3f00_0000, 4 << 20, 0x3f40_0000, 2));
        assert_eq!(a.range(), 0x3f00_0000..0x3f40_0000);
        assert!(ArenaRange::new(0, 6 << 20).is_ok());
        assert_eq!(ArenaRange::new(0x3f00_1000, 4 << 20), Err(ArenaError::Misaligned { phys: 0x3f00_1000 }));
        assert_eq!(ArenaRange::new(0, 5 << 20), Err(ArenaError::PartialSlot { size: 5 << 20 }));
        assert_eq!(ArenaRange::new(0, 2 << 20), Err(ArenaError::TooSmall { size: 2 << 20 }));
        assert_eq!(ArenaRange::new(0, 0), Err(ArenaError::TooSmall { size: 0 }));
        let top = u64::MAX - (SLOT - 1) - SLOT; // the last 2 MiB-aligned start but one
        assert_eq!(ArenaRange::new(top, 4 << 20), Err(ArenaError::Overflow { phys: top, size: 4 << 20 }));
        assert!(ArenaRange::new(top - SLOT, 4 << 20).is_ok());
    }

    #[test]
    fn from_mib_is_the_same_rule() {
        assert_eq!(ArenaRange::from_mib(0x800_0000, 4).unwrap(), ArenaRange::new(0x800_0000, 4 << 20).unwrap());
        assert_eq!(ArenaRange::size_from_mib(4).unwrap(), 4 << 20);
        assert_eq!(ArenaRange::size_from_mib(16).unwrap(), 16 << 20);
        assert_eq!(ArenaRange::size_from_mib(2), Err(ArenaError::TooSmall { size: 2 << 20 }));
        assert_eq!(ArenaRange::size_from_mib(3), Err(ArenaError::PartialSlot { size: 3 << 20 }));
        assert_eq!(ArenaRange::size_from_mib(0), Err(ArenaError::TooSmall { size: 0 }));
        assert_eq!(ArenaRange::size_from_mib(u64::MAX), Err(ArenaError::MibOverflow { mib: u64::MAX }));
        assert_eq!(ArenaRange::size_from_mib(1 << 44), Err(ArenaError::MibOverflow { mib: 1 << 44 }));
    }

    #[test]
    fn arena_specs_parse() {
        let r = |s: &str| s.parse::<ArenaRange>().map(|a| a.range());
        assert_eq!(r("0x8000000:4M").unwrap(), 0x800_0000..0x840_0000);
        assert_eq!(r("134217728:4194304").unwrap(), 0x800_0000..0x840_0000);
        assert!(r("0x8001000:4M").is_err());
        assert!(r("0x8000000:2M").is_err());
        assert!(r("0x8000000").is_err());
        assert_eq!(r("1G:4096K").unwrap(), (1 << 30)..(1 << 30) + (4 << 20));
        assert_eq!(r("0x40000000:6m").unwrap(), 0x4000_0000..0x4060_0000);
        assert!(matches!("x:4M".parse::<ArenaRange>(), Err(ArenaError::Number { .. })));
        assert!(matches!("0:99999999999999G".parse::<ArenaRange>(), Err(ArenaError::NumberTooLarge { .. })));
        assert!(matches!("0x8000000".parse::<ArenaRange>(), Err(ArenaError::Syntax { .. })));
    }

    #[test]
    fn display_round_trips() {
        let a = ArenaRange::new(0x3f00_0000, 4 << 20).unwrap();
        assert_eq!(a.to_string(), "0x3f000000:4M");
        assert_eq!(a.to_string().parse::<ArenaRange>().unwrap(), a);
    }

    #[test]
    fn messages_are_one_line_and_name_the_sizes() {
        let too_small = ArenaRange::size_from_mib(2).unwrap_err().to_string();
        assert_eq!(too_small, "a 2 MiB arena is too small: at least 4 MiB are needed (a 2 MiB data slot and a 2 MiB code slot)");
        assert_eq!(ArenaRange::size_from_mib(3).unwrap_err().to_string(), "a 3 MiB arena is not a whole number of 2 MiB slots");
        assert_eq!(ArenaRange::new(0, 0x1001).unwrap_err().to_string(), "a 0x1001-byte arena is not a whole number of 2 MiB slots");
        assert_eq!(ArenaRange::new(0, 0).unwrap_err().to_string(), "a 0 MiB arena is too small: at least 4 MiB are needed (a 2 MiB data slot and a 2 MiB code slot)");
    }
}

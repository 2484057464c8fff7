//! Placing a patch's code and data in the arena: first fit among the ranges
//! the registry says are in use (applied patches and ones being loaded), so
//! the registry alone is the allocator's state.

use std::ops::Range;

/// First `size` bytes at `align` inside `within` that overlap none of `used`.
pub fn first_fit(within: Range<u64>, used: &[Range<u64>], size: u64, align: u64) -> Option<u64> {
    let align = align.max(1);
    let mut used: Vec<&Range<u64>> = used.iter().filter(|r| r.end > within.start && r.start < within.end).collect();
    used.sort_by_key(|r| r.start);
    let mut cur = within.start;
    let size = size.max(1);
    for r in used {
        let at = cur.div_ceil(align) * align;
        if at.checked_add(size)? <= r.start {
            return Some(at);
        }
        cur = cur.max(r.end);
    }
    let at = cur.div_ceil(align) * align;
    (at.checked_add(size)? <= within.end).then_some(at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn first_fit_fills_holes_and_reports_full() {
        assert_eq!(first_fit(0x1000..0x2000, &[], 0x100, 16), Some(0x1000));
        let used = [0x1000..0x1100, 0x1200..0x1e00];
        assert_eq!(first_fit(0x1000..0x2000, &used, 0x100, 16), Some(0x1100));
        assert_eq!(first_fit(0x1000..0x2000, &used, 0x101, 16), Some(0x1e00));
        assert_eq!(first_fit(0x1000..0x2000, &used, 0x201, 16), None);
        let one: [Range<u64>; 1] = [Range { start: 0x1000, end: 0x1001 }];
        assert_eq!(first_fit(0x1000..0x2000, &one, 8, 64), Some(0x1040));
    }
}

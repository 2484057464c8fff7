//! `vmlinux.relocs`: the KASLR relocation table the x86 build appends to the
//! vmlinux inside a bzImage's compressed payload, read the way the
//! decompressor's `handle_relocations` (arch/x86/boot/compressed/misc.c)
//! reads it: from the end of the decompressed payload backwards, u32
//! entries (kernel link addresses, sign-extended), first the 32-bit
//! relocations up to a zero, then the inverse 32-bit ones (per-CPU
//! references) up to a zero, then the 64-bit ones up to a zero.
//!
//! Every field listed is rewritten at boot by the KASLR delta, so run-pre
//! matching must tolerate it.

use std::ops::Range;

/// Where the decompressor adds the KASLR delta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relocs {
    /// 32-bit fields (`+= delta`).
    pub r32: Vec<u64>,
    /// Inverse 32-bit fields (`-= delta`).
    pub r32_inverse: Vec<u64>,
    /// 64-bit fields (`+= delta`).
    pub r64: Vec<u64>,
}

impl Relocs {
    /// Every relocated field as `(address, length, why)`.
    pub fn fields(&self) -> impl Iterator<Item = (u64, u32, &'static str)> + '_ {
        self.r32
            .iter()
            .map(|&a| (a, 4, "reloc32"))
            .chain(self.r32_inverse.iter().map(|&a| (a, 4, "reloc32_inverse")))
            .chain(self.r64.iter().map(|&a| (a, 8, "reloc64")))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.r32.len() + self.r32_inverse.len() + self.r64.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the table at the end of `payload`; every entry must lie in
/// `image` (the kernel's link-address range), else the payload has no
/// table (`None`).
pub fn parse(payload: &[u8], image: Range<u64>) -> Option<Relocs> {
    let n = payload.len() / 4;
    let word = |i: usize| -> u32 {
        let o = i * 4 + (payload.len() - n * 4);
        u32::from_le_bytes([payload[o], payload[o + 1], payload[o + 2], payload[o + 3]])
    };
    let mut i = n;
    let mut lists: [Vec<u64>; 3] = Default::default();
    for list in &mut lists {
        loop {
            i = i.checked_sub(1)?;
            let w = word(i);
            if w == 0 {
                break;
            }
            let addr = i64::from(w as i32) as u64;
            if !image.contains(&addr) {
                return None;
            }
            list.push(addr);
        }
    }
    let [r32, r32_inverse, r64] = lists;
    (r32.len() + r64.len() > 0).then_some(Relocs { r32, r32_inverse, r64 })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: u64 = 0xffff_ffff_8100_0000;

    fn push(v: &mut Vec<u8>, a: u64) {
        v.extend_from_slice(&(a as u32).to_le_bytes());
    }

    #[test]
    fn the_three_lists_are_read_backwards_from_the_end() {
        let mut p = vec![0xaa; 37]; // the kernel's bytes, any length
        push(&mut p, 0); // end of the 64-bit list
        push(&mut p, T + 0x30);
        push(&mut p, 0); // end of the inverse list
        push(&mut p, T + 0x20);
        push(&mut p, 0); // end of the 32-bit list
        push(&mut p, T + 0x10);
        push(&mut p, T + 0x14);
        let r = parse(&p, T..T + 0x1000).unwrap();
        assert_eq!(r.r32, vec![T + 0x14, T + 0x10]);
        assert_eq!(r.r32_inverse, vec![T + 0x20]);
        assert_eq!(r.r64, vec![T + 0x30]);
        assert_eq!(r.fields().count(), 4);
    }

    #[test]
    fn a_payload_without_a_table_is_none() {
        assert!(parse(&[0xaa; 64], T..T + 0x1000).is_none());
        let mut p = vec![0u8; 8];
        push(&mut p, T + 0x5000); // outside the image
        assert!(parse(&p, T..T + 0x1000).is_none());
    }
}

//! x86-64 relocations against the patch's own sections and the target's
//! symbols: R_X86_64_64, PC32, PLT32, 32, 32S, PC64 are applied with range
//! checks; GOT-relative ones (the object was built as PIC) and anything else
//! are refused.
//!
//! PC-relative values are computed modulo 2^64, as the CPU adds RIP and
//! the sign-extended displacement and as `ld` links: a per-CPU variable
//! (`__preempt_count`, `current_task`) is linked at its small offset in the
//! per-CPU area, and the kernel reaches it from code in the top 2 GiB with
//! `%gs:sym(%rip)`, whose displacement only fits once the distance wraps
//! around the top of the address space (`S - P` is about 2^64 - 1 GiB as a
//! plain integer, about +1 GiB modulo 2^64).

use object::elf;

use super::error::LoadError;

/// Applies one relocation to `buf` at `off`: `s` symbol value, `a` addend,
/// `p` runtime address of the patched field.
pub fn apply(buf: &mut [u8], off: usize, r_type: u32, s: u64, a: i64, p: u64, section: &str) -> Result<(), LoadError> {
    let sa = i128::from(s) + i128::from(a);
    // S + A - P modulo 2^64, read as signed: RIP + disp32 wraps the same way.
    let pc = s.wrapping_add_signed(a).wrapping_sub(p) as i64;
    let overflow = |value: i128| LoadError::Overflow { section: section.to_owned(), offset: off as u64, r_type, value };
    let (bytes, len): ([u8; 8], usize) = match r_type {
        elf::R_X86_64_NONE => return Ok(()),
        elf::R_X86_64_64 => ((sa as u64).to_le_bytes(), 8),
        elf::R_X86_64_PC64 => ((pc as u64).to_le_bytes(), 8),
        elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => {
            let v = i32::try_from(pc).map_err(|_| overflow(i128::from(pc)))?;
            (i64::from(v).to_le_bytes(), 4)
        }
        elf::R_X86_64_32 => {
            // Kernel addresses are sign-extended: as u32 they never fit.
            let v = u32::try_from(sa & 0xffff_ffff_ffff_ffff).ok().filter(|_| (0..=i128::from(u32::MAX)).contains(&sa));
            let v = v.ok_or_else(|| overflow(sa))?;
            (u64::from(v).to_le_bytes(), 4)
        }
        elf::R_X86_64_32S => {
            let signed = sa as u64 as i64;
            let v = i32::try_from(signed).map_err(|_| overflow(sa))?;
            (i64::from(v).to_le_bytes(), 4)
        }
        elf::R_X86_64_GOT32
        | elf::R_X86_64_GOTPCREL
        | elf::R_X86_64_GOTPCRELX
        | elf::R_X86_64_REX_GOTPCRELX
        | elf::R_X86_64_GOTOFF64
        | elf::R_X86_64_GOTPC32
        | elf::R_X86_64_GOT64
        | elf::R_X86_64_GOTPCREL64
        | elf::R_X86_64_GOTPC64
        | elf::R_X86_64_GOTPLT64 => {
            return Err(LoadError::UnsupportedRelocation { section: section.to_owned(), offset: off as u64, r_type, got: true })
        }
        _ => return Err(LoadError::UnsupportedRelocation { section: section.to_owned(), offset: off as u64, r_type, got: false }),
    };
    let field = off
        .checked_add(len)
        .and_then(|end| buf.get_mut(off..end))
        .ok_or_else(|| LoadError::Malformed(format!("relocation at {section}+{off:#x} is outside the section")))?;
    field.copy_from_slice(&bytes[..len]);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KTEXT: u64 = 0xffff_ffff_8100_0000;

    #[test]
    fn pc_relative_and_absolute_values() {
        let mut b = vec![0u8; 16];
        apply(&mut b, 0, elf::R_X86_64_PLT32, KTEXT + 0x100, -4, KTEXT + 0x10, ".text").unwrap();
        assert_eq!(i32::from_le_bytes([b[0], b[1], b[2], b[3]]), 0x100 - 4 - 0x10);
        apply(&mut b, 8, elf::R_X86_64_64, KTEXT, 8, 0, ".data").unwrap();
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), KTEXT + 8);
        apply(&mut b, 0, elf::R_X86_64_32S, KTEXT, 0, 0, ".text").unwrap();
        assert_eq!(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64 as u64, KTEXT);
    }

    /// `decl %gs:__preempt_count(%rip)` (kernel/signal.c `exit_signals`,
    /// refused `bad_patch` "rel32 overflow" in the first -54 -> -55 corpus
    /// run): the per-CPU offset 0x1e1c0 reached from an arena in module
    /// space. RIP + disp32 must come back to the offset modulo 2^64.
    #[test]
    fn a_per_cpu_variable_is_reached_rip_relative_across_the_top_of_memory() {
        let (percpu, arena) = (0x1e1c0u64, 0xffff_ffff_c0a0_1000u64);
        let mut b = vec![0u8; 4];
        // The field is at arena + 3; RIP at the end of the instruction is field + 4.
        apply(&mut b, 0, elf::R_X86_64_PC32, percpu, -4, arena + 3, ".text.exit_signals").unwrap();
        let disp = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        assert!(disp > 0, "the distance wraps to a positive displacement: {disp:#x}");
        assert_eq!((arena + 3 + 4).wrapping_add_signed(i64::from(disp)), percpu);
        // From kernel text too (how vmlinux itself is linked), and 64-bit.
        apply(&mut b, 0, elf::R_X86_64_PC32, percpu, -4, KTEXT + 3, ".text").unwrap();
        assert_eq!((KTEXT + 7).wrapping_add_signed(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))), percpu);
        let mut w = vec![0u8; 8];
        apply(&mut w, 0, elf::R_X86_64_PC64, percpu, 0, arena, ".data").unwrap();
        assert_eq!(arena.wrapping_add(u64::from_le_bytes(w[..8].try_into().unwrap())), percpu);
    }

    #[test]
    fn out_of_range_and_got_relocations_are_refused() {
        let mut b = vec![0u8; 8];
        // The direct map is more than 2 GiB away from kernel text either way.
        let far = apply(&mut b, 0, elf::R_X86_64_PC32, 0xffff_8880_0000_1000, 0, KTEXT, ".text").unwrap_err();
        assert_eq!(far.reason(), "relocation_overflow");
        // So is user space (low addresses) from text below the top 2 GiB.
        let low = apply(&mut b, 0, elf::R_X86_64_PC32, 0x1000, -4, 0xffff_ffff_0000_0000, ".text").unwrap_err();
        assert_eq!(low.reason(), "relocation_overflow");
        let abs32 = apply(&mut b, 0, elf::R_X86_64_32, KTEXT, 0, 0, ".text").unwrap_err();
        assert_eq!(abs32.reason(), "relocation_overflow");
        let got = apply(&mut b, 0, elf::R_X86_64_REX_GOTPCRELX, KTEXT, -4, KTEXT, ".text").unwrap_err();
        assert_eq!(got.reason(), "unsupported_relocation");
        assert!(got.to_string().contains("GOT"));
        let outside = apply(&mut b, 6, elf::R_X86_64_64, KTEXT, 0, 0, ".text").unwrap_err();
        assert_eq!(outside.reason(), "malformed_object");
    }
}

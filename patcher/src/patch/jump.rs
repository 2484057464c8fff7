//! Jump sites: where the 5-byte `jmp rel32` to a replacement goes in an old
//! function, chosen with iced-x86. Right after the ftrace NOP when the
//! function starts with one (ftrace keeps working on the old entry), else at
//! the entry; the overwritten bytes are whole instructions inside the
//! function, and no branch of the function may land strictly inside them.

use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind};
use thiserror::Error;

use crate::patch::link::NOP5;

/// Why a function cannot take a jump.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SiteError {
    /// Not 5 bytes of whole instructions in the function after the entry/NOP.
    #[error("`{func}` is too small for a 5-byte jump: {avail} bytes of whole instructions at the jump site ({size} bytes in all)")]
    TooSmall {
        /// Function.
        func: String,
        /// Bytes of whole instructions available.
        avail: u64,
        /// Function size.
        size: u64,
    },
    /// An instruction could not be decoded.
    #[error("`{func}`: undecodable instruction at +{offset:#x}")]
    Undecodable {
        /// Function.
        func: String,
        /// Offset.
        offset: u64,
    },
    /// A branch of the function lands inside the bytes the jump overwrites.
    #[error("`{func}`: the branch at +{from:#x} lands at +{to:#x}, inside the bytes the jump would overwrite")]
    BranchIntoSite {
        /// Function.
        func: String,
        /// Offset of the branch.
        from: u64,
        /// Its target offset.
        to: u64,
    },
    /// The replacement is out of rel32 reach.
    #[error("`{func}`: replacement at {target:#x} is out of rel32 reach of {site:#x}")]
    OutOfReach {
        /// Function.
        func: String,
        /// Jump site.
        site: u64,
        /// Target.
        target: u64,
    },
}

impl SiteError {
    /// Stable reason (the cause is `bad_patch`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooSmall { .. } => "target_too_small",
            Self::Undecodable { .. } => "undecodable_target",
            Self::BranchIntoSite { .. } => "branch_into_site",
            Self::OutOfReach { .. } => "out_of_reach",
        }
    }
}

/// A chosen jump site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpSite {
    /// Address of the first overwritten byte.
    pub addr: u64,
    /// Number of bytes overwritten (whole instructions, >= 5).
    pub len: usize,
    /// True when the site follows an ftrace NOP.
    pub after_fentry: bool,
}

/// Chooses the jump site in a function whose pristine bytes are `code`
/// (exactly its size) at runtime address `addr`.
pub fn choose(func: &str, addr: u64, code: &[u8]) -> Result<JumpSite, SiteError> {
    choose_with(func, addr, code, false)
}

/// [`choose`], knowing whether the function's first 5 bytes are its ftrace
/// site (the image's `__mcount_loc` lists it): then they may also hold
/// ftrace's `call` (tracing on), and the site still goes after them.
pub fn choose_with(func: &str, addr: u64, code: &[u8], fentry_at_entry: bool) -> Result<JumpSite, SiteError> {
    let size = code.len() as u64;
    let after_fentry = code.starts_with(&NOP5) || (fentry_at_entry && code.len() >= 5 && code[0] == 0xe8);
    let start = if after_fentry { 5u64 } else { 0 };
    // Decode the whole function: instruction boundaries and branch targets.
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut boundaries = Vec::new();
    let mut targets = Vec::new();
    for insn in &mut decoder {
        let off = insn.ip() - addr;
        if insn.is_invalid() {
            // Padding after a final ret can be undecodable; only the site must decode.
            if off < start + 5 {
                return Err(SiteError::Undecodable { func: func.to_owned(), offset: off });
            }
            break;
        }
        boundaries.push(off);
        if matches!(insn.flow_control(), FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch)
            && matches!(insn.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16)
        {
            targets.push((off, insn.near_branch_target().wrapping_sub(addr)));
        }
    }
    boundaries.push(size);
    let end = boundaries.iter().copied().find(|&b| b >= start + 5).filter(|&b| b <= size);
    let Some(end) = end.filter(|_| boundaries.contains(&start)) else {
        let avail = boundaries.iter().copied().filter(|&b| b <= size).max().unwrap_or(start).saturating_sub(start);
        return Err(SiteError::TooSmall { func: func.to_owned(), avail, size });
    };
    if let Some(&(from, to)) = targets.iter().find(|&&(_, to)| to > start && to < end) {
        return Err(SiteError::BranchIntoSite { func: func.to_owned(), from, to });
    }
    Ok(JumpSite { addr: addr + start, len: (end - start) as usize, after_fentry })
}

/// The bytes for `site`: `jmp rel32` to `target`, then NOPs over the rest of
/// the overwritten instructions.
pub fn jump_bytes(func: &str, site: &JumpSite, target: u64) -> Result<Vec<u8>, SiteError> {
    let rel = i128::from(target) - i128::from(site.addr.wrapping_add(5));
    let rel = i32::try_from(rel).map_err(|_| SiteError::OutOfReach { func: func.to_owned(), site: site.addr, target })?;
    let mut b = Vec::with_capacity(site.len);
    b.push(0xe9);
    b.extend_from_slice(&rel.to_le_bytes());
    b.resize(site.len, 0x90);
    Ok(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: u64 = 0xffff_ffff_8100_2460;

    #[test]
    fn site_follows_the_ftrace_nop_and_covers_whole_instructions() {
        // nop5; mov %rdi,%rax; shl $0x10,%rax; lea 0x2a(%rax,%rdi,1),%rax; ret
        let code = [0x0f, 0x1f, 0x44, 0, 0, 0x48, 0x89, 0xf8, 0x48, 0xc1, 0xe0, 0x10, 0x48, 0x8d, 0x44, 0x38, 0x2a, 0xc3];
        let s = choose("f", A, &code).unwrap();
        assert_eq!(s, JumpSite { addr: A + 5, len: 7, after_fentry: true });
        let b = jump_bytes("f", &s, A + 0x1000).unwrap();
        assert_eq!(b[0], 0xe9);
        assert_eq!(i32::from_le_bytes([b[1], b[2], b[3], b[4]]), 0x1000 - 10);
        assert_eq!(&b[5..], &[0x90, 0x90]);
    }

    #[test]
    fn a_traced_fentry_site_is_skipped_like_its_nop() {
        // call ftrace_caller (tracing on); mov %rdi,%rax; shl $0x10,%rax; ret
        let code = [0xe8, 1, 2, 3, 4, 0x48, 0x89, 0xf8, 0x48, 0xc1, 0xe0, 0x10, 0xc3];
        assert_eq!(choose_with("f", A, &code, true).unwrap(), JumpSite { addr: A + 5, len: 7, after_fentry: true });
        // Without the image saying it is the ftrace site, a call at the entry is overwritten whole.
        assert_eq!(choose("f", A, &code).unwrap(), JumpSite { addr: A, len: 5, after_fentry: false });
    }

    #[test]
    fn without_nop_the_site_is_the_entry() {
        let code = [0x48, 0x89, 0xf8, 0x48, 0xc1, 0xe0, 0x10, 0xc3];
        assert_eq!(choose("f", A, &code).unwrap(), JumpSite { addr: A, len: 7, after_fentry: false });
    }

    #[test]
    fn too_small_functions_are_refused() {
        // nop5; mov %rdi,%rax; ret  (tg_tiny)
        let code = [0x0f, 0x1f, 0x44, 0, 0, 0x48, 0x89, 0xf8, 0xc3];
        let e = choose("tg_tiny", A, &code).unwrap_err();
        assert_eq!(e.reason(), "target_too_small");
        assert!(e.to_string().contains("tg_tiny"));
    }

    #[test]
    fn branches_into_the_overwritten_bytes_are_refused() {
        // 0: xor %eax,%eax (2)  2: inc %eax (2)  4: inc %eax (2)  6: cmp $5,%eax (3)  9: jne 2 (2)  b: ret
        let code = [0x31, 0xc0, 0xff, 0xc0, 0xff, 0xc0, 0x83, 0xf8, 0x05, 0x75, 0xf7, 0xc3];
        let e = choose("loop", A, &code).unwrap_err();
        assert_eq!(e, SiteError::BranchIntoSite { func: "loop".into(), from: 9, to: 2 });
        // A branch back to the site's first byte is a fresh entry: allowed.
        let code2 = [0x31, 0xc0, 0xff, 0xc0, 0xff, 0xc0, 0x83, 0xf8, 0x05, 0x75, 0xf5, 0xc3];
        assert!(choose("loop0", A, &code2).is_ok());
    }

    #[test]
    fn far_targets_are_refused() {
        let s = JumpSite { addr: A, len: 5, after_fentry: false };
        assert_eq!(jump_bytes("f", &s, 0x1000).unwrap_err().reason(), "out_of_reach");
    }
}

//! A kernel module file changed the way a local rebuild changes it: one
//! byte of one function's code differs, nothing else does. The e2e tests
//! load it to see a patch built for the real module refused at its load
//! (`failed_at_load`, `no_match`) and the module load on, unpatched.
//!
//! The byte is a displacement or immediate of an instruction that no
//! load-time code patcher of the kernel touches: no relocation of the
//! function's own section covers it, and it is at least 16 bytes away from
//! every site another section points at (ftrace's `__mcount_loc`,
//! alternatives, retpoline and return-thunk sites, jump labels, static
//! calls, ENDBR sealing), which the kernel rewrites and checks as the
//! module loads. The module signature, which the change breaks, is
//! stripped: an unsigned module loads (tainting the kernel), a badly
//! signed one does not.

use iced_x86::{Decoder, DecoderOptions};
use object::read::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
use object::{File, SectionIndex};

/// The trailer of a signed module (`MODULE_SIG_STRING`).
const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: five bytes, three of padding, `__be32 sig_len`.
const SIG_INFO: usize = 12;

/// What was changed in the module.
#[derive(Debug, Clone)]
pub struct Tampered {
    /// The module file, changed and without its signature.
    pub bytes: Vec<u8>,
    /// Offset of the changed byte from the function's start.
    pub offset: u64,
    /// The byte before and after.
    pub was: u8,
    /// The byte now.
    pub now: u8,
}

/// `ko` without its appended signature (unchanged when it has none).
pub fn strip_signature(ko: &[u8]) -> Result<&[u8], String> {
    let Some(body) = ko.strip_suffix(SIG_MAGIC) else { return Ok(ko) };
    let info = body.len().checked_sub(SIG_INFO).ok_or("a signature trailer with no signature info")?;
    let len = body.get(info + 8..info + 12).ok_or("a short signature info")?;
    let sig_len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let end = info.checked_sub(sig_len).ok_or("a signature longer than the module")?;
    Ok(&ko[..end])
}

/// Changes one byte of `func` in the module `ko` (see the module doc).
pub fn tamper(ko: &[u8], func: &str) -> Result<Tampered, String> {
    let body = strip_signature(ko)?;
    let file = File::parse(body).map_err(|e| format!("not an ELF object: {e}"))?;
    let sym = file.symbols().find(|s| s.name() == Ok(func)).ok_or_else(|| format!("no symbol {func}"))?;
    let sec_index = sym.section_index().ok_or_else(|| format!("{func} is in no section"))?;
    let sec = file.section_by_index(sec_index).map_err(|e| e.to_string())?;
    let (sec_file, _) = sec.file_range().ok_or("the function's section has no bytes in the file")?;
    let (start, size) = (sym.address(), sym.size());
    let code = sec.data_range(start, size).map_err(|e| e.to_string())?.ok_or("the function is outside its section")?;
    let busy = busy_ranges(&file, sec_index);
    let mut d = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    while d.can_decode() {
        let insn = d.decode();
        let co = d.get_constant_offsets(&insn);
        let at = insn.ip();
        let fields = [(co.has_displacement(), co.displacement_offset(), co.displacement_size()), (co.has_immediate(), co.immediate_offset(), co.immediate_size())];
        for (has, off, len) in fields {
            let (from, to) = (at + off as u64, at + off as u64 + len as u64);
            if !has || at < start + 16 || busy.iter().any(|&(b, e)| from < e && b < to) {
                continue;
            }
            let pos = usize::try_from(sec_file + from).map_err(|e| e.to_string())?;
            let mut bytes = body.to_vec();
            let was = bytes[pos];
            bytes[pos] ^= 0x08;
            return Ok(Tampered { offset: from - start, was, now: bytes[pos], bytes });
        }
    }
    Err(format!("{func} has no displacement or immediate away from every load-time patch site"))
}

/// Byte ranges of section `text` that a relocation covers, or that lie
/// near a site another section's relocation points at.
fn busy_ranges(file: &File<'_>, text: SectionIndex) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for s in file.sections() {
        for (off, r) in s.relocations() {
            if s.index() == text {
                out.push((off, off + u64::from(r.size() / 8).max(4)));
                continue;
            }
            let RelocationTarget::Symbol(i) = r.target() else { continue };
            let Ok(t) = file.symbol_by_index(i) else { continue };
            if t.section_index() == Some(text) {
                let site = t.address().wrapping_add(r.addend() as u64);
                out.push((site.saturating_sub(16), site.saturating_add(16)));
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_trailer_is_cut_at_its_stated_length() {
        let mut ko = b"ELFBODY".to_vec();
        ko.extend_from_slice(&[0xaa; 5]); // the signature
        ko.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        ko.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&ko).unwrap(), b"ELFBODY");
        assert_eq!(strip_signature(b"unsigned").unwrap(), b"unsigned");
        let mut lying = b"x".to_vec();
        lying.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 99]);
        lying.extend_from_slice(SIG_MAGIC);
        assert!(strip_signature(&lying).is_err());
    }
}

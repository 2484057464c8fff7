//! ORC data of a relocatable object (a live patch built by Kbuild with
//! objtool, or a kernel module): the `.orc_unwind_ip` slots are `R_X86_64_PC32`
//! relocations against the code they describe, `.orc_unwind` the entries in
//! the same order. Given where the loader placed each section, this yields
//! the absolute rows for an [`super::orc::OrcTable`] that the unwinder
//! registers for the new code in the arena (the guest's own tables know
//! nothing of it).

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex};

use super::orc::OrcEntry;

/// Why an object's ORC data could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OrcObjectError {
    /// Not a parsable ELF object.
    #[error("not an ELF object: {0}")]
    Elf(String),
    /// The two sections disagree or a slot has no usable relocation.
    #[error("bad ORC sections: {0}")]
    Malformed(String),
}

impl OrcObjectError {
    /// Stable machine-readable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Elf(_) => "bad_patch",
            Self::Malformed(_) => "orc_malformed",
        }
    }
}

/// `(absolute address, entry)` for every ORC slot of the object whose code
/// section `place` knows (the runtime address of a section, by index);
/// slots describing sections that are not loaded are left out. An object
/// without ORC sections gives no rows.
pub fn orc_rows(data: &[u8], place: impl Fn(SectionIndex) -> Option<u64>) -> Result<Vec<(u64, OrcEntry)>, OrcObjectError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|e| OrcObjectError::Elf(e.to_string()))?;
    let (Some(ips), Some(units)) = (file.section_by_name(".orc_unwind_ip"), file.section_by_name(".orc_unwind")) else {
        return Ok(Vec::new());
    };
    let udata = units.data().map_err(|e| OrcObjectError::Elf(e.to_string()))?;
    let n = (ips.size() / 4) as usize;
    if n.checked_mul(6) != Some(udata.len()) {
        return Err(OrcObjectError::Malformed(format!("{n} ip slots but {} bytes of entries", udata.len())));
    }
    let mut rows = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    for (off, rel) in ips.relocations() {
        let slot = (off / 4) as usize;
        if off % 4 != 0 || slot >= n {
            return Err(OrcObjectError::Malformed(format!("relocation at {off:#x} is not on an ip slot")));
        }
        if !matches!(rel.flags(), RelocationFlags::Elf { r_type: object::elf::R_X86_64_PC32 }) {
            return Err(OrcObjectError::Malformed(format!("ip slot {slot} is not a PC32 relocation")));
        }
        let RelocationTarget::Symbol(si) = rel.target() else {
            return Err(OrcObjectError::Malformed(format!("ip slot {slot} does not name a symbol")));
        };
        seen[slot] = true;
        let sym = file.symbol_by_index(si).map_err(|e| OrcObjectError::Elf(e.to_string()))?;
        let Some(sec) = sym.section_index() else { continue };
        let Some(base) = place(sec) else { continue };
        // PC32 stores S + A - P; the kernel reads P + value = S + A.
        let ip = base.wrapping_add(sym.address()).wrapping_add(rel.addend() as u64);
        let e = &udata[slot * 6..slot * 6 + 6];
        rows.push((ip, OrcEntry::parse(&[e[0], e[1], e[2], e[3], e[4], e[5]])));
    }
    if let Some(slot) = seen.iter().position(|s| !s) {
        return Err(OrcObjectError::Malformed(format!("ip slot {slot} has no relocation")));
    }
    Ok(rows)
}

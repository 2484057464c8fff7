//! Where each loaded section goes: code and read-only data one after the
//! other in the code part, data then bss in the data part, each at its own
//! alignment. Offsets are relative to the part's start; the arena allocator
//! picks the parts' addresses.

use object::read::elf::{ElfFile64, SectionHeader};
use object::{Endianness, Object, ObjectSection, SectionIndex};

use super::error::LoadError;
use super::sections::{classify, SectionClass};

/// One section and where it goes.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Section index in the object.
    pub index: SectionIndex,
    /// Section name.
    pub name: String,
    /// Its class.
    pub class: SectionClass,
    /// Offset from the start of its part (code or data).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The layout of a patch object.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Every section with its class; loaded ones with their offset.
    pub sections: Vec<Placed>,
    /// Bytes of the code part (code + read-only data).
    pub code_size: u64,
    /// Bytes of the data part (data + bss).
    pub data_size: u64,
    /// Largest alignment in the code part.
    pub code_align: u64,
    /// Largest alignment in the data part.
    pub data_align: u64,
}

impl Layout {
    /// The placement of a section, if it is loaded.
    pub fn placed(&self, index: SectionIndex) -> Option<&Placed> {
        self.sections.iter().find(|p| p.index == index && p.class.loaded())
    }

    /// Class of a section.
    pub fn class(&self, index: SectionIndex) -> Option<SectionClass> {
        self.sections.iter().find(|p| p.index == index).map(|p| p.class)
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    let a = a.max(1);
    v.div_ceil(a) * a
}

/// Largest code part and largest data part of a patch (the arena they go
/// into is a few MiB): a section size over it is refused (`malformed_object`).
pub const MAX_PART_SIZE: u64 = 64 << 20;

/// Classifies every section and lays out the loaded ones.
pub fn plan(file: &ElfFile64<'_, Endianness>) -> Result<Layout, LoadError> {
    let e = file.endian();
    let mut l = Layout { code_align: 16, data_align: 16, ..Layout::default() };
    let mut classified = Vec::new();
    for s in file.sections() {
        let name = s.name().map_err(|e| LoadError::Elf(e.to_string()))?.to_owned();
        let h = s.elf_section_header();
        let class = classify(&name, h.sh_type(e), h.sh_flags(e))?;
        classified.push((s.index(), name, class, s.size(), s.align()));
    }
    // Code first, then read-only data; data first, then bss.
    for want in [SectionClass::Code, SectionClass::ReadOnly, SectionClass::Data, SectionClass::Bss] {
        for (index, name, class, size, align) in &classified {
            if *class != want {
                continue;
            }
            let (cursor, max_align) = match class {
                SectionClass::Code | SectionClass::ReadOnly => (&mut l.code_size, &mut l.code_align),
                _ => (&mut l.data_size, &mut l.data_align),
            };
            if *align > 4096 {
                return Err(LoadError::Malformed(format!("section {name} wants alignment {align} (> 4096)")));
            }
            // Sizes come from section headers (NOBITS sizes from nothing in
            // the file): bounded before anything is allocated by them.
            let offset = align_up(*cursor, *align);
            let end = offset.checked_add(*size).filter(|&e| e <= MAX_PART_SIZE).ok_or_else(|| {
                LoadError::Malformed(format!("section {name} of {size:#x} bytes makes the patch larger than {MAX_PART_SIZE:#x} bytes"))
            })?;
            *cursor = end;
            *max_align = (*max_align).max(*align);
            l.sections.push(Placed { index: *index, name: name.clone(), class: *class, offset, size: *size });
        }
    }
    for (index, name, class, size, _) in classified {
        if !class.loaded() {
            l.sections.push(Placed { index, name, class, offset: 0, size });
        }
    }
    Ok(l)
}

//! [`FakePatch`]: patch files for the [`super::kernel::FakeKernel`], built
//! with `object::write` (no compiler): each replacement is a small function
//! in its own `.text.*` section that calls `fake_schedule` (a relocation
//! the loader resolves against the kernel's symbols) and returns, with ORC
//! rows for it in `.orc_unwind_ip` / `.orc_unwind` as objtool would write
//! them, and a manifest whose run-pre digests match the fake kernel's code.

use object::write::{Object, Relocation, Symbol, SymbolId, SymbolSection};
use object::{Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind, SymbolScope};

use super::kernel::{FakeKernel, BUILD_ID};
use crate::model::SymbolTable;
use crate::os::linux::orc::{reg, OrcEntry, OrcType};
use crate::patch::format::PatchFile;
use crate::patch::manifest::{patch_id, run_pre_digest, BuildInfo, Manifest, Replacement, TargetSpec, MANIFEST_VERSION};
use crate::kernels::TargetKernel;

/// Offset of the return address after the call in each replacement function.
pub const RET_OFFSET: u64 = 5;

/// A patch to build.
#[derive(Debug, Clone)]
pub struct FakePatch {
    name: String,
    cumulative: bool,
    orc: bool,
    replaces: Vec<String>,
}

impl FakePatch {
    /// A patch called `name` that replaces nothing yet.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), cumulative: false, orc: true, replaces: Vec::new() }
    }

    /// Replaces the kernel function `old` (by `<old>__<patch name>`).
    pub fn replace(mut self, old: &str) -> Self {
        self.replaces.push(old.to_owned());
        self
    }

    /// Makes it cumulative (it replaces every applied patch).
    pub fn cumulative(mut self) -> Self {
        self.cumulative = true;
        self
    }

    /// Leaves the ORC sections out.
    pub fn without_orc(mut self) -> Self {
        self.orc = false;
        self
    }

    /// Name of the function that replaces `old`.
    pub fn new_name(&self, old: &str) -> String {
        format!("{old}__{}", self.name)
    }

    /// The relocatable object.
    pub fn object(&self) -> Result<Vec<u8>, object::write::Error> {
        let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let schedule = o.add_symbol(Symbol {
            name: b"fake_schedule".to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Unknown,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        let mut funcs: Vec<SymbolId> = Vec::new();
        for (i, old) in self.replaces.iter().enumerate() {
            let name = self.new_name(old);
            let text = o.add_section(Vec::new(), format!(".text.{name}").into_bytes(), SectionKind::Text);
            // call fake_schedule; mov %rdi,%rax; add $(0x40 + i),%rax; ret
            let body = [0xe8, 0, 0, 0, 0, 0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x40 + i as u8, 0xc3];
            o.append_section_data(text, &body, 16);
            o.add_relocation(text, Relocation { offset: 1, symbol: schedule, addend: -4, flags: RelocationFlags::Elf { r_type: object::elf::R_X86_64_PLT32 } })?;
            funcs.push(o.add_symbol(Symbol {
                name: name.into_bytes(),
                value: 0,
                size: body.len() as u64,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Section(text),
                flags: SymbolFlags::None,
            }));
        }
        if self.orc {
            let ip = o.add_section(Vec::new(), b".orc_unwind_ip".to_vec(), SectionKind::ReadOnlyData);
            let un = o.add_section(Vec::new(), b".orc_unwind".to_vec(), SectionKind::ReadOnlyData);
            let call = OrcEntry { sp_offset: 8, bp_offset: 0, sp_reg: reg::SP, bp_reg: reg::UNDEFINED, kind: OrcType::Call, end: false };
            for f in &funcs {
                let slot = o.append_section_data(ip, &[0; 4], 4);
                o.append_section_data(un, &call.to_bytes(), 1);
                o.add_relocation(ip, Relocation { offset: slot, symbol: *f, addend: 0, flags: RelocationFlags::Elf { r_type: object::elf::R_X86_64_PC32 } })?;
            }
        }
        o.write()
    }

    /// The patch file for `kernel`.
    pub fn build(&self, kernel: &FakeKernel) -> Result<PatchFile, object::write::Error> {
        let object = self.object()?;
        let symbols: &SymbolTable = kernel.symbols();
        let replacements = self
            .replaces
            .iter()
            .map(|old| Replacement {
                old: old.clone(),
                qualifier: None,
                new: self.new_name(old),
                old_addr: kernel.addr(old),
                size: symbols.resolve(old, None).map_or(0, |s| s.size),
                sha256: run_pre_digest(&kernel.pristine(old), &[]),
                tolerate: Vec::new(),
                why: None,
                object: None,
            })
            .collect();
        let manifest = Manifest {
            format: MANIFEST_VERSION,
            name: self.name.clone(),
            id: patch_id(&self.name, &object),
            target: TargetSpec { kind: kernel.kind(), build_id: Some(BUILD_ID.to_owned()) },
            cumulative: self.cumulative,
            replacements,
            symbols: Vec::new(),
            build: BuildInfo::default(),
            info: Default::default(),
        };
        Ok(PatchFile { manifest, object })
    }
}

//! What the linker does with each section of a patch object, per the table in
//! `patcher/docs/livepatch.md` ("Linking"): load it (code, read-only data, data, bss), process it
//! (`__mcount_loc`, `.altinstructions`, `__jump_table`, `__bug_table`,
//! `.return_sites`), read it at build time (`.vsplice.*`), ignore it
//! (symbols, debug info, notes, ORC, retpoline / static-call / paravirt /
//! lock-prefix site lists: those sites stay as compiled, which is correct),
//! or refuse it by name.

use super::error::LoadError;

/// What happens to a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionClass {
    /// Executable code: arena code slot (read + execute).
    Code,
    /// Read-only data: arena code slot (read-only).
    ReadOnly,
    /// Writable data: arena data slot (read + write, no execute).
    Data,
    /// Zero-initialized data: arena data slot.
    Bss,
    /// `__mcount_loc`: fentry call sites to turn into 5-byte NOPs.
    Mcount,
    /// `.altinstructions`: alternatives, applied per the guest's CPU features.
    AltInstr,
    /// `__jump_table`: jump labels, frozen to their key's current state.
    JumpTable,
    /// `__bug_table`: WARN sites become NOPs, BUG sites are refused.
    BugTable,
    /// `.return_sites`: `jmp __x86_return_thunk` sites, sent to the guest's return thunk.
    ReturnSites,
    /// `.vsplice.*`: metadata for the build, never loaded.
    Meta,
    /// Not needed in the guest.
    Ignore,
}

impl SectionClass {
    /// True for sections placed in the arena.
    pub fn loaded(self) -> bool {
        matches!(self, Self::Code | Self::ReadOnly | Self::Data | Self::Bss)
    }
}

fn refuse(name: &str, reason: &'static str, why: &str) -> Result<SectionClass, LoadError> {
    Err(LoadError::UnsupportedSection { name: name.to_owned(), reason, why: why.to_owned() })
}

fn is(name: &str, base: &str) -> bool {
    name == base || name.strip_prefix(base).is_some_and(|rest| rest.starts_with('.'))
}

/// Classifies a section by name, ELF type and flags.
pub fn classify(name: &str, sh_type: u32, sh_flags: u64) -> Result<SectionClass, LoadError> {
    use object::elf::{SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS, SHT_NULL, SHT_REL, SHT_RELA, SHT_STRTAB, SHT_SYMTAB};
    let alloc = sh_flags & u64::from(SHF_ALLOC) != 0;
    let exec = sh_flags & u64::from(SHF_EXECINSTR) != 0;
    let write = sh_flags & u64::from(SHF_WRITE) != 0;
    if matches!(sh_type, SHT_NULL | SHT_SYMTAB | SHT_STRTAB | SHT_REL | SHT_RELA) || sh_type == object::elf::SHT_GROUP {
        return Ok(SectionClass::Ignore);
    }
    if name.starts_with(".vsplice.") {
        return Ok(SectionClass::Meta);
    }
    if name == "__mcount_loc" {
        return Ok(SectionClass::Mcount);
    }
    if name == "__ex_table" {
        return refuse(name, "ex_table", "exception-table entries would never be found by the guest's fault handler, so a fault there would oops");
    }
    if name == "__bug_table" {
        return Ok(SectionClass::BugTable);
    }
    if name.starts_with("__ksymtab") || name.starts_with("__kcrctab") {
        return refuse(name, "ksymtab", "a live patch cannot export symbols");
    }
    if is(name, ".init") || name.starts_with(".init.") || is(name, ".exit") || name.starts_with(".exit.") || name == ".init_array" || name == ".fini_array" || name == ".ctors" || name == ".dtors" {
        return refuse(name, "init_exit", "init/exit code never runs in a live patch");
    }
    if name == ".altinstructions" {
        return Ok(SectionClass::AltInstr);
    }
    if (name == ".altinstr_replacement" || name == ".altinstr_aux") && alloc && exec {
        // Replacement code: linked where it lies, copied over the sites.
        return Ok(SectionClass::Code);
    }
    if name == "__jump_table" {
        return Ok(SectionClass::JumpTable);
    }
    if name == ".return_sites" {
        return Ok(SectionClass::ReturnSites);
    }
    if name == ".retpoline_sites" || name == ".call_sites" || name == ".static_call_sites" || name == ".ibt_endbr_seal" {
        // Thunk calls and static-call trampolines stay in place: correct, if slower.
        return Ok(SectionClass::Ignore);
    }
    if name == ".parainstructions" || name == ".smp_locks" {
        // Paravirt calls stay indirect calls through pv_ops, lock prefixes stay: correct.
        return Ok(SectionClass::Ignore);
    }
    if name == ".orc_unwind" || name == ".orc_unwind_ip" || name == ".orc_header" {
        // The patch's own unwind data: not registered with the guest's unwinder.
        return Ok(SectionClass::Ignore);
    }
    if name == ".modinfo" {
        // MODULE_LICENSE and friends: a live patch is not a module.
        return Ok(SectionClass::Ignore);
    }
    if name.starts_with(".debug") || name.starts_with(".note") || name == ".comment" || name == ".eh_frame" || name == ".llvm_addrsig" || name.starts_with(".discard") {
        return Ok(SectionClass::Ignore);
    }
    if alloc && exec && is(name, ".text") {
        return Ok(SectionClass::Code);
    }
    if alloc && !write && !exec && is(name, ".rodata") {
        return Ok(SectionClass::ReadOnly);
    }
    if alloc && write && sh_type == SHT_NOBITS && is(name, ".bss") {
        return Ok(SectionClass::Bss);
    }
    if alloc && write && !exec && (is(name, ".data") || name.starts_with(".data..")) {
        return Ok(SectionClass::Data);
    }
    refuse(name, "unknown", "the patch loader does not know this section")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use object::elf::{SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS, SHT_PROGBITS};

    const AX: u64 = (SHF_ALLOC | SHF_EXECINSTR) as u64;
    const A: u64 = SHF_ALLOC as u64;
    const WA: u64 = (SHF_ALLOC | SHF_WRITE) as u64;

    #[test]
    fn sections_are_classified_or_refused_by_name() {
        assert_eq!(classify(".text.f", SHT_PROGBITS, AX).unwrap(), SectionClass::Code);
        assert_eq!(classify(".rodata.str1.1", SHT_PROGBITS, A).unwrap(), SectionClass::ReadOnly);
        assert_eq!(classify(".data.counter", SHT_PROGBITS, WA).unwrap(), SectionClass::Data);
        assert_eq!(classify(".bss.counter", SHT_NOBITS, WA).unwrap(), SectionClass::Bss);
        assert_eq!(classify("__mcount_loc", SHT_PROGBITS, A).unwrap(), SectionClass::Mcount);
        assert_eq!(classify(".vsplice.records", SHT_PROGBITS, A).unwrap(), SectionClass::Meta);
        assert_eq!(classify(".comment", SHT_PROGBITS, 0).unwrap(), SectionClass::Ignore);
        assert_eq!(classify(".altinstructions", SHT_PROGBITS, A).unwrap(), SectionClass::AltInstr);
        assert_eq!(classify(".altinstr_replacement", SHT_PROGBITS, AX).unwrap(), SectionClass::Code);
        assert_eq!(classify("__jump_table", SHT_PROGBITS, WA).unwrap(), SectionClass::JumpTable);
        assert_eq!(classify("__bug_table", SHT_PROGBITS, WA).unwrap(), SectionClass::BugTable);
        assert_eq!(classify(".return_sites", SHT_PROGBITS, A).unwrap(), SectionClass::ReturnSites);
        for ignored in [".retpoline_sites", ".static_call_sites", ".parainstructions", ".smp_locks", ".orc_unwind", ".orc_unwind_ip", ".modinfo", ".discard.reachable", ".note.GNU-stack", ".debug_info"] {
            assert_eq!(classify(ignored, SHT_PROGBITS, A).unwrap(), SectionClass::Ignore, "{ignored}");
        }
        for (name, reason) in [
            ("__ex_table", "ex_table"),
            ("__ksymtab_gpl", "ksymtab"),
            (".init.text", "init_exit"),
            (".exit.text", "init_exit"),
            ("__param", "unknown"),
            (".weird", "unknown"),
        ] {
            let e = classify(name, SHT_PROGBITS, A).unwrap_err();
            assert_eq!((e.cause(), e.reason()), ("unsupported_section", reason), "{name}");
            assert!(e.to_string().contains(name));
        }
    }
}

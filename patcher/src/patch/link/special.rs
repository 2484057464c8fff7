//! The special sections a Kbuild object carries, done the way the kernel's
//! module loader does them (after relocation), or refused:
//!
//! - `.altinstructions`: each alternative whose feature (or bug) bit is set
//!   on the guest's boot CPU (or clear, for inverted ones) has its
//!   replacement copied over the original instructions, every relative
//!   branch and RIP-relative operand that leaves the replacement re-aimed
//!   for the new place, the rest padded with NOPs. Unknown CPU features:
//!   refused (`altinstructions`).
//! - `__jump_table`: each jump label frozen to its static key's state now
//!   (a jump or a NOP of the site's size), and said so in the notes; the
//!   patch's copy does not follow later changes of the key. Unknown key
//!   state: refused (`jump_table`).
//! - `__bug_table`: WARN sites (their `ud2`) become 2-byte NOPs (the
//!   warning is dropped, said so in the notes); a BUG site is refused
//!   (`bug_table`): the guest could not find it and would oops. Objects
//!   from `patch build --diff` say otherwise in `.vsplice.bug_policy`: BUG
//!   sites kept (the oops is what BUG means), WARN sites refused
//!   (`warn_site`) unless `drop_warn`.
//! - `.return_sites`: `jmp __x86_return_thunk` aimed at the guest's
//!   `x86_return_thunk` (the thunk its mitigations chose).

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions};
use object::{Object as _, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex, SymbolSection};

use super::env::LinkEnv;
use super::error::LoadError;
use super::sections::SectionClass;
use super::Object;
use crate::patch::manifest::SymbolAlias;
use crate::model::SymbolTable;

/// `ALTINSTR_FLAG_INV`: the alternative applies when the bit is clear.
const ALT_INV: u16 = 1 << 15;
/// `BUGFLAG_WARNING`.
const BUGFLAG_WARNING: u16 = 1;
const NOP2: [u8; 2] = [0x66, 0x90];
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// The section naming an object's BUG/WARN policy (words `keep_bug`, `drop_warn`).
pub const BUG_POLICY_SECTION: &str = ".vsplice.bug_policy";

/// What to do with BUG and WARN sites.
#[derive(Debug, Clone, Copy)]
struct BugPolicy {
    /// BUG sites stay `ud2` (an oops, as in the kernel).
    keep_bug: bool,
    /// WARN sites become NOPs (else refused).
    drop_warn: bool,
}

/// Where a relocation in a special section points.
#[derive(Debug, Clone)]
struct Pointee {
    /// Runtime address (S + A).
    addr: u64,
    /// Offset into the code part, when it points into patch code.
    code_off: Option<usize>,
    /// Offset into the data part, when it points into patch data.
    data_off: Option<usize>,
    /// It points into executable code (not read-only data of the code part).
    text: bool,
    /// Symbol name (externals) or section name.
    name: String,
}

/// The linked parts being finished.
pub(crate) struct Parts<'b> {
    pub code: &'b mut Vec<u8>,
    pub data: &'b mut Vec<u8>,
    pub code_addr: u64,
    pub data_addr: u64,
}

fn malformed(what: &str) -> LoadError {
    LoadError::Malformed(what.to_owned())
}

fn refused(name: &str, reason: &'static str, why: String) -> LoadError {
    LoadError::UnsupportedSection { name: name.to_owned(), reason, why }
}

/// How many `size`-byte entries section `name` holds; malformed unless its
/// `bytes` are a whole number of them.
fn entries(name: &str, bytes: &[u8], size: usize) -> Result<usize, LoadError> {
    if !bytes.len().is_multiple_of(size) {
        return Err(malformed(&format!("{name}: {} bytes is not a whole number of {size}-byte entries", bytes.len())));
    }
    Ok(bytes.len() / size)
}

impl Object<'_> {
    /// Every relocation of section `sec`, by offset, resolved.
    fn pointees(&self, sec: SectionIndex, parts: &Parts<'_>, aliases: &[SymbolAlias], target: &SymbolTable) -> Result<HashMap<u64, Pointee>, LoadError> {
        let s = self.file.section_by_index(sec).map_err(|e| LoadError::Elf(e.to_string()))?;
        let mut out = HashMap::new();
        for (off, r) in s.relocations() {
            let RelocationTarget::Symbol(si) = r.target() else {
                return Err(malformed("special-section relocation without a symbol"));
            };
            let sym = self.file.symbol_by_index(si).map_err(|e| LoadError::Elf(e.to_string()))?;
            let p = match sym.section() {
                SymbolSection::Section(ts) => {
                    let placed = self.layout.placed(ts).ok_or_else(|| {
                        let n = self.file.section_by_index(ts).ok().and_then(|x| x.name().ok().map(str::to_owned)).unwrap_or_default();
                        malformed(&format!("a special section refers to section {n}, which is not loaded"))
                    })?;
                    let rel = (sym.address() as i64).wrapping_add(r.addend());
                    let part_off = (placed.offset as i64).wrapping_add(rel);
                    let code = matches!(placed.class, SectionClass::Code | SectionClass::ReadOnly);
                    let base = if code { parts.code_addr } else { parts.data_addr };
                    let name = match sym.name() {
                        Ok(n) if !n.is_empty() && sym.kind() != object::SymbolKind::Section => n.to_owned(),
                        _ => self.name_at(ts, rel as u64).unwrap_or_else(|| placed.name.clone()),
                    };
                    Pointee {
                        addr: base.wrapping_add(part_off as u64),
                        code_off: code.then_some(part_off as usize),
                        data_off: (!code).then_some(part_off as usize),
                        text: placed.class == SectionClass::Code,
                        name,
                    }
                }
                SymbolSection::Undefined => {
                    let name = sym.name().map_err(|e| LoadError::Elf(e.to_string()))?;
                    let v = Self::resolve_external(name, aliases, target)?;
                    Pointee { addr: v.wrapping_add(r.addend() as u64), code_off: None, data_off: None, text: false, name: name.to_owned() }
                }
                _ => return Err(malformed("special-section relocation against an absolute or common symbol")),
            };
            out.insert(off, p);
        }
        Ok(out)
    }

    /// The named symbol of section `sec` that covers offset `off`.
    fn name_at(&self, sec: SectionIndex, off: u64) -> Option<String> {
        self.file
            .symbols()
            .filter(|s| s.section() == SymbolSection::Section(sec) && s.kind() != object::SymbolKind::Section)
            .find(|s| off >= s.address() && off < s.address() + s.size().max(1))
            .and_then(|s| s.name().ok().filter(|n| !n.is_empty()).map(str::to_owned))
    }

    /// `name+0xoff` of a code-part offset (a defined function of the patch).
    fn where_in_code(&self, off: usize) -> String {
        for sym in self.file.symbols() {
            let (Ok(name), SymbolSection::Section(sec)) = (sym.name(), sym.section()) else { continue };
            if sym.kind() != object::SymbolKind::Text || name.is_empty() {
                continue;
            }
            if let Some(p) = self.layout.placed(sec).filter(|p| p.class == SectionClass::Code) {
                let start = (p.offset + sym.address()) as usize;
                if off >= start && off < start + sym.size() as usize {
                    return format!("{name}+{:#x}", off - start);
                }
            }
        }
        format!("code+{off:#x}")
    }

    fn sections_of(&self, class: SectionClass) -> Vec<(SectionIndex, String, Vec<u8>)> {
        self.file
            .sections()
            .filter(|s| self.layout.class(s.index()) == Some(class))
            .map(|s| (s.index(), s.name().unwrap_or("?").to_owned(), s.data().map(<[u8]>::to_vec).unwrap_or_default()))
            .collect()
    }

    /// Does everything the special sections ask; returns the notes to report.
    pub(crate) fn finish_specials(
        &self,
        parts: &mut Parts<'_>,
        aliases: &[SymbolAlias],
        target: &SymbolTable,
        env: &mut dyn LinkEnv,
    ) -> Result<Vec<String>, LoadError> {
        let mut notes = Vec::new();
        for (sec, name, bytes) in self.sections_of(SectionClass::BugTable) {
            let ptr = self.pointees(sec, parts, aliases, target)?;
            self.drop_warnings(&name, &bytes, &ptr, parts, &mut notes)?;
        }
        for (sec, name, bytes) in self.sections_of(SectionClass::AltInstr) {
            let ptr = self.pointees(sec, parts, aliases, target)?;
            self.apply_alternatives(&name, &bytes, &ptr, parts, env, &mut notes)?;
        }
        for (sec, name, bytes) in self.sections_of(SectionClass::JumpTable) {
            let ptr = self.pointees(sec, parts, aliases, target)?;
            self.freeze_jump_labels(&name, &bytes, &ptr, parts, env, &mut notes)?;
        }
        if let Some(thunk) = env.return_thunk() {
            for (sec, _, bytes) in self.sections_of(SectionClass::ReturnSites) {
                let ptr = self.pointees(sec, parts, aliases, target)?;
                let mut n = 0;
                for o in (0..bytes.len() / 4 * 4).step_by(4) {
                    let p = ptr.get(&(o as u64)).ok_or_else(|| malformed(".return_sites entry without relocation"))?;
                    let at = p.code_off.ok_or_else(|| malformed(".return_sites entry outside the patch code"))?;
                    retarget(parts, at, thunk)?;
                    n += 1;
                }
                if n > 0 {
                    notes.push(format!("{n} return-thunk site(s) aimed at the guest's x86_return_thunk {thunk:#x}"));
                }
            }
        }
        Ok(notes)
    }

    fn drop_warnings(&self, name: &str, bytes: &[u8], ptr: &HashMap<u64, Pointee>, parts: &mut Parts<'_>, notes: &mut Vec<String>) -> Result<(), LoadError> {
        // Each entry's first field points at its ud2; the file name points into read-only data.
        let mut starts: Vec<(u64, usize)> = ptr.iter().filter(|(_, p)| p.text).filter_map(|(&o, p)| p.code_off.map(|c| (o, c))).collect();
        starts.sort_unstable();
        if starts.is_empty() {
            return Ok(());
        }
        let size = bytes.len() / starts.len();
        let flags_at = match size {
            12 => 10, // bug_addr, file, line, flags (CONFIG_DEBUG_BUGVERBOSE)
            8 => 4,   // bug_addr, flags
            _ => return Err(malformed(&format!("{name}: {} bytes for {} entries", bytes.len(), starts.len()))),
        };
        let policy = self.bug_policy();
        let (mut dropped, mut kept) = (Vec::new(), Vec::new());
        for (o, at) in starts {
            let o = o as usize;
            if !o.is_multiple_of(size) || o + size > bytes.len() {
                return Err(malformed(&format!("{name}: entry at {o:#x} is misaligned")));
            }
            let flags = u16::from_le_bytes([bytes[o + flags_at], bytes[o + flags_at + 1]]);
            let here = self.where_in_code(at);
            if flags & BUGFLAG_WARNING == 0 {
                if policy.keep_bug {
                    kept.push(here);
                    continue;
                }
                return Err(refused(name, "bug_table", format!("BUG() at {here}: its ud2 would be a trap the guest cannot look up (an oops); use WARN or return an error")));
            }
            if !policy.drop_warn {
                return Err(refused(name, "warn_site", format!("WARN() at {here}: the guest cannot look its ud2 up, so it would oops instead of warning (build with --drop-warnings to accept losing it)")));
            }
            let site = parts.code.get_mut(at..at + 2).ok_or_else(|| malformed("WARN site outside the code"))?;
            if site != [0x0f, 0x0b] {
                return Err(malformed(&format!("WARN site {here} holds {site:02x?}, not ud2")));
            }
            site.copy_from_slice(&NOP2);
            dropped.push(here);
        }
        if !dropped.is_empty() {
            notes.push(format!("{} WARN site(s) dropped (the guest cannot report them): {}", dropped.len(), dropped.join(", ")));
        }
        if !kept.is_empty() {
            notes.push(format!(
                "{} BUG site(s) kept as ud2 (the guest oopses there as the kernel would, reported as `invalid opcode` without `kernel BUG at file:line`): {}",
                kept.len(),
                kept.join(", ")
            ));
        }
        Ok(())
    }

    /// What the object asks of its BUG and WARN sites (`.vsplice.bug_policy`,
    /// written by `patch build --diff`): hand-written patches have none
    /// (BUG refused, WARN dropped).
    fn bug_policy(&self) -> BugPolicy {
        match self.file.section_by_name(BUG_POLICY_SECTION).and_then(|s| s.data().ok()) {
            Some(d) => {
                let text = String::from_utf8_lossy(d);
                BugPolicy { keep_bug: text.split_whitespace().any(|w| w == "keep_bug"), drop_warn: text.split_whitespace().any(|w| w == "drop_warn") }
            }
            None => BugPolicy { keep_bug: false, drop_warn: true },
        }
    }

    fn apply_alternatives(
        &self,
        name: &str,
        bytes: &[u8],
        ptr: &HashMap<u64, Pointee>,
        parts: &mut Parts<'_>,
        env: &mut dyn LinkEnv,
        notes: &mut Vec<String>,
    ) -> Result<(), LoadError> {
        let (mut applied, total) = (0usize, entries(name, bytes, 12)?);
        for (i, e) in bytes.chunks_exact(12).enumerate() {
            let o = 12 * i as u64;
            let get = |off: u64| ptr.get(&off).and_then(|p| p.code_off.map(|c| (c, p.addr)));
            let ((instr, instr_addr), (repl, repl_addr)) = match (get(o), get(o + 4)) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(malformed(&format!("{name}: entry {i} does not point into the patch code"))),
            };
            let cpuid = u16::from_le_bytes([e[8], e[9]]);
            let (ilen, rlen) = (usize::from(e[10]), usize::from(e[11]));
            let feature = cpuid & !ALT_INV;
            let Some(has) = env.cpu_has(feature) else {
                return Err(refused(name, "altinstructions", format!("the guest's CPU features are unknown (alternative for feature {}*32+{})", feature / 32, feature % 32)));
            };
            if has == (cpuid & ALT_INV != 0) {
                continue;
            }
            if rlen > ilen {
                return Err(malformed(&format!("{name}: entry {i} replacement ({rlen} bytes) is longer than the original ({ilen})")));
            }
            let src = parts.code.get(repl..repl + rlen).ok_or_else(|| malformed("alternative replacement outside the code"))?.to_vec();
            let mut new = relocate(&src, repl_addr, instr_addr).map_err(|why| malformed(&format!("{name}: entry {i} at {}: {why}", self.where_in_code(instr))))?;
            new.resize(ilen, 0x90);
            parts.code.get_mut(instr..instr + ilen).ok_or_else(|| malformed("alternative site outside the code"))?.copy_from_slice(&new);
            applied += 1;
        }
        if total > 0 {
            notes.push(format!("alternatives: {applied} of {total} applied for the guest's CPU features"));
        }
        Ok(())
    }

    fn freeze_jump_labels(
        &self,
        name: &str,
        bytes: &[u8],
        ptr: &HashMap<u64, Pointee>,
        parts: &mut Parts<'_>,
        env: &mut dyn LinkEnv,
        notes: &mut Vec<String>,
    ) -> Result<(), LoadError> {
        for i in 0..entries(name, bytes, 16)? {
            let o = 16 * i as u64;
            let (Some(code), Some(dest), Some(key)) = (ptr.get(&o), ptr.get(&(o + 4)), ptr.get(&(o + 8))) else {
                return Err(malformed(&format!("{name}: entry {i} lacks a relocation")));
            };
            let (Some(at), Some(_)) = (code.code_off, dest.code_off) else {
                return Err(malformed(&format!("{name}: entry {i} does not point into the patch code")));
            };
            // The key field is `&key + branch - .`: its low bit is the branch default.
            let branch = key.addr & 1 != 0;
            let key_addr = key.addr & !3;
            let enabled = match key.data_off.or(key.code_off) {
                Some(off) => {
                    let buf: &[u8] = if key.data_off.is_some() { parts.data } else { parts.code };
                    let off = off & !3;
                    let w = buf.get(off..off + 4).ok_or_else(|| malformed("static key outside the patch"))?;
                    i32::from_le_bytes([w[0], w[1], w[2], w[3]]) > 0
                }
                None => env.key_enabled(key_addr).ok_or_else(|| {
                    refused(name, "jump_table", format!("the state of static key {} is unknown, so the jump label at {} cannot be frozen", key.name, self.where_in_code(at)))
                })?,
            };
            let jump = enabled ^ branch;
            let site_addr = code.addr;
            let len = parts.code.get(at..at + 2).map(|b| if b[0] == 0xeb || b == NOP2 { 2 } else { 5 }).unwrap_or(5);
            let new: Vec<u8> = if jump {
                let rel = i128::from(dest.addr) - i128::from(site_addr) - len as i128;
                if len == 2 {
                    let r = i8::try_from(rel).map_err(|_| malformed("2-byte jump label cannot reach its target"))?;
                    vec![0xeb, r as u8]
                } else {
                    let r = i32::try_from(rel).map_err(|_| malformed("jump label cannot reach its target"))?;
                    let mut v = vec![0xe9];
                    v.extend_from_slice(&r.to_le_bytes());
                    v
                }
            } else if len == 2 {
                NOP2.to_vec()
            } else {
                NOP5.to_vec()
            };
            let site = parts.code.get_mut(at..at + len).ok_or_else(|| malformed("jump label site outside the code"))?;
            let was = site.to_vec();
            if !(was[0] == 0xe9 || was[0] == 0xeb || was == NOP5 || was == NOP2) {
                return Err(malformed(&format!("jump label site {} holds {was:02x?}", self.where_in_code(at))));
            }
            site.copy_from_slice(&new);
            notes.push(format!(
                "jump label at {} frozen to {} (static key {} is {} now; later changes of the key do not reach the patch)",
                self.where_in_code(at),
                if jump { "jump" } else { "no jump" },
                key.name,
                if enabled { "enabled" } else { "disabled" }
            ));
        }
        Ok(())
    }
}

/// Aims the rel32 branch at code offset `at` at `target`.
fn retarget(parts: &mut Parts<'_>, at: usize, target: u64) -> Result<(), LoadError> {
    let ip = parts.code_addr + at as u64;
    let window = parts.code.get(at..(at + 15).min(parts.code.len())).ok_or_else(|| malformed("return site outside the code"))?;
    let mut d = Decoder::with_ip(64, window, ip, DecoderOptions::NONE);
    let insn = d.decode();
    let co = d.get_constant_offsets(&insn);
    if insn.is_invalid() || !co.has_immediate() || co.immediate_size() != 4 || insn.near_branch_target() == 0 {
        return Err(malformed(&format!("return site at code+{at:#x} is not a rel32 branch")));
    }
    let rel = i128::from(target) - i128::from(ip + insn.len() as u64);
    let rel = i32::try_from(rel).map_err(|_| malformed("the guest's return thunk is out of rel32 reach"))?;
    let f = at + co.immediate_offset();
    parts.code[f..f + 4].copy_from_slice(&rel.to_le_bytes());
    Ok(())
}

/// The replacement instructions `code` (linked at `from`) moved to `to`:
/// relative branches and RIP-relative operands that leave the replacement
/// keep their targets.
pub fn relocate(code: &[u8], from: u64, to: u64) -> Result<Vec<u8>, String> {
    let mut out = code.to_vec();
    // The end of the replacement counts as inside: falling through moves with it.
    let inside = |t: u64| t >= from && t <= from + code.len() as u64;
    let mut d = Decoder::with_ip(64, code, from, DecoderOptions::NONE);
    while d.can_decode() {
        let insn = d.decode();
        if insn.is_invalid() {
            return Err(format!("undecodable replacement at +{:#x}", insn.ip() - from));
        }
        let co = d.get_constant_offsets(&insn);
        let off = (insn.ip() - from) as usize;
        let next_new = to + off as u64 + insn.len() as u64;
        let (target, field, size) = if insn.is_ip_rel_memory_operand() {
            (insn.ip_rel_memory_address(), off + co.displacement_offset(), co.displacement_size())
        } else if co.has_immediate() && matches!(insn.op0_kind(), iced_x86::OpKind::NearBranch64 | iced_x86::OpKind::NearBranch32) {
            (insn.near_branch_target(), off + co.immediate_offset(), co.immediate_size())
        } else {
            continue;
        };
        if inside(target) {
            continue;
        }
        let rel = i128::from(target) - i128::from(next_new);
        match size {
            4 => {
                let r = i32::try_from(rel).map_err(|_| "a relative target is out of rel32 reach".to_owned())?;
                out[field..field + 4].copy_from_slice(&r.to_le_bytes());
            }
            1 => {
                let r = i8::try_from(rel).map_err(|_| "a short branch leaves the replacement and cannot reach from the site".to_owned())?;
                out[field] = r as u8;
            }
            _ => return Err(format!("unexpected {size}-byte relative field")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replacements_keep_their_outside_targets_when_moved() {
        let from = 0xffff_ffff_c000_1000u64;
        let to = 0xffff_ffff_c000_0100u64;
        // call rel32 -> from+0x500; mov 0x10(%rip),%rax -> outside; jmp +0 (inside: next insn)
        let mut code = vec![0xe8];
        code.extend_from_slice(&(0x500i32 - 5).to_le_bytes());
        code.extend_from_slice(&[0x48, 0x8b, 0x05]);
        code.extend_from_slice(&0x10i32.to_le_bytes());
        code.extend_from_slice(&[0xeb, 0x00]);
        let out = relocate(&code, from, to).unwrap();
        let mut d = Decoder::with_ip(64, &out, to, DecoderOptions::NONE);
        let call = d.decode();
        assert_eq!(call.near_branch_target(), from + 0x500);
        let mov = d.decode();
        assert_eq!(mov.ip_rel_memory_address(), from + 12 + 0x10);
        let jmp = d.decode();
        assert_eq!(jmp.near_branch_target(), to + 14, "a branch inside the block moves with it");
    }

    #[test]
    fn short_branches_out_of_reach_are_refused() {
        let code = [0xeb, 0x10];
        assert!(relocate(&code, 0x1000, 0x9000).is_err());
    }
}

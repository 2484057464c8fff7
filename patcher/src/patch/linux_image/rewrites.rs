//! Every place where a stock x86-64 Linux kernel rewrites its own text at
//! boot, read from the vmlinux inside the image file (link addresses):
//! KASLR relocations (`vmlinux.relocs`), paravirt sites
//! (`.parainstructions`), retpoline and return-thunk sites
//! (`.retpoline_sites`, `.return_sites`), alternatives (`.altinstructions`),
//! ftrace's `call __fentry__` (`__mcount_loc`), static calls
//! (`.static_call_sites`), jump labels (`__jump_table`), the lock
//! prefixes the kernel drops on one CPU (`.smp_locks`), and the static-call
//! trampolines themselves (`__SCT__*`, retargeted by `static_call_update`).
//!
//! Run-pre matching compares a target function's bytes under these masks:
//! the bytes may differ there and nowhere else.

use iced_x86::{Decoder, DecoderOptions};

use super::relocs::Relocs;
use crate::os::linux::kallsyms::Kallsyms;
use crate::model::mem::{KernelMemory, MemError};
use crate::patch::manifest::ByteMask;

/// One rewritten byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    /// Link address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// What rewrites it (stable name, the manifest's `why`).
    pub why: &'static str,
}

/// How many sites of each kind were found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<(&'static str, usize)>);

/// All rewritten ranges of an image, sorted by address.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    sites: Vec<Site>,
    /// The longest site (alternatives can be longer than one instruction).
    max_len: u64,
    /// Sites per kind.
    pub counts: Counts,
}

fn bounds(k: &Kallsyms, start: &str, stop: &str) -> Option<(u64, u64)> {
    let a = k.first_addr(start)?;
    let b = k.first_addr(stop)?;
    (b >= a && b - a < 64 << 20).then_some((a, b))
}

fn s32(b: &[u8], o: usize) -> i64 {
    i64::from(i32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

/// Length of the instruction at `addr` (1..15), or `fallback` when it does not decode.
fn insn_len<M: KernelMemory + ?Sized>(mem: &mut M, addr: u64, fallback: u32) -> u32 {
    let Ok(code) = mem.read_vec(addr, 15) else { return fallback };
    let mut d = Decoder::with_ip(64, &code, addr, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        fallback
    } else {
        insn.len() as u32
    }
}

impl Rewrites {
    /// Reads every table of the image. A table whose bounding symbols are
    /// missing is skipped (the kernel was built without that feature).
    pub fn read<M: KernelMemory + ?Sized>(mem: &mut M, k: &Kallsyms, relocs: &Relocs) -> Result<Self, MemError> {
        let mut sites: Vec<Site> = relocs.fields().map(|(addr, len, why)| Site { addr, len, why }).collect();
        let mut counts = vec![("reloc", relocs.len())];
        let mut add = |sites: &mut Vec<Site>, why: &'static str, new: Vec<Site>| {
            counts.push((why, new.len()));
            sites.extend(new);
        };
        // Tables of s32 self-relative pointers to sites.
        for (start, stop, why, len) in [
            ("__retpoline_sites", "__retpoline_sites_end", "retpoline", None),
            ("__return_sites", "__return_sites_end", "return_thunk", Some(5)),
            ("__smp_locks", "__smp_locks_end", "smp_lock", Some(1)),
        ] {
            if let Some((a, b)) = bounds(k, start, stop) {
                let t = mem.read_vec(a, (b - a) as usize)?;
                let mut new = Vec::with_capacity(t.len() / 4);
                for o in (0..t.len() / 4 * 4).step_by(4) {
                    let addr = (a + o as u64).wrapping_add(s32(&t, o) as u64);
                    let len = match len {
                        Some(l) => l,
                        None => insn_len(mem, addr, 6),
                    };
                    new.push(Site { addr, len, why });
                }
                add(&mut sites, why, new);
            }
        }
        // struct alt_instr { s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8 replacementlen; }
        if let Some((a, b)) = bounds(k, "__alt_instructions", "__alt_instructions_end") {
            let t = mem.read_vec(a, (b - a) as usize)?;
            let new = t
                .chunks_exact(12)
                .enumerate()
                .filter(|(_, e)| e[10] > 0)
                .map(|(i, e)| Site { addr: (a + 12 * i as u64).wrapping_add(s32(e, 0) as u64), len: u32::from(e[10]), why: "alternative" })
                .collect();
            add(&mut sites, "alternative", new);
        }
        // struct paravirt_patch_site { u8 *instr; u8 type; u8 len; } (16 bytes)
        if let Some((a, b)) = bounds(k, "__parainstructions", "__parainstructions_end") {
            let t = mem.read_vec(a, (b - a) as usize)?;
            let new = t
                .chunks_exact(16)
                .filter(|e| e[9] > 0)
                .map(|e| Site { addr: u64_at(e, 0), len: u32::from(e[9]), why: "paravirt" })
                .collect();
            add(&mut sites, "paravirt", new);
        }
        // __mcount_loc: absolute addresses of `call __fentry__`.
        if let Some((a, b)) = bounds(k, "__start_mcount_loc", "__stop_mcount_loc") {
            let t = mem.read_vec(a, (b - a) as usize)?;
            let new = t.chunks_exact(8).map(|e| Site { addr: u64_at(e, 0), len: 5, why: "fentry" }).filter(|s| s.addr != 0).collect();
            add(&mut sites, "fentry", new);
        }
        // struct static_call_site { s32 addr; s32 key; }
        if let Some((a, b)) = bounds(k, "__start_static_call_sites", "__stop_static_call_sites") {
            let t = mem.read_vec(a, (b - a) as usize)?;
            let new = t
                .chunks_exact(8)
                .enumerate()
                .map(|(i, e)| Site { addr: (a + 8 * i as u64).wrapping_add(s32(e, 0) as u64), len: 5, why: "static_call" })
                .collect();
            add(&mut sites, "static_call", new);
        }
        // struct jump_entry { s32 code; s32 target; long key; }: a 2- or 5-byte jmp or NOP.
        if let Some((a, b)) = bounds(k, "__start___jump_table", "__stop___jump_table") {
            let t = mem.read_vec(a, (b - a) as usize)?;
            let mut new = Vec::with_capacity(t.len() / 16);
            for (i, e) in t.chunks_exact(16).enumerate() {
                let addr = (a + 16 * i as u64).wrapping_add(s32(e, 0) as u64);
                let len = insn_len(mem, addr, 5).clamp(2, 5);
                new.push(Site { addr, len, why: "jump_label" });
            }
            add(&mut sites, "jump_label", new);
        }
        // Static-call trampolines: rewritten whole whenever their call is updated.
        let tramps: Vec<Site> = k
            .symbols()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name.starts_with("__SCT__"))
            .filter_map(|(i, s)| k.size_of(i).filter(|&n| n <= 64).map(|n| Site { addr: s.addr, len: n as u32, why: "static_call_trampoline" }))
            .collect();
        add(&mut sites, "static_call_trampoline", tramps);
        Ok(Self::sorted(sites, Counts(counts)))
    }

    /// Builds from explicit sites (tests).
    pub fn from_sites(sites: Vec<Site>) -> Self {
        Self::sorted(sites, Counts::default())
    }

    fn sorted(mut sites: Vec<Site>, counts: Counts) -> Self {
        sites.sort_unstable();
        let max_len = sites.iter().map(|s| u64::from(s.len)).max().unwrap_or(0);
        Self { sites, max_len, counts }
    }

    /// Every site.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The masks for the function at `[addr, addr + size)`: every site that
    /// overlaps it, clipped to it, as offsets from `addr`, merged where they
    /// overlap (the `why` of the first one kept, the others appended).
    pub fn masks(&self, addr: u64, size: u64) -> Vec<ByteMask> {
        let end = addr.saturating_add(size);
        // No site is longer than max_len: start the search that much early.
        let first = self.sites.partition_point(|s| s.addr.saturating_add(self.max_len) <= addr);
        let mut out: Vec<ByteMask> = Vec::new();
        for s in self.sites[first..].iter().take_while(|s| s.addr < end) {
            let (a, b) = (s.addr.max(addr), (s.addr + u64::from(s.len)).min(end));
            if a >= b {
                continue;
            }
            let (off, len) = (a - addr, b - a);
            match out.last_mut() {
                Some(m) if off <= m.offset + m.len => {
                    m.len = m.len.max(off + len - m.offset);
                    if !m.why.split('+').any(|w| w == s.why) {
                        m.why.push('+');
                        m.why.push_str(s.why);
                    }
                }
                _ => out.push(ByteMask { offset: off, len, why: s.why.to_owned() }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_clipped_merged_and_relative() {
        let r = Rewrites::from_sites(vec![
            Site { addr: 0x0ff8, len: 8, why: "reloc64" }, // before the function
            Site { addr: 0x0ffe, len: 4, why: "reloc32" }, // straddles its start
            Site { addr: 0x1000, len: 5, why: "fentry" },
            Site { addr: 0x1010, len: 4, why: "reloc32" },
            Site { addr: 0x100c, len: 6, why: "alternative" },
            Site { addr: 0x103e, len: 5, why: "return_thunk" }, // straddles its end
            Site { addr: 0x1040, len: 5, why: "fentry" },       // next function
            Site { addr: 0x0fd0, len: 0x32, why: "alternative" }, // long, from far before
        ]);
        let m = r.masks(0x1000, 0x40);
        let got: Vec<(u64, u64, &str)> = m.iter().map(|m| (m.offset, m.len, m.why.as_str())).collect();
        assert_eq!(got, vec![(0, 5, "alternative+reloc32+fentry"), (0xc, 8, "alternative+reloc32"), (0x3e, 2, "return_thunk")]);
    }
}

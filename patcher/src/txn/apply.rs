//! Applying a patch. Prepare (guest running): identify (target kind,
//! build-id), match (run-pre digest of each target function, with the bytes
//! of patches already applied taken out), load (layout, arena placement,
//! relocations), choose the jump sites, write the new code into the arena
//! and record the intent. Then the pauses ([`super::pause`]), then commit.
//!
//! A cumulative patch replaces every applied patch in the same pause: its
//! functions get its jumps, every other function touched by an earlier patch
//! gets its original bytes back.

use std::collections::BTreeMap;
use std::time::Instant;

use super::result::{chain, Cause, Failure, Stage, Timings, TxnReport};
use super::{orc_name, Patcher};
use crate::arena::alloc::first_fit;
use crate::arena::registry::{CheckRange, FuncRecord, Intent, IntentOp, PatchRecord, PatchState, Registry, SiteRecord, SiteWrite, Span};
use crate::model::backend::Backend;
use crate::patch::jump;
use crate::os::linux::orc::OrcTable;
use crate::os::linux::orc_object;
use crate::patch::link::{LoadError, Object};
use crate::model::mem::KernelMemory;
use crate::patch::manifest::run_pre_digest;
use crate::patch::PatchFile;
use crate::model::LookupError;

fn load_failure(e: &LoadError) -> Failure {
    Failure::new(Stage::Prepare, Cause::from(e), Some(e.reason()), chain(e))
}

fn lookup_failure(e: &LookupError) -> Failure {
    match e {
        LookupError::NotFound { .. } => Failure::new(Stage::Prepare, Cause::FailedToFind, "unknown_symbol", e.to_string()),
        LookupError::Ambiguous { .. } => Failure::new(Stage::Prepare, Cause::BadPatch, "ambiguous_symbol", e.to_string()),
    }
}

/// Everything prepared for the pause.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub record: PatchRecord,
    pub intent: Intent,
    pub code: (u64, Vec<u8>),
    pub data: (u64, Vec<u8>),
}

impl<B: Backend> Patcher<'_, B> {
    /// The target function's bytes as the kernel had them before any patch
    /// (jump sites of applied patches replaced by their bottom original bytes).
    pub(crate) fn pristine(&mut self, reg: &Registry, addr: u64, size: u64) -> Result<Vec<u8>, Failure> {
        let mut bytes = self
            .guest
            .read_vec(addr, size as usize)
            .map_err(|e| Failure::from_err(Stage::Prepare, Cause::Unexpected, Some(e.cause()), &e))?;
        let mut sites: Vec<u64> = reg.applied().flat_map(|p| p.funcs.iter().map(|f| f.site.addr)).collect();
        sites.sort_unstable();
        sites.dedup();
        for s in sites.into_iter().filter(|&s| s >= addr && s < addr + size) {
            if let Some(bottom) = reg.bottom_at(s) {
                let off = (s - addr) as usize;
                let end = (off + bottom.site.orig.len()).min(bytes.len());
                bytes[off..end].copy_from_slice(&bottom.site.orig[..end - off]);
            }
        }
        Ok(bytes)
    }

    fn prepare_apply(&mut self, patch: &PatchFile, reg: &Registry) -> Result<Prepared, Failure> {
        let m = &patch.manifest;
        let target = self.target;
        let prep = |cause, reason: &'static str, msg: String| Failure::new(Stage::Prepare, cause, reason, msg);
        if m.target.kind != target.kind() {
            return Err(prep(Cause::NoMatch, "target_kind", format!("patch is for a `{}` kernel, the guest runs `{}`", m.target.kind, target.kind())));
        }
        if let (Some(want), Some(have)) = (m.target.build_id.as_deref(), target.build_id()) {
            if want != have {
                return Err(prep(Cause::NoMatch, "build_id", format!("patch is for build-id {want}, the guest kernel is {have}")));
            }
        }
        if reg.patch(&m.id).is_some() {
            return Err(prep(Cause::AlreadyApplied, "already_applied", format!("patch {} ({}) is already applied", m.name, m.id)));
        }
        if m.replacements.is_empty() {
            return Err(prep(Cause::BadPatch, "no_replacements", "the patch replaces no function".into()));
        }
        let obj = Object::parse(&patch.object).map_err(|e| load_failure(&e))?;
        // Match every target function and choose its jump site.
        let mut olds = Vec::new();
        for r in &m.replacements {
            let sym = target.symbols().resolve(&r.old, r.qualifier.as_ref()).map_err(|e| lookup_failure(&e))?.clone();
            if sym.size != r.size {
                return Err(prep(Cause::NoMatch, "run_pre", format!("`{}` is {} bytes in the guest, the patch expects {}", r.old, sym.size, r.size)));
            }
            let pristine = self.pristine(reg, sym.addr, sym.size)?;
            if run_pre_digest(&pristine, &r.tolerate) != r.sha256 {
                return Err(prep(Cause::NoMatch, "run_pre", format!("the code of `{}` in the guest differs from the code the patch was built against", r.old)));
            }
            if !obj.defines_function(&r.new) {
                return Err(load_failure(&LoadError::MissingFunction(r.new.clone())));
            }
            let fentry = r.tolerate.iter().any(|m| m.offset == 0 && m.len >= 5 && m.why.split('+').any(|w| w == "fentry"));
            let site = jump::choose_with(&r.old, sym.addr, &pristine, fentry)
                .map_err(|e| Failure::new(Stage::Prepare, Cause::BadPatch, Some(e.reason()), e.to_string()))?;
            olds.push((r, sym, site));
        }
        // Place and link.
        let layout = obj.layout();
        let used = reg.used();
        let code_addr = first_fit(reg.arena.code_range(), &used, layout.code_size, layout.code_align.max(16));
        let data_addr = first_fit(reg.arena.data_range(), &used, layout.data_size, layout.data_align.max(16));
        let (Some(code_addr), Some(data_addr)) = (code_addr, data_addr) else {
            return Err(prep(Cause::ArenaFull, "arena_full", format!("no room for {} bytes of code and {} bytes of data in the arena", layout.code_size, layout.data_size)));
        };
        let linked = {
            let mut env = target.link_env(&mut self.guest);
            obj.link_with(code_addr, data_addr, &m.symbols, target.symbols(), &mut *env).map_err(|e| load_failure(&e))?
        };
        for n in &linked.notes {
            tracing::info!(patch = %m.name, "{n}");
        }
        self.notes = linked.notes.clone();
        // The new code's own ORC data, for unwinding through it once applied.
        self.pending_orc = None;
        if target.unwinder().is_some() {
            match orc_object::orc_rows(&patch.object, |i| obj.section_addr(i, code_addr, data_addr)) {
                Ok(rows) if !rows.is_empty() => self.pending_orc = Some(OrcTable::new(&orc_name(&m.id), code_addr, code_addr + layout.code_size, rows)),
                Ok(_) => tracing::info!(patch = %m.name, "the patch has no ORC data: stacks through its code will be scanned conservatively"),
                Err(e) => tracing::info!(patch = %m.name, error = %e, "the patch's ORC data is unusable: stacks through its code will be scanned conservatively"),
            }
        }
        // Jump sites: current bytes (below this patch) and new bytes.
        let mut funcs = Vec::new();
        let mut writes: BTreeMap<u64, SiteWrite> = BTreeMap::new();
        let mut ranges = Vec::new();
        for (r, sym, site) in &olds {
            let new_addr = *linked.symbols.get(&r.new).ok_or_else(|| load_failure(&LoadError::MissingFunction(r.new.clone())))?;
            let new_bytes = jump::jump_bytes(&r.old, site, new_addr)
                .map_err(|e| Failure::new(Stage::Prepare, Cause::BadPatch, Some(e.reason()), e.to_string()))?;
            let before = match reg.top_at(site.addr) {
                Some((_, f)) => f.site.new.clone(),
                None => {
                    let off = (site.addr - sym.addr) as usize;
                    self.pristine(reg, sym.addr, sym.size)?[off..off + site.len].to_vec()
                }
            };
            let orig = if m.cumulative { reg.bottom_at(site.addr).map_or(before.clone(), |b| b.site.orig.clone()) } else { before.clone() };
            writes.insert(site.addr, SiteWrite { addr: site.addr, before, after: new_bytes.clone() });
            ranges.push(CheckRange { start: sym.addr, end: sym.addr + sym.size, label: sym.name.clone() });
            if let Some((p, f)) = reg.top_at(site.addr) {
                ranges.push(CheckRange { start: p.code.start, end: p.code.start + p.code.len, label: format!("patch {}: {}", p.name, f.new_name) });
            }
            funcs.push(FuncRecord {
                name: sym.name.clone(),
                old_addr: sym.addr,
                old_size: sym.size,
                new_name: r.new.clone(),
                new_addr,
                site: SiteRecord { addr: site.addr, orig, new: new_bytes },
            });
        }
        // A cumulative patch takes every other applied site back to the original.
        let mut superseded = Vec::new();
        if m.cumulative {
            for p in reg.applied() {
                superseded.push(p.id.clone());
                ranges.push(CheckRange { start: p.code.start, end: p.code.start + p.code.len, label: format!("patch {}", p.name) });
                for f in &p.funcs {
                    ranges.push(CheckRange { start: f.old_addr, end: f.old_addr + f.old_size, label: f.name.clone() });
                    if let std::collections::btree_map::Entry::Vacant(slot) = writes.entry(f.site.addr) {
                        let top = reg.top_at(f.site.addr).map(|(_, t)| t.site.new.clone()).unwrap_or_default();
                        let bottom = reg.bottom_at(f.site.addr).map(|b| b.site.orig.clone()).unwrap_or_default();
                        slot.insert(SiteWrite { addr: f.site.addr, before: top, after: bottom });
                    }
                }
            }
        }
        ranges.dedup();
        let code_len = linked.code.len() as u64;
        let data_len = linked.data.len() as u64;
        let record = PatchRecord {
            id: m.id.clone(),
            name: m.name.clone(),
            state: PatchState::Loading,
            seq: 0,
            cumulative: m.cumulative,
            code: Span { start: code_addr, len: code_len },
            data: Span { start: data_addr, len: data_len },
            funcs,
        };
        let intent = Intent {
            txn: 0,
            op: if m.cumulative { IntentOp::Replace } else { IntentOp::Apply },
            patch: m.id.clone(),
            superseded,
            writes: writes.into_values().collect(),
            ranges,
        };
        Ok(Prepared { record, intent, code: (code_addr, linked.code), data: (data_addr, linked.data) })
    }

    fn write_arena(&mut self, reg: &Registry, (addr, bytes): &(u64, Vec<u8>)) -> Result<(), Failure> {
        if bytes.is_empty() {
            return Ok(());
        }
        let pa = reg.arena.phys_of(*addr).ok_or_else(|| Failure::new(Stage::Prepare, Cause::Unexpected, "arena", format!("{addr:#x} is outside the arena")))?;
        self.guest.write_phys(pa, bytes).map_err(|e| Failure::from_err(Stage::Prepare, Cause::Unexpected, Some(e.cause()), &e))
    }

    fn try_apply(&mut self, patch: &PatchFile, timings: &mut Timings, t0: Instant) -> Result<Vec<String>, Failure> {
        if !self.target.is_up(&mut self.guest).unwrap_or(false) {
            return Err(Failure::new(Stage::Prepare, Cause::NotUp, "not_up", "the guest kernel is not up"));
        }
        self.recover_quietly(Stage::Prepare)?;
        let mut reg = self.registry(Stage::Prepare)?;
        if reg.intent.is_some() {
            return Err(Failure::new(Stage::Recover, Cause::CodeBusy, "recovery_pending", "an interrupted transaction could not be completed yet"));
        }
        let mut prep = self.prepare_apply(patch, &reg)?;
        self.write_arena(&reg, &prep.code)?;
        self.write_arena(&reg, &prep.data)?;
        prep.record.seq = reg.take_seq();
        prep.intent.txn = reg.take_seq();
        let superseded = prep.intent.superseded.clone();
        let (ranges, writes) = (prep.intent.ranges.clone(), prep.intent.writes.clone());
        reg.patches.push(prep.record);
        reg.intent = Some(prep.intent);
        // The intent is in the guest before any text is touched.
        self.save_registry(&reg, Stage::Prepare)?;
        timings.prepare_us = t0.elapsed().as_micros() as u64;
        self.pause_and_settle(&mut reg, &ranges, &writes, timings)?;
        Ok(superseded)
    }

    /// Applies a patch: prepare with the guest running, then pause, check,
    /// write, resume (retrying on conflicts).
    pub fn apply(&mut self, patch: &PatchFile) -> TxnReport {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        let r = self.try_apply(patch, &mut timings, t0);
        if timings.prepare_us == 0 {
            timings.prepare_us = t0.elapsed().as_micros() as u64;
        }
        timings.total_us = t0.elapsed().as_micros() as u64;
        let (id, name) = (Some(patch.manifest.id.clone()), Some(patch.manifest.name.clone()));
        let report = self.report("apply", id, name, timings, r);
        if let (true, Some(t), Some(u)) = (report.is_ok(), self.pending_orc.take(), self.target.unwinder()) {
            for gone in &report.superseded {
                u.unregister(&orc_name(gone));
            }
            u.register(t);
        }
        tracing::info!(patch = %patch.manifest.name, cause = report.cause.name(), attempts = timings.attempts, downtime_us = timings.downtime_us, "apply");
        report
    }

    /// Parses a patch file's bytes and applies it; an unusable file is a
    /// `bad_patch` report with the format's reason (`truncated`, `not_elf`, …).
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> TxnReport {
        match PatchFile::parse(bytes) {
            Ok(p) => self.apply(&p),
            Err(e) => {
                let f = Failure::new(Stage::Prepare, Cause::from(&e), Some(e.reason()), chain(&e));
                self.report("apply", None, None, Timings::default(), Err(f))
            }
        }
    }
}

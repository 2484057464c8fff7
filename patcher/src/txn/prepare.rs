//! Preparing an apply, with the guest running, one named step each:
//! `Patcher::check_applicable` (target kind, build-id, not yet applied),
//! `Patcher::loaded_modules` (the modules the patch names, in the guest),
//! `Patcher::match_functions` (run-pre digest of each target function,
//! with the bytes of patches already applied taken out, and its jump site),
//! `place` (arena addresses), `Patcher::link` (relocations against the
//! kernel),
//! `Patcher::plan_sites` (each site's bytes before and after, and the
//! ranges the check covers), `supersede` (a cumulative patch takes every
//! other applied site back to its original bytes) and `build_record`
//! (the registry record and the intent), `Patcher::prepare_orc` (the new
//! code's ORC rows, for the record). Writing the code into the arena
//! and saving the intent in the guest follow in [`super::apply`].

use std::collections::BTreeMap;

use super::result::{chain, Cause, Failure, Stage};
use super::modules::{link_table, Modules};
use super::orc::record_rows;
use super::Patcher;
use crate::arena::alloc::first_fit;
use crate::arena::patch_orc::PatchOrc;
use crate::arena::registry::{CheckRange, FuncRecord, Intent, IntentOp, PatchRecord, PatchState, Registry, SiteRecord, SiteWrite, Span};
use crate::model::backend::Backend;
use crate::model::mem::KernelMemory;
use crate::model::{LookupError, Symbol, TargetKind};
use crate::os::linux::orc_object;
use crate::patch::jump::{self, JumpSite};
use crate::patch::link::{LoadError, Linked, Object};
use crate::patch::manifest::{run_pre_digest, Manifest, PatchInfo, Replacement};
use crate::patch::objects::link_aliases;
use crate::patch::PatchFile;

pub(crate) fn load_failure(e: &LoadError) -> Failure {
    Failure::new(Stage::Prepare, Cause::from(e), Some(e.reason()), chain(e))
}

fn lookup_failure(e: &LookupError) -> Failure {
    match e {
        LookupError::NotFound { .. } => Failure::new(Stage::Prepare, Cause::FailedToFind, "unknown_symbol", e.to_string()),
        LookupError::Ambiguous { .. } => Failure::new(Stage::Prepare, Cause::BadPatch, "ambiguous_symbol", e.to_string()),
    }
}

fn prep(cause: Cause, reason: &'static str, msg: String) -> Failure {
    Failure::new(Stage::Prepare, cause, reason, msg)
}

/// Everything prepared for the pause.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub record: PatchRecord,
    pub intent: Intent,
    pub code: (u64, Vec<u8>),
    pub data: (u64, Vec<u8>),
}

/// A target function matched in the guest, with its jump site.
#[derive(Debug)]
struct Matched<'m> {
    replacement: &'m Replacement,
    sym: Symbol,
    site: JumpSite,
}

/// What the pause will write and check.
#[derive(Debug, Default)]
struct SitePlan {
    funcs: Vec<FuncRecord>,
    writes: BTreeMap<u64, SiteWrite>,
    ranges: Vec<CheckRange>,
}

/// Arena addresses for the object's code and data parts.
fn place(obj: &Object<'_>, reg: &Registry) -> Result<(u64, u64), Failure> {
    let layout = obj.layout();
    let used = reg.used();
    let code_addr = first_fit(reg.arena.code_range(), &used, layout.code_size, layout.code_align.max(16));
    let data_addr = first_fit(reg.arena.data_range(), &used, layout.data_size, layout.data_align.max(16));
    match (code_addr, data_addr) {
        (Some(c), Some(d)) => Ok((c, d)),
        _ => Err(prep(Cause::ArenaFull, "arena_full", format!("no room for {} bytes of code and {} bytes of data in the arena", layout.code_size, layout.data_size))),
    }
}

/// A cumulative patch takes every other applied site back to the original
/// (and the check covers every applied patch's code and old functions);
/// returns the patches it replaces.
fn supersede(reg: &Registry, plan: &mut SitePlan) -> Vec<String> {
    let mut superseded = Vec::new();
    for p in reg.applied() {
        superseded.push(p.id.clone());
        plan.ranges.push(CheckRange { start: p.code.start, end: p.code.start + p.code.len, label: format!("patch {}", p.name) });
        for f in &p.funcs {
            plan.ranges.push(CheckRange { start: f.old_addr, end: f.old_addr + f.old_size, label: f.name.clone() });
            if let std::collections::btree_map::Entry::Vacant(slot) = plan.writes.entry(f.site.addr) {
                let top = reg.top_at(f.site.addr).map(|(_, t)| t.site.new.clone()).unwrap_or_default();
                let bottom = reg.bottom_at(f.site.addr).map(|b| b.site.orig.clone()).unwrap_or_default();
                slot.insert(SiteWrite { addr: f.site.addr, before: top, after: bottom });
            }
        }
    }
    superseded
}

/// The registry record of the patch (still loading) and the intent of the transaction.
fn build_record(m: &Manifest, plan: SitePlan, superseded: Vec<String>, linked: Linked) -> Prepared {
    let SitePlan { funcs, writes, mut ranges } = plan;
    ranges.dedup();
    let (code_addr, data_addr) = (linked.code_addr, linked.data_addr);
    let record = PatchRecord {
        id: m.id.clone(),
        name: m.name.clone(),
        state: PatchState::Loading,
        seq: 0,
        cumulative: m.cumulative,
        code: Span { start: code_addr, len: linked.code.len() as u64 },
        data: Span { start: data_addr, len: linked.data.len() as u64 },
        funcs,
        orc: None,
        // Nothing kept when the manifest has nothing to say.
        info: (m.info != PatchInfo::default()).then(|| m.info.clone()),
    };
    let intent = Intent {
        txn: 0,
        op: if m.cumulative { IntentOp::Replace } else { IntentOp::Apply },
        patch: m.id.clone(),
        superseded,
        writes: writes.into_values().collect(),
        ranges,
    };
    Prepared { record, intent, code: (code_addr, linked.code), data: (data_addr, linked.data) }
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

    /// Everything the pause needs, prepared with the guest running.
    pub(crate) fn prepare_apply(&mut self, patch: &PatchFile, reg: &Registry) -> Result<Prepared, Failure> {
        let m = &patch.manifest;
        self.check_applicable(m, reg)?;
        let obj = Object::parse(&patch.object).map_err(|e| load_failure(&e))?;
        let mods = self.loaded_modules(m)?;
        let matched = self.match_functions(m, &obj, reg, &mods)?;
        let (code_addr, data_addr) = place(&obj, reg)?;
        let linked = self.link(m, &obj, code_addr, data_addr, &mods)?;
        let mut plan = self.plan_sites(m, reg, &matched, &linked, &mods)?;
        let superseded = if m.cumulative { supersede(reg, &mut plan) } else { Vec::new() };
        let mut prepared = build_record(m, plan, superseded, linked);
        prepared.record.orc = self.prepare_orc(patch, &obj, &prepared.record);
        Ok(prepared)
    }

    /// The patch is for this kernel (kind, build-id), not applied yet, and
    /// replaces something. A build-id missing on either side is never a
    /// silent pass: a Linux patch without one is refused
    /// (`build_id_missing`); otherwise the report's notes say the match rests
    /// on the run-pre digests alone.
    fn check_applicable(&mut self, m: &Manifest, reg: &Registry) -> Result<(), Failure> {
        let target = self.target;
        if m.target.kind != target.kind() {
            return Err(prep(Cause::NoMatch, "target_kind", format!("patch is for a `{}` kernel, the guest runs `{}`", m.target.kind, target.kind())));
        }
        match (m.target.build_id.as_deref(), target.build_id()) {
            (Some(want), Some(have)) if want != have => {
                return Err(prep(Cause::NoMatch, "build_id", format!("patch is for build-id {want}, the guest kernel is {have}")));
            }
            (Some(_), Some(_)) => {}
            (None, _) if target.kind() == crate::model::TargetKind::Linux => {
                return Err(prep(Cause::NoMatch, "build_id_missing", "the patch names no build-id: a Linux patch must say which kernel build it is for".into()));
            }
            (want, _) => {
                let side = if want.is_none() { "the patch names no build-id" } else { "the guest kernel has no build-id" };
                let note = format!("{side}: the build-id was not checked; the patch matched by its run-pre digests alone");
                tracing::warn!(patch = %m.name, "{note}");
                self.notes.push(note);
            }
        }
        if reg.patch(&m.id).is_some() {
            return Err(prep(Cause::AlreadyApplied, "already_applied", format!("patch {} ({}) is already applied", m.name, m.id)));
        }
        if m.replacements.is_empty() {
            return Err(prep(Cause::BadPatch, "no_replacements", "the patch replaces no function".into()));
        }
        Ok(())
    }

    /// Matches every target function (size, run-pre digest of its pristine
    /// bytes, its replacement in the object) and chooses its jump site.
    fn match_functions<'m>(&mut self, m: &'m Manifest, obj: &Object<'_>, reg: &Registry, mods: &Modules) -> Result<Vec<Matched<'m>>, Failure> {
        let target = self.target;
        let mut olds = Vec::new();
        for r in &m.replacements {
            // A module's function: its own kallsyms, inside its core text
            // (its link address is the `.ko`'s, not comparable).
            let module = r.object.as_ref().and_then(|o| mods.get(o));
            let table = module.map_or_else(|| target.symbols(), |md| &md.symbols);
            let sym = table.resolve(&r.old, r.qualifier.as_ref()).map_err(|e| lookup_failure(&e))?.clone();
            if sym.size != r.size {
                return Err(prep(Cause::NoMatch, "run_pre", format!("`{}` is {} bytes in the guest, the patch expects {}", r.old, sym.size, r.size)));
            }
            if let Some(md) = module.filter(|md| !md.holds_text(sym.addr, sym.size)) {
                return Err(prep(Cause::NoMatch, "not_module_text", format!("`{}` at {:#x} is not in module {}'s text", r.old, sym.addr, md.name)));
            }
            // The manifest's address must be the kernel's own (link-time) one for
            // that symbol, where the slide is known (test guest: none).
            let slide = target.kaslr_slide().or((target.kind() == TargetKind::TestGuest).then_some(0)).filter(|_| module.is_none());
            if let Some(link) = slide.map(|s| sym.addr.wrapping_sub(s)) {
                if r.old_addr != link {
                    return Err(prep(Cause::NoMatch, "old_addr", format!("`{}` is at {link:#x} in the kernel's image, the patch says {:#x}", r.old, r.old_addr)));
                }
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
            olds.push(Matched { replacement: r, sym, site });
        }
        Ok(olds)
    }

    /// Links the object at its arena addresses against the running kernel.
    fn link(&mut self, m: &Manifest, obj: &Object<'_>, code_addr: u64, data_addr: u64, mods: &Modules) -> Result<Linked, Failure> {
        let target = self.target;
        let table = link_table(target.symbols(), mods);
        let aliases = link_aliases(&m.symbols);
        let linked = {
            let mut env = target.link_env(&mut self.guest);
            obj.link_with(code_addr, data_addr, &aliases, &table, &mut *env).map_err(|e| load_failure(&e))?
        };
        for n in &linked.notes {
            tracing::info!(patch = %m.name, "{n}");
        }
        self.notes.extend(linked.notes.iter().cloned());
        Ok(linked)
    }

    /// The new code's own ORC rows, kept in its registry record for
    /// unwinding through it once applied (when the target has an unwinder).
    fn prepare_orc(&mut self, patch: &PatchFile, obj: &Object<'_>, record: &PatchRecord) -> Option<PatchOrc> {
        let m = &patch.manifest;
        // Without an unwinder the rows would never be used.
        self.target.unwinder()?;
        let why = match orc_object::orc_rows(&patch.object, |i| obj.section_addr(i, record.code.start, record.data.start)) {
            Ok(rows) if !rows.is_empty() => match record_rows(record, &rows) {
                Ok(orc) => return Some(orc),
                Err(e) => {
                    let note = format!("{e}: stacks through the patch's code will be scanned conservatively");
                    tracing::info!(patch = %m.name, cause = e.cause(), "{note}");
                    self.notes.push(note);
                    return None;
                }
            },
            Ok(_) => "the patch has no ORC data".to_owned(),
            Err(e) => format!("the patch's ORC data is unusable: {e}"),
        };
        tracing::info!(patch = %m.name, "{why}: stacks through its code will be scanned conservatively");
        None
    }

    /// Each jump site's current bytes (below this patch) and new bytes, the
    /// registry record of each function, and the ranges the check covers.
    fn plan_sites(&mut self, m: &Manifest, reg: &Registry, matched: &[Matched<'_>], linked: &Linked, mods: &Modules) -> Result<SitePlan, Failure> {
        let mut plan = SitePlan::default();
        for Matched { replacement: r, sym, site } in matched {
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
            plan.writes.insert(site.addr, SiteWrite { addr: site.addr, before, after: new_bytes.clone() });
            plan.ranges.push(CheckRange { start: sym.addr, end: sym.addr + sym.size, label: sym.name.clone() });
            if let Some((p, f)) = reg.top_at(site.addr) {
                plan.ranges.push(CheckRange { start: p.code.start, end: p.code.start + p.code.len, label: format!("patch {}: {}", p.name, f.new_name) });
            }
            plan.funcs.push(FuncRecord {
                name: sym.name.clone(),
                old_addr: sym.addr,
                old_size: sym.size,
                new_name: r.new.clone(),
                new_addr,
                site: SiteRecord { addr: site.addr, orig, new: new_bytes },
                module: r.object.as_ref().and_then(|o| mods.get(o)).map(|md| md.identity()),
            });
        }
        Ok(plan)
    }
}

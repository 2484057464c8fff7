//! Patches of modules in a transaction: the modules a patch names are looked
//! up in the guest's module list ([`Patcher::loaded_modules`]: a module that
//! is not there, or not live yet, is `module_not_loaded`); the linker gets
//! the kernel's table plus each module's own symbols ([`link_table`]); and a
//! registry record whose module is gone, or is another load of that module
//! now, is dropped without any write to text ([`Patcher::drop_vanished`]):
//! its jump sites went with the module's text, and its arena space is free
//! again.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::result::{Cause, Failure, Stage};
use super::Patcher;
use crate::arena::registry::Registry;
use crate::model::backend::Backend;
use crate::model::{LoadedModule, ModuleIdentity, SymbolTable, MODULE_STATE_COMING, MODULE_STATE_LIVE};
use crate::patch::manifest::Manifest;
use crate::patch::objects;

/// The modules a transaction found, by name.
pub(crate) type Modules = BTreeMap<String, LoadedModule>;

/// What the linker resolves against: the kernel's table alone, or with the modules' entries.
pub(crate) fn link_table<'a>(kernel: &'a SymbolTable, mods: &Modules) -> Cow<'a, SymbolTable> {
    if mods.is_empty() {
        return Cow::Borrowed(kernel);
    }
    let tables: Vec<(&str, &SymbolTable)> = mods.iter().map(|(n, m)| (n.as_str(), &m.symbols)).collect();
    Cow::Owned(objects::combined(kernel, &tables))
}

/// Why a module is not what a record says.
fn vanished(id: &ModuleIdentity, now: Option<&LoadedModule>) -> Option<&'static str> {
    match now {
        None => Some("module_unloaded"),
        Some(m) if m.identity() != *id => Some("module_reloaded"),
        Some(_) => None,
    }
}

impl<B: Backend> Patcher<'_, B> {
    /// Every module the patch names, loaded and live in the guest.
    pub(crate) fn loaded_modules(&mut self, m: &Manifest) -> Result<Modules, Failure> {
        let mut out = Modules::new();
        for name in m.modules() {
            let found = self.target.module(&mut self.guest, name).map_err(|e| Failure::from_err(Stage::Prepare, Cause::Unexpected, Some(e.cause()), &e))?;
            let Some(module) = found else {
                return Err(Failure::new(
                    Stage::Prepare,
                    Cause::ModuleNotLoaded,
                    "module_not_loaded",
                    format!("patch {} is for module {name}, which is not loaded in the guest; load it and apply again, or send it to a `vsplice attach` daemon with `--when-loaded` (API: `when_loaded`) to have it applied as the module loads", m.name),
                ));
            };
            let coming_here = module.state == MODULE_STATE_COMING && self.cfg.coming_module == Some(module.addr);
            if module.state != MODULE_STATE_LIVE && !coming_here {
                return Err(Failure::new(
                    Stage::Prepare,
                    Cause::ModuleNotLoaded,
                    "module_not_live",
                    format!("module {name} is being {} (state {}); apply again once it is live", if module.state == 1 { "loaded" } else { "unloaded" }, module.state),
                ));
            }
            tracing::debug!(module = %name, base = format_args!("{:#x}", module.base), symbols = module.symbols.len(), "module found");
            out.insert(name.to_owned(), module);
        }
        Ok(out)
    }

    /// Drops every applied record whose module was unloaded or loaded again
    /// since (no text is written: the sites went with the old text), saves
    /// the registry when something was dropped, and returns the dropped
    /// patches' ids with the reason.
    pub(crate) fn drop_vanished(&mut self, reg: &mut Registry, stage: Stage) -> Result<Vec<(String, &'static str)>, Failure> {
        let ids: BTreeSet<ModuleIdentity> = reg.patches.iter().flat_map(|p| p.funcs.iter().filter_map(|f| f.module.clone())).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut gone: BTreeMap<ModuleIdentity, &'static str> = BTreeMap::new();
        for id in ids {
            let now = self.target.module(&mut self.guest, &id.name).map_err(|e| Failure::from_err(stage, Cause::Unexpected, Some(e.cause()), &e))?;
            if let Some(why) = vanished(&id, now.as_ref()) {
                gone.insert(id, why);
            }
        }
        let mut dropped = Vec::new();
        for p in reg.patches.clone() {
            let Some((id, why)) = p.funcs.iter().filter_map(|f| f.module.as_ref()).find_map(|i| gone.get(i).map(|w| (i, *w))) else { continue };
            reg.patches.retain(|x| x.id != p.id);
            reg.remember(&p.id, &p.name, why, None);
            let note = format!("patch {} ({}) dropped from the registry: module {} was {} since it was applied (no text written; its arena space is free)", p.name, p.id, id.name, if why == "module_unloaded" { "unloaded" } else { "unloaded and loaded again" });
            tracing::warn!(patch = %p.name, module = %id.name, reason = why, "{note}");
            self.notes.push(note);
            dropped.push((p.id.clone(), why));
        }
        if !dropped.is_empty() {
            self.save_registry(reg, stage)?;
        }
        Ok(dropped)
    }

    /// The module whose `struct module` is at `module_addr` is going (its
    /// exit ran, or its load failed; the guest is stopped on the unload
    /// path): every applied record of that load is dropped from the
    /// registry without writing any text (the text is about to be freed),
    /// so its arena space is free at once, and the dropped patches' (id,
    /// name) are returned. Nothing is done while a transaction is
    /// half-written (the drop at the next transaction covers it).
    pub fn drop_going_module(&mut self, module_addr: u64) -> Result<Vec<(String, String)>, Failure> {
        let Some(mut reg) = self.load_registry(Stage::Prepare)? else { return Ok(Vec::new()) };
        if reg.intent.is_some() {
            return Ok(Vec::new());
        }
        let mut dropped = Vec::new();
        for p in reg.patches.clone() {
            let Some(id) = p.funcs.iter().filter_map(|f| f.module.as_ref()).find(|i| i.addr == module_addr) else { continue };
            reg.patches.retain(|x| x.id != p.id);
            reg.remember(&p.id, &p.name, "module_unloaded", None);
            let note = format!("patch {} ({}) dropped from the registry: module {} is being unloaded (no text written; its arena space is free)", p.name, p.id, id.name);
            tracing::info!(patch = %p.name, module = %id.name, "{note}");
            self.notes.push(note);
            dropped.push((p.id.clone(), p.name.clone()));
        }
        if !dropped.is_empty() {
            self.save_registry(&reg, Stage::Prepare)?;
        }
        Ok(dropped)
    }

    /// The `struct module` addresses of the modules applied records belong to.
    pub fn patched_modules(&mut self) -> Result<BTreeSet<u64>, Failure> {
        let Some(reg) = self.load_registry(Stage::Prepare)? else { return Ok(BTreeSet::new()) };
        Ok(reg.patches.iter().flat_map(|p| p.funcs.iter().filter_map(|f| f.module.as_ref().map(|m| m.addr))).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::FakeKernel;
    use crate::txn::testutil::{patch, patcher, registry, text};

    /// A patch of `fake_b` as a function of module `fakemod`.
    fn module_patch(name: &str) -> crate::patch::PatchFile {
        let mut p = patch(name, &["fake_b"]);
        p.manifest.replacements[0].object = Some("fakemod".into());
        p
    }

    #[test]
    fn a_module_patch_needs_its_module_and_is_dropped_when_the_module_goes() {
        let without = FakeKernel::new();
        let mut g = without.guest();
        let (writes, before) = (g.writes, text(&g, &without, "fake_b", 0x10));
        let r = patcher(&mut g, &without).apply(&module_patch("m1"));
        assert_eq!((r.cause, r.reason.as_deref()), (Cause::ModuleNotLoaded, Some("module_not_loaded")), "{}", r.to_json());
        assert_eq!(g.writes, writes, "nothing written");

        let with = FakeKernel::new().with_module("fakemod", 0xffff_ffff_c000_1000, &["fake_b", "fake_c"]);
        let r = patcher(&mut g, &with).apply(&module_patch("m1"));
        assert!(r.is_ok(), "{}", r.to_json());
        assert_ne!(text(&g, &with, "fake_b", 0x10), before);
        let reg = registry(&mut g).unwrap();
        let id = reg.patches[0].funcs[0].module.clone().unwrap();
        assert_eq!((id.name.as_str(), id.addr), ("fakemod", 0xffff_ffff_c000_1000));

        // Loaded again elsewhere: the record is dropped, the text not touched.
        let reloaded = FakeKernel::new().with_module("fakemod", 0xffff_ffff_c000_9000, &["fake_b", "fake_c"]);
        let (writes, now) = (g.writes, text(&g, &with, "fake_b", 0x10));
        let r = patcher(&mut g, &reloaded).revert("m1");
        assert_eq!((r.cause, r.reason.as_deref()), (Cause::ModuleChanged, Some("module_reloaded")), "{}", r.to_json());
        assert_eq!(text(&g, &with, "fake_b", 0x10), now, "no text written");
        assert!(g.writes > writes, "the registry was saved");
        let reg = registry(&mut g).unwrap();
        assert!(reg.patches.is_empty() && reg.history.iter().any(|h| h.how == "module_reloaded"), "{reg:?}");
        // A vmlinux patch is untouched by the same check.
        let r = patcher(&mut g, &without).apply(&patch("v1", &["fake_a"]));
        assert!(r.is_ok(), "{}", r.to_json());
        let r = patcher(&mut g, &without).revert("v1");
        assert!(r.is_ok(), "{}", r.to_json());
    }

    #[test]
    fn a_coming_module_counts_only_for_the_apply_at_its_load_and_a_going_one_is_dropped_at_once() {
        const AT: u64 = 0xffff_ffff_c000_1000;
        let coming = FakeKernel::new().with_module("fakemod", AT, &["fake_b", "fake_c"]).with_module_state(MODULE_STATE_COMING);
        let mut g = coming.guest();
        let writes = g.writes;
        let r = patcher(&mut g, &coming).apply(&module_patch("m1"));
        assert_eq!((r.cause, r.reason.as_deref()), (Cause::ModuleNotLoaded, Some("module_not_live")), "{}", r.to_json());
        let mut other = patcher(&mut g, &coming);
        other.config_mut().coming_module = Some(AT + 0x1000);
        let r = other.apply(&module_patch("m1"));
        assert_eq!(r.reason.as_deref(), Some("module_not_live"), "another module's load: {}", r.to_json());
        assert_eq!(g.writes, writes, "nothing written");
        let mut at_load = patcher(&mut g, &coming);
        at_load.config_mut().coming_module = Some(AT);
        let r = at_load.apply(&module_patch("m1"));
        assert!(r.is_ok(), "{}", r.to_json());
        assert_eq!(patcher(&mut g, &coming).patched_modules().unwrap(), BTreeSet::from([AT]));

        // Going: another module's unload drops nothing; this one's drops the record, no text written.
        let going = FakeKernel::new().with_module("fakemod", AT, &["fake_b", "fake_c"]).with_module_state(crate::model::MODULE_STATE_GOING);
        assert!(patcher(&mut g, &going).drop_going_module(AT + 0x1000).unwrap().is_empty());
        let text_now = text(&g, &going, "fake_b", 0x10);
        let mut p = patcher(&mut g, &going);
        let dropped = p.drop_going_module(AT).unwrap();
        assert_eq!(dropped.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), ["m1"]);
        assert_eq!(text(&g, &going, "fake_b", 0x10), text_now, "no text written");
        let reg = registry(&mut g).unwrap();
        assert!(reg.patches.is_empty() && reg.history.iter().any(|h| h.how == "module_unloaded"), "{reg:?}");
        assert!(patcher(&mut g, &going).patched_modules().unwrap().is_empty());
    }

    fn module(name: &str, addr: u64) -> LoadedModule {
        LoadedModule { name: name.into(), addr, state: 0, base: addr + 0x1000, text_size: 0x2000, symbols: SymbolTable::default() }
    }

    #[test]
    fn a_module_that_went_or_came_back_is_named() {
        let m = module("nfsd", 0xffff_ffff_c000_0000);
        let id = m.identity();
        assert_eq!(vanished(&id, Some(&m)), None);
        assert_eq!(vanished(&id, None), Some("module_unloaded"));
        assert_eq!(vanished(&id, Some(&module("nfsd", 0xffff_ffff_c100_0000))), Some("module_reloaded"));
        assert!(m.holds_text(m.base, 0x2000) && !m.holds_text(m.base, 0x2001) && !m.holds_text(m.base - 1, 1));
        let k = SymbolTable::default();
        assert!(matches!(link_table(&k, &Modules::new()), Cow::Borrowed(_)));
    }
}

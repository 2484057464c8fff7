//! One C file of a diff, from its two builds to what it adds to the patch:
//! built before and after (or read from the object cache, keyed by the
//! file's own part of the diff, so a file built for a one-file patch is not
//! rebuilt for a cumulative one), compared, its carried functions checked
//! and bound to the kernel by this file's own neighbours, each proven to be
//! the kernel's code (run-pre), and its WARN sites turned into calls.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::checks::{bug_sites, carriable, same_shape, warn_cold_parts};
use super::compare::{compare, Why};
use super::view::View;
use super::{bind, emit, tree, DiffError, Refusal};
use crate::model::SymbolTable;
use crate::patch::build::PatchImage;
use crate::patch::manifest::{run_pre_digest, Replacement};

/// What every file of one build shares.
pub struct Ctx<'a> {
    /// What the fixed code replaces: the running kernel's image, or the
    /// module's `.ko` (run-pre and the binding of its own names read it).
    pub image: &'a dyn PatchImage,
    /// The names the replaced functions are looked up in: the kernel's, or
    /// the module's own (a `.ko`'s `symbols()` is the link check's table).
    pub symbols: &'a SymbolTable,
    /// The module the replaced functions are in (`None`: vmlinux).
    pub object: Option<String>,
    /// SRC, canonical.
    pub src: &'a Path,
    /// The diff applied to the fixed tree (only the files kept).
    pub diff: &'a Path,
    /// The C files of that diff.
    pub files: &'a [String],
    /// The kernel's `.config`.
    pub config: &'a str,
    /// The compiler.
    pub cc: &'a str,
    /// `--drop-warnings`.
    pub drop_warnings: bool,
    /// The fixed tree, once the diff is applied there.
    pub post_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("src", &self.src).field("diff", &self.diff).field("files", &self.files).finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    fn objects(&self) -> Vec<String> {
        self.files.iter().map(|c| object_of(c)).collect()
    }

    /// The fixed tree with the diff applied (once per build).
    fn post(&mut self) -> Result<PathBuf, DiffError> {
        if let Some(p) = &self.post_dir {
            return Ok(p.clone());
        }
        let p = tree::post_apply(self.src, self.diff, self.files, &self.objects())?;
        self.post_dir = Some(p.clone());
        Ok(p)
    }
}

/// `fs/ext4/mballoc.o` of `fs/ext4/mballoc.c`.
pub fn object_of(c: &str) -> String {
    format!("{}.o", c.trim_end_matches(".c"))
}

/// What one file adds to the patch.
#[derive(Debug)]
pub struct Unit {
    /// The C file.
    pub file: String,
    /// The unfixed build.
    pub pre: Vec<u8>,
    /// The build the carried code is emitted from (the fixed one, or its
    /// WARN-as-call build).
    pub post: Vec<u8>,
    /// Functions carried (changed, new, their `.cold` parts).
    pub carry: BTreeSet<String>,
    /// Data objects carried.
    pub keep: BTreeSet<String>,
    /// Functions replaced, run-pre data filled in (`new` = the file's name).
    pub replacements: Vec<Replacement>,
    /// New functions.
    pub new_functions: BTreeSet<String>,
    /// BUG sites kept, WARN sites still `ud2`.
    pub bugs: usize,
    /// WARN sites left as `ud2` (only with `--drop-warnings`).
    pub warns: usize,
    /// What the build said about this file (WARN sites as calls).
    pub notes: Vec<String>,
}


/// Object `key` from the cache, else built by `make`.
fn cached_or(src: &Path, key: &str, what: &str, object: &str, make: impl FnOnce() -> Result<Vec<u8>, DiffError>) -> Result<Vec<u8>, DiffError> {
    if let Some(b) = tree::cached(src, key) {
        eprintln!("vsplice: {object} {what}: cached");
        return Ok(b);
    }
    let b = make()?;
    tree::keep(src, key, &b);
    Ok(b)
}

/// Builds and compares `file` (`part`: its part of the diff) and works out
/// what it adds; `Ok(None)` when the fix does not change its code.
pub fn analyze(ctx: &mut Ctx<'_>, file: &str, part: &str) -> Result<Option<Unit>, DiffError> {
    let object = object_of(file);
    let one = std::slice::from_ref(&object);
    let c_text = std::fs::read(ctx.src.join(file)).map_err(|e| DiffError::Io { what: format!("reading {file}"), source: e })?;
    let fixed_input = [c_text.as_slice(), part.as_bytes()].concat();
    let (src, cc, config) = (ctx.src, ctx.cc, ctx.config);
    let pre_key = tree::cache_key("before", &object, &c_text, config, cc);
    let pre_bytes = cached_or(src, &pre_key, "before the fix", &object, || Ok(tree::build(src, cc, one, "before")?.swap_remove(0)))?;
    let post_key = tree::cache_key("after", &object, &fixed_input, config, cc);
    let post_bytes = match tree::cached(src, &post_key) {
        Some(b) => {
            eprintln!("vsplice: {object} after the fix: cached");
            b
        }
        None => {
            let dir = ctx.post()?;
            // The unfixed file built; the fixed one does not: say what is likely.
            let b = tree::build(&dir, cc, one, "after")
                .map_err(|e| match e {
                    DiffError::Kbuild(m) => DiffError::Kbuild(format!("the fixed file does not compile against SRC's unchanged headers (does the fix need a header change this diff does not carry?): {m}")),
                    e => e,
                })?
                .swap_remove(0);
            tree::keep(src, &post_key, &b);
            b
        }
    };
    let pre = View::parse(&pre_bytes).map_err(DiffError::Object)?;
    let post = View::parse(&post_bytes).map_err(DiffError::Object)?;
    let cmp = compare(&pre, &post);
    eprintln!(
        "vsplice: {file}: {} function(s) changed, {} new, {} removed; data: {} changed, {} new",
        cmp.changed.len(),
        cmp.new_functions.len(),
        cmp.removed.len(),
        cmp.data_changed.len() + cmp.rodata_changed.len(),
        cmp.new_data.len()
    );
    if let Some(d) = cmp.data_changed.iter().next() {
        return Err(DiffError::refused(Refusal::DataChanged, d, "the initial value of existing writable data changed; the running kernel's copy has lived since boot and is not re-initialized"));
    }
    if cmp.changed.is_empty() && cmp.new_functions.is_empty() {
        return Ok(None);
    }
    // What to carry: changed and new functions, each with its `.cold` part.
    let mut carry: BTreeSet<String> = cmp.changed.keys().chain(&cmp.new_functions).cloned().collect();
    for n in carry.clone() {
        let base = n.strip_suffix(".cold").unwrap_or(&n).to_owned();
        for part in [base.clone(), format!("{base}.cold")] {
            if post.items.get(&part).is_some_and(|i| i.func) {
                carry.insert(part);
            }
        }
    }
    carriable(&post, &carry)?;
    let syms = ctx.symbols;
    let mut replacements = Vec::new();
    for n in carry.iter().filter(|n| pre.items.get(*n).is_some_and(|i| i.func)) {
        let pi = &pre.items[n];
        let qualifier = bind::qualifier(n, !pi.global, &pre, syms)?;
        let in_what = ctx.object.as_ref().map_or_else(|| "vmlinux".to_owned(), |m| format!("module {m}"));
        let sym = syms.resolve(n, qualifier.as_ref()).map_err(|e| DiffError::refused(Refusal::FailedToFind, n, format!("{e} (looked up in {in_what})")))?;
        bind::run_pre(pi, sym, ctx.image)?;
        let bytes = ctx.image.bytes_at(sym.addr, sym.size).ok_or_else(|| DiffError::refused(Refusal::SourceMismatch, n, format!("its bytes are not in {in_what}")))?;
        let tolerate = ctx.image.masks(sym.addr, sym.size);
        let why = cmp.changed.get(n).map_or_else(|| "carried with its changed hot or cold part".to_owned(), Why::to_string);
        eprintln!("vsplice:   replace {n}{}: {why}", qualifier.as_ref().map(|q| format!(" ({q})")).unwrap_or_default());
        replacements.push(Replacement {
            old: n.clone(),
            qualifier,
            new: n.clone(),
            old_addr: sym.addr,
            size: sym.size,
            sha256: run_pre_digest(bytes, &tolerate),
            tolerate,
            why: Some(why),
            object: ctx.object.clone(),
        });
    }
    for n in &cmp.new_functions {
        eprintln!("vsplice:   new {n}");
    }
    let keep: BTreeSet<String> = cmp.new_data.iter().chain(&cmp.rodata_changed).cloned().collect();
    let policy = if ctx.drop_warnings { "keep_bug drop_warn" } else { "keep_bug" };
    // Emitted alone once: exception tables are refused here, sites counted.
    let em = emit::emit(&post, &carry, &keep, policy)?;
    let (bugs, warns) = bug_sites(&em.object);
    let mut unit = Unit { file: file.to_owned(), pre: Vec::new(), post: Vec::new(), carry, keep, replacements, new_functions: cmp.new_functions.clone(), bugs, warns, notes: Vec::new() };
    if warns > 0 && !ctx.drop_warnings {
        let WarnBuild { bytes, carry, keep, note } = warn_as_calls(ctx, &object, &fixed_input, &post, &unit.carry, &unit.keep, warns)?;
        unit.post = bytes;
        unit.carry = carry;
        unit.keep = keep;
        unit.notes.push(note);
        unit.warns = 0;
    } else {
        unit.post = post_bytes.clone();
    }
    unit.pre = pre_bytes.clone();
    Ok(Some(unit))
}

/// The WARN-as-call build and what to carry from it.
struct WarnBuild {
    bytes: Vec<u8>,
    carry: BTreeSet<String>,
    keep: BTreeSet<String>,
    note: String,
}

/// WARN as a call: the fixed file once more, WARN() compiled to a call of
/// the kernel's `__warn()`, which needs nothing registered. Returns that
/// build, the data to carry from it and a note.
fn warn_as_calls(ctx: &mut Ctx<'_>, object: &str, fixed_input: &[u8], post: &View<'_>, carry: &BTreeSet<String>, keep: &BTreeSet<String>, warns: usize) -> Result<WarnBuild, DiffError> {
    let names: Vec<&str> = carry.iter().map(String::as_str).collect();
    let no = |why: String| DiffError::refused(Refusal::WarnSite, &names.join(" "), format!("{why}; --drop-warnings accepts losing its {warns} WARN site(s)"));
    let header = tree::warn_as_call_header(ctx.src)?.ok_or_else(|| no("SRC's asm/bug.h has no __WARN_FLAGS to turn into a call".into()))?;
    let extra = format!("-include {}", header.display());
    let key = tree::cache_key("after-warn-call", object, fixed_input, ctx.config, ctx.cc);
    let one = [object.to_owned()];
    let warn_bytes = match tree::cached(ctx.src, &key) {
        Some(b) => b,
        None => {
            let dir = ctx.post()?;
            let b = tree::build_with(&dir, ctx.cc, &extra, &one, "after (WARN as calls)")?.swap_remove(0);
            tree::keep(ctx.src, &key, &b);
            b
        }
    };
    let wv = View::parse(&warn_bytes).map_err(DiffError::Object)?;
    same_shape(post, &wv, carry).map_err(no)?;
    let carry: BTreeSet<String> = carry.iter().cloned().chain(warn_cold_parts(&wv, carry)).collect();
    let carry = &carry;
    let extra_data: BTreeSet<String> = wv.items.values().filter(|i| !i.func && !post.items.contains_key(&i.name)).map(|i| i.name.clone()).collect();
    let own_flags = carry.iter().filter_map(|f| wv.items.get(f)).flat_map(|i| &i.relocs).filter(|r| matches!(&r.target, super::view::Target::Sym { name, .. } if extra_data.contains(name))).count();
    let keep3: BTreeSet<String> = keep.iter().chain(&extra_data).cloned().collect();
    let policy = if ctx.drop_warnings { "keep_bug drop_warn" } else { "keep_bug" };
    let em = emit::emit(&wv, carry, &keep3, policy)?;
    let (_, w3) = bug_sites(&em.object);
    if w3 != 0 {
        return Err(no(format!("{w3} WARN site(s) remain as ud2 with WARN compiled as calls")));
    }
    let note = format!("{warns} WARN site(s) compiled as calls to the kernel's __warn() (reported as the bug table's WARN would be; once-only state is the patch's own: {own_flags} reference(s) to new once-flags)");
    eprintln!("vsplice: {note}");
    Ok(WarnBuild { bytes: warn_bytes, carry: carry.clone(), keep: keep3, note })
}

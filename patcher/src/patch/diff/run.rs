//! The `--diff` pipeline from end to end (progress on stderr): check the
//! inputs, build before and after, compare, refuse what cannot be carried,
//! bind, check run-pre, write and package the patch.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Instant;

use object::{Object as _, ObjectSection, ObjectSymbol, RelocationTarget, SymbolSection};

use super::compare::{compare, Why};
use super::view::View;
use super::{bind, emit, tree, DiffError, DiffOptions};
use crate::model::TargetKind;
use crate::patch::build::{package, BuildError, Packaging, PatchImage};
use crate::patch::format::PatchFile;
use crate::patch::linux_image::LinuxImage;
use crate::patch::manifest::{run_pre_digest, BuildInfo, Replacement, SymbolAlias};

fn refused(cause: &'static str, symbol: &str, why: impl Into<String>) -> DiffError {
    DiffError::Refused { cause, symbol: symbol.to_owned(), why: why.into() }
}

/// `6.1.192` out of `Linux version 6.1.0-55-cloud-amd64 (…) … Debian 6.1.192-1 (…)`:
/// Debian's banner names the upstream version after "Debian "; others after "Linux version ".
fn banner_version(banner: &str) -> Option<String> {
    // The last "Debian " (the first one may be the compiler's).
    let after = banner.rsplit_once("Debian ").map(|(_, a)| a).or_else(|| banner.strip_prefix("Linux version "))?;
    let v: String = after.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    (!v.is_empty()).then_some(v)
}

/// Sorts the diff's files: C files to rebuild, or a refusal.
fn c_files(files: &[String]) -> Result<Vec<String>, DiffError> {
    let (c, rest): (Vec<&String>, Vec<&String>) = files.iter().partition(|f| f.ends_with(".c"));
    let headers: Vec<&String> = rest.iter().copied().filter(|f| f.ends_with(".h")).collect();
    if let Some(asm) = rest.iter().find(|f| f.ends_with(".S")) {
        return Err(refused("assembly", asm, "assembly source: its functions cannot be compared or replaced"));
    }
    if let Some(other) = rest.iter().find(|f| !f.ends_with(".h")) {
        return Err(DiffError::UnsupportedFile(other.to_string()));
    }
    if c.is_empty() {
        let list: Vec<&str> = headers.iter().map(|s| s.as_str()).collect();
        return Err(DiffError::HeadersOnly(list.join(", ")));
    }
    if let Some(h) = headers.first() {
        return Err(refused("header_changed", h, "a changed header can change code or structure layouts in files the diff does not touch; only C files are rebuilt"));
    }
    Ok(c.into_iter().cloned().collect())
}

/// Functions with an fentry call at their start (`__mcount_loc`).
fn traced(v: &View<'_>) -> HashSet<(object::SectionIndex, u64)> {
    let mut out = HashSet::new();
    if let Some(s) = v.file.section_by_name("__mcount_loc") {
        for (_, r) in s.relocations() {
            let RelocationTarget::Symbol(si) = r.target() else { continue };
            if let Ok(sym) = v.file.symbol_by_index(si) {
                if let SymbolSection::Section(sec) = sym.section() {
                    out.insert((sec, (sym.address() as i64).wrapping_add(r.addend()) as u64));
                }
            }
        }
    }
    out
}

/// Refuses carried functions a live patch cannot replace: `__init`/exit
/// code (`init_code`), code outside `.text*` (noinstr, entry) or without an
/// fentry call (`notrace`).
fn carriable(post: &View<'_>, carry: &BTreeSet<String>) -> Result<(), DiffError> {
    let fentry = traced(post);
    for n in carry {
        let it = post.items.get(n).ok_or_else(|| DiffError::Object(format!("{n} is not in the fixed build")))?;
        if it.section_name.starts_with(".init") || it.section_name.starts_with(".exit") {
            return Err(refused("init_code", n, format!("it is in {} (runs once at boot or unload; a live patch cannot re-run it)", it.section_name)));
        }
        if !it.section_name.starts_with(".text") {
            return Err(refused("notrace", n, format!("it is in {} (entry/noinstr code, not patchable safely)", it.section_name)));
        }
        if !n.ends_with(".cold") && !fentry.contains(&(it.section, it.addr)) {
            return Err(refused("notrace", n, "it has no fentry call (notrace): the kernel does not expect it to be traced or patched"));
        }
    }
    Ok(())
}

/// BUG and WARN sites (`__bug_table` flags) in the emitted object.
fn bug_sites(object: &[u8]) -> (usize, usize) {
    let Ok(f) = object::read::elf::ElfFile64::<object::Endianness>::parse(object) else { return (0, 0) };
    let Some(d) = f.section_by_name("__bug_table").and_then(|s| s.data().ok().map(<[u8]>::to_vec)) else { return (0, 0) };
    let (mut bugs, mut warns) = (0, 0);
    for e in d.chunks_exact(12) {
        if u16::from_le_bytes([e[10], e[11]]) & 1 != 0 {
            warns += 1;
        } else {
            bugs += 1;
        }
    }
    (bugs, warns)
}

/// The WARN-as-call build must be the fixed build but for its WARN sites:
/// the carried functions there, calling only functions that the fixed build
/// has out of line too (nothing inlined differently), and every data object
/// the carried functions use either new (carried) or, when named as in the
/// fixed build, the same object (same section and size, used by the same
/// function there): `__COUNTER__`-numbered names shift in this build.
fn same_shape(post: &View<'_>, warn: &View<'_>, carry: &BTreeSet<String>) -> Result<(), String> {
    for f in carry {
        if !warn.items.get(f).is_some_and(|i| i.func) {
            return Err(format!("with WARN as calls `{f}` is inlined differently"));
        }
        let calls = warn.items[f].relocs.iter().filter_map(|r| match &r.target {
            super::view::Target::Sym { name, .. } if warn.items.get(name).is_some_and(|i| i.func) => Some(name.clone()),
            _ => None,
        });
        for c in calls.collect::<BTreeSet<String>>() {
            if !post.items.get(&c).is_some_and(|i| i.func) {
                return Err(format!("with WARN as calls `{f}` calls `{c}`, which the fixed build inlines"));
            }
        }
    }
    let uses = |v: &View<'_>, f: &str| -> BTreeSet<String> {
        v.items.get(f).map(|i| i.relocs.iter().filter_map(|r| match &r.target {
            super::view::Target::Sym { name, .. } if v.items.get(name).is_some_and(|d| !d.func) => Some(name.clone()),
            _ => None,
        }).collect()).unwrap_or_default()
    };
    for f in carry {
        let before = uses(post, f);
        for d in uses(warn, f) {
            let (Some(w), Some(p)) = (warn.items.get(&d), post.items.get(&d)) else { continue };
            if w.size != p.size || w.section_name != p.section_name || !before.contains(&d) {
                return Err(format!("with WARN as calls `{f}` uses `{d}`, another object than the fixed build's of that name"));
            }
        }
    }
    Ok(())
}

/// Builds a live patch from `opts.diff` alone.
pub fn build_from_diff(opts: &DiffOptions) -> Result<PatchFile, DiffError> {
    let t0 = Instant::now();
    eprintln!("vsplice: reading the kernel image {}", opts.kernel.display());
    let image = LinuxImage::open(&opts.kernel).map_err(BuildError::from)?;
    let ver = tree::tree_version(&opts.source)?;
    if let Some(kv) = image.banner().and_then(banner_version) {
        if kv != ver {
            return Err(DiffError::NotSource(format!("{} is Linux {ver}, the kernel image is {kv}: not the running kernel's source", opts.source.display())));
        }
    }
    let cfg_path = opts.headers.join(".config");
    let config = std::fs::read_to_string(&cfg_path).map_err(|_| DiffError::NotSource(format!("{} has no .config: not a kernel headers tree", opts.headers.display())))?;
    let cc = tree::compiler(&config)?;
    let text = std::fs::read_to_string(&opts.diff).map_err(|e| DiffError::Io { what: format!("reading {}", opts.diff.display()), source: e })?;
    let files = tree::touched_files(&text);
    if files.is_empty() {
        return Err(DiffError::DoesNotApply(format!("{} is not a unified diff (no +++ lines)", opts.diff.display())));
    }
    let cs = c_files(&files)?;
    if cs.len() > 1 {
        return Err(refused("multiple_objects", &cs.join(" "), "the diff changes more than one C file; one object per patch for now"));
    }
    // One spelling of SRC: Kbuild rebuilds an object when the path differs.
    let src = opts.source.canonicalize().map_err(|e| DiffError::NotSource(format!("{}: {e}", opts.source.display())))?;
    let _hold = tree::lock(&src)?;
    tree::apply(&src, &opts.diff, true)?;
    tree::prepare(&src, &config, &cc)?;
    let objects: Vec<String> = cs.iter().map(|c| format!("{}.o", c.trim_end_matches(".c"))).collect();
    let c_text = std::fs::read(src.join(&cs[0])).map_err(|e| DiffError::Io { what: format!("reading {}", cs[0]), source: e })?;
    let pre_key = tree::cache_key("before", &objects[0], &c_text, &config, &cc);
    let post_key = tree::cache_key("after", &objects[0], &[c_text.as_slice(), text.as_bytes()].concat(), &config, &cc);
    let pre_bytes = match tree::cached(&src, &pre_key) {
        Some(b) => {
            eprintln!("vsplice: {} before the fix: cached", objects[0]);
            b
        }
        None => {
            let b = tree::build(&src, &cc, &objects, "before")?.swap_remove(0);
            tree::keep(&src, &pre_key, &b);
            b
        }
    };
    let post_bytes = match tree::cached(&src, &post_key) {
        Some(b) => {
            eprintln!("vsplice: {} after the fix: cached", objects[0]);
            b
        }
        None => {
            let post_dir = tree::post_apply(&src, &opts.diff, &cs, &objects)?;
            let b = tree::build(&post_dir, &cc, &objects, "after")?.swap_remove(0);
            tree::keep(&src, &post_key, &b);
            b
        }
    };
    let (pre_bytes, post_bytes) = (&pre_bytes, &post_bytes);
    let pre = View::parse(pre_bytes).map_err(DiffError::Object)?;
    let post = View::parse(post_bytes).map_err(DiffError::Object)?;
    let cmp = compare(&pre, &post);
    eprintln!(
        "vsplice: {}: {} function(s) changed, {} new, {} removed; data: {} changed, {} new",
        cs[0],
        cmp.changed.len(),
        cmp.new_functions.len(),
        cmp.removed.len(),
        cmp.data_changed.len() + cmp.rodata_changed.len(),
        cmp.new_data.len()
    );
    if let Some(d) = cmp.data_changed.iter().next() {
        return Err(refused("data_changed", d, "the initial value of existing writable data changed; the running kernel's copy has lived since boot and is not re-initialized"));
    }
    if cmp.changed.is_empty() && cmp.new_functions.is_empty() {
        return Err(DiffError::NoChange);
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
    // vmlinux, or a module: then its own .ko is what run-pre and binding read.
    let ko = super::module::target_ko(&src, &cs[0], &config, opts.modules.as_deref(), &image)?;
    let img: &dyn PatchImage = ko.as_ref().map_or(&image as &dyn PatchImage, |k| k);
    let syms = ko.as_ref().map_or(image.symbols(), |k| &k.own);
    let mut replacements = Vec::new();
    for n in carry.iter().filter(|n| pre.items.get(*n).is_some_and(|i| i.func)) {
        let (pi, qi) = (&pre.items[n], &post.items[n]);
        let qualifier = bind::qualifier(n, !pi.global, &pre, syms)?;
        let in_what = ko.as_ref().map_or_else(|| "vmlinux".to_owned(), |k| format!("module {}", k.name));
        let sym = syms.resolve(n, qualifier.as_ref()).map_err(|e| refused("failed_to_find", n, format!("{e} (looked up in {in_what})")))?;
        bind::run_pre(pi, sym, img)?;
        let bytes = img.bytes_at(sym.addr, sym.size).ok_or_else(|| refused("source_mismatch", n, format!("its bytes are not in {in_what}")))?;
        let tolerate = img.masks(sym.addr, sym.size);
        let why = cmp.changed.get(n).map_or_else(|| "carried with its changed hot or cold part".to_owned(), Why::to_string);
        eprintln!("vsplice:   replace {n}{}: {why}", qualifier.as_ref().map(|q| format!(" ({q})")).unwrap_or_default());
        let _ = qi;
        replacements.push(Replacement {
            old: n.clone(),
            qualifier,
            new: n.clone(),
            old_addr: sym.addr,
            size: sym.size,
            sha256: run_pre_digest(bytes, &tolerate),
            tolerate,
            why: Some(why),
            object: ko.as_ref().map(|k| k.name.clone()),
        });
    }
    for n in &cmp.new_functions {
        eprintln!("vsplice:   new {n}");
    }
    let keep: BTreeSet<String> = cmp.new_data.iter().chain(&cmp.rodata_changed).cloned().collect();
    let policy = if opts.drop_warnings { "keep_bug drop_warn" } else { "keep_bug" };
    let mut em = emit::emit(&post, &carry, &keep, policy)?;
    let (bugs, mut warns) = bug_sites(&em.object);
    let mut warn_note = None;
    if warns > 0 && !opts.drop_warnings {
        // WARN as a call: the fixed file once more, WARN() compiled to a call
        // of the kernel's __warn(), which needs nothing registered.
        let names: Vec<&str> = carry.iter().map(String::as_str).collect();
        let no = |why: String| refused("warn_site", &names.join(" "), format!("{why}; --drop-warnings accepts losing its {warns} WARN site(s)"));
        let header = tree::warn_as_call_header(&src)?.ok_or_else(|| no("SRC's asm/bug.h has no __WARN_FLAGS to turn into a call".into()))?;
        let extra = format!("-include {}", header.display());
        let key = tree::cache_key("after-warn-call", &objects[0], &[c_text.as_slice(), text.as_bytes()].concat(), &config, &cc);
        let warn_bytes = match tree::cached(&src, &key) {
            Some(b) => b,
            None => {
                let post_dir = tree::post_apply(&src, &opts.diff, &cs, &objects)?;
                let b = tree::build_with(&post_dir, &cc, &extra, &objects, "after (WARN as calls)")?.swap_remove(0);
                tree::keep(&src, &key, &b);
                b
            }
        };
        let wv = View::parse(&warn_bytes).map_err(DiffError::Object)?;
        same_shape(&post, &wv, &carry).map_err(no)?;
        let extra_data: BTreeSet<String> = wv.items.values().filter(|i| !i.func && !post.items.contains_key(&i.name)).map(|i| i.name.clone()).collect();
        let own_flags = carry.iter().filter_map(|f| wv.items.get(f)).flat_map(|i| &i.relocs).filter(|r| matches!(&r.target, super::view::Target::Sym { name, .. } if extra_data.contains(name))).count();
        let keep3: BTreeSet<String> = keep.iter().chain(&extra_data).cloned().collect();
        em = emit::emit(&wv, &carry, &keep3, policy)?;
        let (_, w3) = bug_sites(&em.object);
        if w3 != 0 {
            return Err(no(format!("{w3} WARN site(s) remain as ud2 with WARN compiled as calls")));
        }
        warn_note = Some(format!("{warns} WARN site(s) compiled as calls to the kernel's __warn() (reported as the bug table's WARN would be; once-only state is the patch's own: {own_flags} reference(s) to new once-flags)"));
        eprintln!("vsplice: {}", warn_note.as_deref().unwrap_or_default());
        warns = 0;
    }
    let mut symbols = Vec::new();
    let mut ko = ko;
    if let Some(k) = ko.as_mut() {
        let exports = super::module::read_symvers(&opts.headers)?;
        let (aliases, table) = super::ko::bind_externals(&em.externals, &pre, k, image.symbols(), &exports)?;
        symbols = aliases;
        k.link_table = table;
    }
    for (name, ext) in em.externals.iter().filter(|_| ko.is_none()) {
        if let Some(q) = bind::qualifier(name, ext.local && pre.items.contains_key(name), &pre, image.symbols())? {
            symbols.push(SymbolAlias { name: name.clone(), target: name.clone(), qualifier: Some(q), object: None });
        }
    }
    let name = opts.name.clone().unwrap_or_else(|| stem(&opts.diff));
    let build = BuildInfo {
        source: format!("{} + {}", src.display(), opts.diff.display()),
        compiler: format!("kbuild: make CC={cc} CFLAGS_<object>=\"{}\" {}", tree::KCFLAGS, objects.join(" ")),
        flags: em.notes.iter().cloned().chain([format!("{bugs} BUG site(s) kept as ud2, {warns} WARN site(s) as ud2")]).chain(warn_note).collect(),
    };
    let pack_img: &dyn PatchImage = ko.as_ref().map_or(&image as &dyn PatchImage, |k| k);
    let mut p = package(Packaging { object: em.object, replacements, symbols, kind: TargetKind::Linux, name: &name, cumulative: opts.cumulative, build, link_check: true }, pack_img)?;
    p.manifest.info = opts.info.clone();
    p.to_bytes().map_err(|e| DiffError::Build(BuildError::Format(e)))?;
    eprintln!("vsplice: patch {name} built in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(p)
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "fix".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// gcc with fentry calls listed in `__mcount_loc`, as Kbuild builds.
    fn cc_traced(src: &str) -> Option<Vec<u8>> {
        let dir = std::env::temp_dir().join(format!("vsplice-carry-{}-{}", std::process::id(), crate::patch::build::unique()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("t.c"), src).ok()?;
        let out = std::process::Command::new("gcc")
            .args(["-O2", "-c", "-fno-pic", "-mcmodel=kernel", "-pg", "-mfentry", "-mrecord-mcount", "-ffunction-sections", "-fdata-sections", "t.c", "-o", "t.o"])
            .current_dir(&dir)
            .output();
        let obj = match out {
            Ok(o) if o.status.success() => std::fs::read(dir.join("t.o")).ok(),
            _ => {
                eprintln!("SKIP: gcc with -mrecord-mcount not available");
                None
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        obj
    }

    #[test]
    fn init_and_notrace_functions_are_refused_by_name() {
        let src = "int plain(int x) { return x + 1; }\n\
            __attribute__((section(\".init.text\"))) int setup(int x) { return x * 2; }\n\
            __attribute__((no_instrument_function)) int quiet(int x) { return x - 3; }\n\
            __attribute__((section(\".noinstr.text\"))) int entry(int x) { return x ^ 5; }\n";
        let Some(obj) = cc_traced(src) else { return };
        let v = View::parse(&obj).unwrap();
        let set = |n: &str| [n.to_owned()].into_iter().collect::<BTreeSet<String>>();
        assert!(carriable(&v, &set("plain")).is_ok());
        let cause = |n: &str| carriable(&v, &set(n)).err().map(|e| (e.cause(), e.to_string()));
        let (c, msg) = cause("setup").unwrap();
        assert_eq!(c, "init_code");
        assert!(msg.contains("`setup`"), "{msg}");
        assert_eq!(cause("quiet").unwrap().0, "notrace");
        assert_eq!(cause("entry").unwrap().0, "notrace");
    }

    #[test]
    fn the_warn_as_call_build_must_inline_alike() {
        let a = "static int lim = 3;\n__attribute__((noinline)) static int h(int x) { return x + lim; }\nint f(int x) { return h(x) * 2; }\nvoid s(int v) { lim = v; }\n";
        // h inlined into f: f calls nothing out of line the other build has.
        let b = a.replace("__attribute__((noinline)) static int h", "static inline int h");
        let (Some(pa), Some(pb)) = (cc_traced(a), cc_traced(&b)) else { return };
        let (va, vb) = (View::parse(&pa).unwrap(), View::parse(&pb).unwrap());
        let f: BTreeSet<String> = ["f".to_owned()].into_iter().collect();
        assert!(same_shape(&va, &va, &f).is_ok());
        // The other way round: f calls h, which the fixed build inlined.
        let e = same_shape(&vb, &va, &f).unwrap_err();
        assert!(e.contains("`h`"), "{e}");
        let gone: BTreeSet<String> = ["nope".to_owned()].into_iter().collect();
        assert!(same_shape(&va, &va, &gone).is_err());
    }

    #[test]
    fn debian_banners_name_the_upstream_version() {
        let b = "Linux version 6.1.0-55-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-1 (2026-11-06)";
        assert_eq!(banner_version(b).as_deref(), Some("6.1.192"));
        assert_eq!(banner_version("Linux version 6.9.1 (x@y) #1").as_deref(), Some("6.9.1"));
    }

    #[test]
    fn diffs_are_sorted_into_c_files_or_refused() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(c_files(&v(&["fs/a.c"])).unwrap_or_default(), ["fs/a.c"]);
        let cause = |s: &[&str]| c_files(&v(s)).err().map(|e| e.cause());
        assert_eq!(cause(&["include/x.h"]), Some("headers_only"));
        assert_eq!(cause(&["fs/a.c", "fs/a.h"]), Some("header_changed"));
        assert_eq!(cause(&["arch/x86/entry/entry_64.S"]), Some("assembly"));
        assert_eq!(cause(&["fs/Kconfig"]), Some("unsupported_file"));
    }
}

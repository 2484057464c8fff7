//! The `--diff` pipeline from end to end (progress on stderr): check the
//! inputs, build before and after, compare, refuse what cannot be carried,
//! bind, check run-pre, write and package the patch. Every C file of the
//! diff is one [`unit`]; all go into one object and one manifest. A file's
//! refusal refuses the patch, naming the file, unless `--skip-refused`
//! leaves the file out (listed in the manifest's `build.left_out`).

use std::path::Path;
use std::time::Instant;

use super::ko::KoImage;
use super::view::View;
use super::{bind, emit, split, tree, unit, DiffError, DiffOptions, Refusal};
use crate::model::TargetKind;
use crate::patch::build::{package, BuildError, Packaging, PatchImage};
use crate::patch::format::PatchFile;
use crate::patch::linux_image::LinuxImage;
use crate::patch::manifest::{BuildInfo, LeftOut, SymbolAlias};


/// `6.1.192` out of `Linux version 6.1.0-55-cloud-amd64 (…) … Debian 6.1.192-1 (…)`:
/// Debian's banner names the upstream version after "Debian "; others after "Linux version ".
fn banner_version(banner: &str) -> Option<String> {
    // The last "Debian " (the first one may be the compiler's).
    let after = banner.rsplit_once("Debian ").map(|(_, a)| a).or_else(|| banner.strip_prefix("Linux version "))?;
    let v: String = after.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    (!v.is_empty()).then_some(v)
}

/// A file the build leaves out (`--skip-refused`), from its refusal.
fn left_out(file: &str, e: &DiffError) -> LeftOut {
    let symbol = match e {
        DiffError::Refused { symbol, .. } => Some(symbol.clone()),
        _ => None,
    };
    LeftOut { file: file.to_owned(), cause: e.cause().to_owned(), symbol, why: e.to_string() }
}

/// Sorts the diff's files: C files to rebuild, or a refusal; with `skip`
/// the other files are left out (each with its cause) as long as a C file
/// remains.
fn c_files(files: &[String], skip: bool) -> Result<(Vec<String>, Vec<LeftOut>), DiffError> {
    let (c, rest): (Vec<&String>, Vec<&String>) = files.iter().partition(|f| f.ends_with(".c"));
    let headers: Vec<&String> = rest.iter().copied().filter(|f| f.ends_with(".h")).collect();
    let why = |f: &str| -> DiffError {
        if f.ends_with(".S") {
            DiffError::refused(Refusal::Assembly, f, "assembly source: its functions cannot be compared or replaced")
        } else if f.ends_with(".h") {
            DiffError::refused(Refusal::HeaderChanged, f, "a changed header can change code or structure layouts in files the diff does not touch; only C files are rebuilt")
        } else {
            DiffError::UnsupportedFile(f.to_owned())
        }
    };
    if c.is_empty() && !rest.iter().any(|f| f.ends_with(".S")) && rest.len() == headers.len() {
        let list: Vec<&str> = headers.iter().map(|s| s.as_str()).collect();
        return Err(DiffError::HeadersOnly(list.join(", ")));
    }
    let mut out = Vec::new();
    // Assembly first, then other files, then headers: the most telling cause.
    let mut others: Vec<&String> = rest.clone();
    others.sort_by_key(|f| if f.ends_with(".S") { 0 } else if f.ends_with(".h") { 2 } else { 1 });
    for f in others {
        let e = why(f);
        if !skip || c.is_empty() {
            return Err(e);
        }
        out.push(left_out(f, &e));
    }
    Ok((c.into_iter().cloned().collect(), out))
}

/// A file's refusal made to name the file when the diff has several.
fn naming(file: &str, many: bool, e: DiffError) -> DiffError {
    if !many {
        return e;
    }
    match e {
        DiffError::Refused { cause, symbol, why } => DiffError::Refused { cause, symbol: format!("{file}: {symbol}"), why },
        DiffError::Kbuild(m) => DiffError::Kbuild(format!("{file}: {m}")),
        DiffError::Object(m) => DiffError::Object(format!("{file}: {m}")),
        other => other,
    }
}

/// Errors one file can have without the whole build failing (`--skip-refused`).
fn file_level(e: &DiffError) -> bool {
    matches!(e, DiffError::Refused { .. } | DiffError::Kbuild(_) | DiffError::Object(_))
}

/// vmlinux (`None`) or the one module the diff's C files are built into
/// (its `.ko`). A module's fix is built from one C file for now: in a diff
/// of several files, a module's file is refused `module_multi_file` (left
/// out with `--skip-refused`).
fn target_object<'k>(src: &Path, cs: &mut Vec<String>, skipped: &mut Vec<LeftOut>, config: &str, opts: &DiffOptions, image: &'k LinuxImage) -> Result<Option<KoImage<'k>>, DiffError> {
    if cs.len() > 1 {
        for f in cs.clone() {
            // A file Kbuild's Makefile does not place is one file's refusal.
            let placed = match super::module::module_of(src, &f, config) {
                Err(e) if opts.skip_refused && file_level(&e) => {
                    eprintln!("vsplice: {f} left out [{}]: {e}", e.cause());
                    skipped.push(left_out(&f, &e));
                    cs.retain(|c| c != &f);
                    continue;
                }
                other => other?,
            };
            if let Some(m) = placed {
                let e = DiffError::refused(Refusal::ModuleMultiFile, &f, format!("{f} is built into module {m}; a module's fix is built from one C file per patch for now (split the diff)"));
                if !opts.skip_refused {
                    return Err(e);
                }
                eprintln!("vsplice: {f} left out [{}]: {e}", e.cause());
                skipped.push(left_out(&f, &e));
                cs.retain(|c| c != &f);
            }
        }
        return Ok(None);
    }
    match cs.first() {
        Some(f) => super::module::target_ko(src, f, config, opts.modules.as_deref(), image),
        None => Ok(None),
    }
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
    let (mut cs, mut skipped) = c_files(&files, opts.skip_refused)?;
    // One spelling of SRC: Kbuild rebuilds an object when the path differs.
    let src = opts.source.canonicalize().map_err(|e| DiffError::NotSource(format!("{}: {e}", opts.source.display())))?;
    let _hold = tree::lock(&src)?;
    tree::apply(&src, &opts.diff, true)?;
    tree::prepare(&src, &config, &cc)?;
    let parts = split::per_file(&text);
    // The fixed tree gets only the C files built (a left-out header must not
    // change them); written next to the object cache.
    let kept_diff = if skipped.is_empty() { opts.diff.clone() } else { tree::write_side_file(&src, "kept.patch", split::only(&parts, &cs).as_bytes())? };
    let many = cs.len() > 1;
    let mut ko = target_object(&src, &mut cs, &mut skipped, &config, opts, &image)?;
    let mut units = Vec::new();
    let mut unchanged = Vec::new();
    {
        let files_now = cs.clone();
        let img: &dyn PatchImage = ko.as_ref().map_or(&image as &dyn PatchImage, |k| k);
        let object = ko.as_ref().map(|k| k.name.clone());
        let symbols = ko.as_ref().map_or(image.symbols(), |k| &k.own);
        let mut ctx = unit::Ctx { image: img, symbols, object, src: &src, diff: &kept_diff, files: &files_now, config: &config, cc: &cc, drop_warnings: opts.drop_warnings, post_dir: None };
        for f in &files_now {
            let part: String = parts.iter().filter(|p| &p.file == f).map(|p| p.text.as_str()).collect();
            match unit::analyze(&mut ctx, f, &part) {
                Ok(Some(u)) => units.push(u),
                Ok(None) => unchanged.push(f.clone()),
                Err(e) if opts.skip_refused && file_level(&e) => {
                    eprintln!("vsplice: {f} left out [{}]: {e}", e.cause());
                    skipped.push(left_out(f, &e));
                    cs.retain(|c| c != f);
                }
                Err(e) => return Err(naming(f, many, e)),
            }
        }
    }
    if units.is_empty() {
        if let Some(first) = skipped.iter().find(|l| l.file.ends_with(".c")) {
            let list: Vec<String> = skipped.iter().map(|l| format!("{} [{}]", l.file, l.cause)).collect();
            return Err(DiffError::refused(Refusal::AllRefused, &first.file, format!("every C file of the diff was refused: {}", list.join(", "))));
        }
        return Err(DiffError::NoChange);
    }
    let views: Vec<View<'_>> = units.iter().map(|u| View::parse(&u.post)).collect::<Result<_, _>>().map_err(DiffError::Object)?;
    let pres: Vec<View<'_>> = units.iter().map(|u| View::parse(&u.pre)).collect::<Result<_, _>>().map_err(DiffError::Object)?;
    let policy = if opts.drop_warnings { "keep_bug drop_warn" } else { "keep_bug" };
    let em_parts: Vec<emit::Part<'_, '_>> = units.iter().zip(&views).map(|(u, v)| emit::Part { post: v, carry: &u.carry, keep_data: &u.keep }).collect();
    let (object, per) = emit::emit_parts(&em_parts, policy)?;
    let syms = image.symbols();
    let (mut symbols, mut replacements, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bugs, mut warns) = (0, 0);
    for ((u, e), pre) in units.iter().zip(&per).zip(&pres) {
        if let Some(k) = ko.as_mut() {
            // A module's fix is one file (checked above): its names bind to
            // the module, to another module's exports, or to vmlinux.
            let exports = super::module::read_symvers(&opts.headers)?;
            let (aliases, table) = super::ko::bind_externals(&e.externals, pre, k, image.symbols(), &exports)?;
            symbols.extend(aliases);
            k.link_table = table;
        } else {
            for (name, ext) in &e.externals {
                let target = e.renamed.get(name).unwrap_or(name);
                let q = bind::qualifier(target, ext.local && pre.items.contains_key(target), pre, syms).map_err(|x| naming(&u.file, many, x))?;
                if q.is_some() || target != name {
                    symbols.push(SymbolAlias { name: name.clone(), target: target.clone(), qualifier: q, object: None });
                }
            }
        }
        for r in &u.replacements {
            let mut r = r.clone();
            if let Some((out, _)) = e.renamed.iter().find(|(_, orig)| **orig == r.new) {
                r.new = out.clone();
            }
            replacements.push(r);
        }
        let prefix = if many { format!("{}: ", u.file) } else { String::new() };
        notes.extend(e.notes.iter().chain(&u.notes).map(|n| format!("{prefix}{n}")));
        bugs += u.bugs;
        warns += u.warns;
    }
    if replacements.is_empty() {
        // New functions alone: nothing in the kernel would ever call them.
        let new: Vec<&str> = units.iter().flat_map(|u| u.new_functions.iter().map(String::as_str)).collect();
        return Err(DiffError::refused(Refusal::NoReplacement, &new.join(" "), "the fix only adds functions (no existing function's code changed), so a live patch would change nothing that runs"));
    }
    let name = opts.name.clone().unwrap_or_else(|| stem(&opts.diff));
    let objects: Vec<String> = units.iter().map(|u| unit::object_of(&u.file)).collect();
    for f in &unchanged {
        notes.push(format!("{f}: the fix compiles to the same code"));
    }
    let build = BuildInfo {
        source: format!("{} + {}", src.display(), opts.diff.display()),
        compiler: format!("kbuild: make CC={cc} CFLAGS_<object>=\"{}\" {}", tree::KCFLAGS, objects.join(" ")),
        flags: notes.into_iter().chain([format!("{bugs} BUG site(s) kept as ud2, {warns} WARN site(s) as ud2")]).collect(),
        left_out: skipped,
    };
    let pack_img: &dyn PatchImage = ko.as_ref().map_or(&image as &dyn PatchImage, |k| k);
    let mut p = package(Packaging { object, replacements, symbols, kind: TargetKind::Linux, name: &name, cumulative: opts.cumulative, build, link_check: true }, pack_img)?;
    p.manifest.info = opts.info.clone();
    p.to_bytes().map_err(|e| DiffError::Build(BuildError::Format(e)))?;
    eprintln!("vsplice: patch {name} built in {:.1} s ({} file(s), {} left out)", t0.elapsed().as_secs_f64(), units.len(), p.manifest.build.left_out.len());
    Ok(p)
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "fix".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debian_banners_name_the_upstream_version() {
        let b = "Linux version 6.1.0-55-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-1 (2026-11-06)";
        assert_eq!(banner_version(b).as_deref(), Some("6.1.192"));
        assert_eq!(banner_version("Linux version 6.9.1 (x@y) #1").as_deref(), Some("6.9.1"));
    }

    #[test]
    fn diffs_are_sorted_into_c_files_or_refused() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(c_files(&v(&["fs/a.c"]), false).unwrap().0, ["fs/a.c"]);
        assert_eq!(c_files(&v(&["fs/a.c", "fs/b.c"]), false).unwrap().0, ["fs/a.c", "fs/b.c"]);
        let cause = |s: &[&str]| c_files(&v(s), false).err().map(|e| e.cause());
        assert_eq!(cause(&["include/x.h"]), Some("headers_only"));
        assert_eq!(cause(&["fs/a.c", "fs/a.h"]), Some("header_changed"));
        assert_eq!(cause(&["arch/x86/entry/entry_64.S"]), Some("assembly"));
        assert_eq!(cause(&["fs/Kconfig"]), Some("unsupported_file"));
        // --skip-refused: what is not C is left out, each with its cause,
        // as long as a C file remains.
        let (c, out) = c_files(&v(&["fs/a.c", "fs/a.h", "arch/x86/lib/x.S", "fs/Kconfig"]), true).unwrap();
        assert_eq!(c, ["fs/a.c"]);
        let causes: Vec<(&str, &str)> = out.iter().map(|l| (l.file.as_str(), l.cause.as_str())).collect();
        assert_eq!(causes, [("arch/x86/lib/x.S", "assembly"), ("fs/Kconfig", "unsupported_file"), ("fs/a.h", "header_changed")]);
        assert_eq!(c_files(&v(&["include/x.h"]), true).err().map(|e| e.cause()), Some("headers_only"));
        assert_eq!(c_files(&v(&["include/x.h", "x.S"]), true).err().map(|e| e.cause()), Some("assembly"));
    }

    #[test]
    fn a_refusal_names_its_file_when_the_diff_has_several() {
        let e = || DiffError::refused(Refusal::ExTable, "f", "why");
        assert_eq!(naming("fs/a.c", false, e()).to_string(), "`f`: why");
        let named = naming("fs/a.c", true, e());
        assert_eq!((named.cause(), named.to_string().as_str()), ("ex_table", "`fs/a.c: f`: why"));
        assert!(naming("fs/a.c", true, DiffError::Kbuild("make failed".into())).to_string().starts_with("fs/a.c: "));
        assert!(file_level(&e()) && !file_level(&DiffError::NoCompiler("x".into())));
        let l = left_out("fs/a.c", &e());
        assert_eq!((l.cause.as_str(), l.symbol.as_deref()), ("ex_table", Some("f")));
    }
}

//! What a carried function must be: refusals of code a live patch cannot
//! replace (`init_code`, `notrace`), BUG/WARN site counts of an emitted
//! object, and the check that the WARN-as-call build inlines like the
//! fixed build.

use std::collections::{BTreeSet, HashSet};

use object::{Object as _, ObjectSection, ObjectSymbol, RelocationTarget, SymbolSection};

use super::view::View;
use super::{DiffError, Refusal};


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
pub fn carriable(post: &View<'_>, carry: &BTreeSet<String>) -> Result<(), DiffError> {
    let fentry = traced(post);
    for n in carry {
        let it = post.items.get(n).ok_or_else(|| DiffError::Object(format!("{n} is not in the fixed build")))?;
        if it.section_name.starts_with(".init") || it.section_name.starts_with(".exit") {
            return Err(DiffError::refused(Refusal::InitCode, n, format!("it is in {} (runs once at boot or unload; a live patch cannot re-run it)", it.section_name)));
        }
        if !it.section_name.starts_with(".text") {
            return Err(DiffError::refused(Refusal::Notrace, n, format!("it is in {} (entry/noinstr code, not patchable safely)", it.section_name)));
        }
        if !n.ends_with(".cold") && !fentry.contains(&(it.section, it.addr)) {
            return Err(DiffError::refused(Refusal::Notrace, n, "it has no fentry call (notrace): the kernel does not expect it to be traced or patched"));
        }
    }
    Ok(())
}

/// The `.cold` parts of carried functions that the WARN-as-call build has
/// (a call of `__warn()` on an unlikely path can make the compiler split
/// one off where the `ud2` build had none): carried too.
pub fn warn_cold_parts(warn: &View<'_>, carry: &BTreeSet<String>) -> BTreeSet<String> {
    carry.iter().map(|f| format!("{}.cold", f.strip_suffix(".cold").unwrap_or(f))).filter(|c| warn.items.get(c).is_some_and(|i| i.func)).collect()
}

/// BUG and WARN sites (`__bug_table` flags) in the emitted object.
pub fn bug_sites(object: &[u8]) -> (usize, usize) {
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
pub fn same_shape(post: &View<'_>, warn: &View<'_>, carry: &BTreeSet<String>) -> Result<(), String> {
    for f in carry {
        if !warn.items.get(f).is_some_and(|i| i.func) {
            return Err(format!("with WARN as calls `{f}` is inlined differently"));
        }
        let calls = warn.items[f].relocs.iter().filter_map(|r| match &r.target {
            super::view::Target::Sym { name, .. } if warn.items.get(name).is_some_and(|i| i.func) => Some(name.clone()),
            _ => None,
        });
        for c in calls.collect::<BTreeSet<String>>() {
            // A carried function's own `.cold` part, split off only in this
            // build, is carried with it (see [`warn_cold_parts`]).
            if c.strip_suffix(".cold").is_some_and(|base| carry.contains(base)) {
                continue;
            }
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
            // Once-flags are carried fresh whatever their number (emit.rs).
            if w.section_name == ".data.once" && p.section_name == ".data.once" {
                continue;
            }
            if w.size != p.size || w.section_name != p.section_name || !before.contains(&d) {
                return Err(format!("with WARN as calls `{f}` uses `{d}`, another object than the fixed build's of that name"));
            }
        }
    }
    Ok(())
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

    /// `mana_en.c` (-54 -> -55 corpus): the WARN-as-call build numbers the
    /// once-flags of `pr_*_once()` differently; they are carried fresh, so
    /// which flag a name means in the fixed build does not matter.
    #[test]
    fn once_flags_numbered_differently_are_the_same_shape() {
        let once = |fname: &str| format!("extern void ext(int);\nint {fname}(int x) {{ static char __attribute__((section(\".data.once\"))) done; if (!done) {{ done = 1; ext(x); }} return x; }}\n");
        let a = once("g") + &once("f");
        let b = once("f") + &once("g");
        let (Some(pa), Some(pb)) = (cc_traced(&a), cc_traced(&b)) else { return };
        let (va, vb) = (View::parse(&pa).unwrap(), View::parse(&pb).unwrap());
        let f: BTreeSet<String> = ["f".to_owned()].into_iter().collect();
        assert!(same_shape(&va, &vb, &f).is_ok(), "{:?}", same_shape(&va, &vb, &f));
    }
}

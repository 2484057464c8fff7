//! Unit tests of the patch object writer on small objects compiled by gcc
//! (skipped with a message when gcc is missing): only carried code and
//! what it needs is written, the rest is left to bind to the kernel, and
//! the result loads with the patch linker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use object::{Object as _, ObjectSection, ObjectSymbol};

use super::*;
use crate::model::{Symbol, SymbolKind, SymbolTable};
use crate::patch::diff::compare::tests::cc;
use crate::patch::link::Object;

const SRC: &str = r#"
extern int ext(int);
static int limit = 10;
static int counter;
__attribute__((noinline)) static int helper(int x) { return x > limit ? ext(x) : x + 1; }
__attribute__((noinline)) int user(int x) { counter++; return helper(x) + counter; }
const char *msg(void) { return "hello, world"; }
void set_limit(int l) { limit = l; }
"#;

fn sym(name: &str, addr: u64, kind: SymbolKind, local: bool) -> Symbol {
    Symbol { name: name.into(), addr, size: 16, kind, local, file: None, position: 0 }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn only_carried_code_is_written_and_the_rest_is_bound_to_the_kernel() {
    let Some(obj) = cc(SRC) else { return };
    let post = View::parse(&obj).unwrap();
    let e = emit(&post, &set(&["user"]), &BTreeSet::new(), "keep_bug").unwrap();
    let f = object::read::elf::ElfFile64::<object::Endianness>::parse(&*e.object).unwrap();
    let defined: Vec<String> = f.symbols().filter(|s| !s.is_undefined() && s.kind() == object::SymbolKind::Text).map(|s| s.name().unwrap().to_owned()).collect();
    assert_eq!(defined, ["user"], "only the carried function is defined");
    // helper (unchanged local), counter (existing data) come from the kernel.
    assert_eq!(e.externals.get("helper"), Some(&External { local: true, func: true }), "{:?}", e.externals);
    assert_eq!(e.externals.get("counter"), Some(&External { local: true, func: false }), "{:?}", e.externals);
    assert!(f.section_by_name(".bss.counter").is_none(), "existing data is not duplicated");
    assert_eq!(f.section_by_name(".vsplice.bug_policy").and_then(|s| s.data().ok()), Some(&b"keep_bug"[..]));
    // It loads: every relocation resolves against a kernel that has them.
    let k = 0xffff_ffff_8100_0000u64;
    let table = SymbolTable::new(vec![sym("helper", k, SymbolKind::Func, true), sym("counter", k + 0x10_0000, SymbolKind::Object, true)]);
    let o = Object::parse(&e.object).unwrap();
    let linked = o.link(k + 0x20_0000, k + 0x30_0000, &[], &table).unwrap();
    assert!(linked.imports.iter().any(|(n, a)| n == "helper" && *a == k), "{:?}", linked.imports);
    assert!(linked.symbols.contains_key("user"));
}

#[test]
fn new_data_and_strings_are_carried() {
    let Some(obj) = cc(SRC) else { return };
    let post = View::parse(&obj).unwrap();
    let e = emit(&post, &set(&["msg", "user"]), &set(&["counter"]), "keep_bug").unwrap();
    let f = object::read::elf::ElfFile64::<object::Endianness>::parse(&*e.object).unwrap();
    assert!(f.symbols().any(|s| s.name() == Ok("counter") && !s.is_undefined()), "new data is defined in the patch");
    assert!(!e.externals.contains_key("counter"));
    let strings = f.sections().filter(|s| s.name().is_ok_and(|n| n.starts_with(".rodata"))).any(|s| s.data().is_ok_and(|d| d.windows(12).any(|w| w == b"hello, world")));
    assert!(strings, "the string msg returns is carried");
}

#[test]
fn a_function_missing_from_the_build_is_an_error() {
    let Some(obj) = cc(SRC) else { return };
    let post = View::parse(&obj).unwrap();
    let e = emit(&post, &set(&["nope"]), &BTreeSet::new(), "").unwrap_err();
    assert_eq!(e.cause(), "bad_object");
}

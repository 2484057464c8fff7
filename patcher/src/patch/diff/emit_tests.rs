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

/// `fs/dcache.c`, `net/ipv4/igmp.c`, … of the -54 -> -55 corpus were
/// refused `bad_object` ("a reference into section .data.once has no
/// symbol to bind"): their changed functions print with `pr_*_once`.
#[test]
fn once_flags_are_carried_fresh() {
    const ONCE: &str = r#"
extern int printk(const char *, ...);
int warn(int x) {
    static char __attribute__((section(".data.once"))) __already_done;
    if (x > 3 && !__already_done) { __already_done = 1; printk("x is %d\n", x); }
    return x;
}
"#;
    let Some(obj) = cc(ONCE) else { return };
    let post = View::parse(&obj).unwrap();
    let e = emit(&post, &set(&["warn"]), &BTreeSet::new(), "keep_bug").unwrap();
    let f = object::read::elf::ElfFile64::<object::Endianness>::parse(&*e.object).unwrap();
    assert!(f.section_by_name(".data.once").is_some(), "the once-flag travels with the patch");
    assert!(e.externals.keys().all(|k| !k.contains("already_done")), "{:?}", e.externals);
    let k = 0xffff_ffff_8100_0000u64;
    let table = SymbolTable::new(vec![sym("printk", k, SymbolKind::Func, false)]);
    Object::parse(&e.object).unwrap().link(k + 0x20_0000, k + 0x30_0000, &[], &table).unwrap();
}

/// `drivers/hv/channel_mgmt.c`, `mlx4/srq.c`, `serial_core.c`, … of the
/// -54 -> -55 corpus were refused `ambiguous_local` for `__key.N`, the
/// lockdep key of `mutex_init()`: an empty struct without lockdep.
#[test]
fn an_empty_local_is_carried_not_bound() {
    const KEY: &str = r#"
struct lock_class_key { };
extern void __mutex_init(void *, const char *, struct lock_class_key *);
void init(void *m) { static struct lock_class_key __key; __mutex_init(m, "m", &__key); }
"#;
    let Some(obj) = cc(KEY) else { return };
    let post = View::parse(&obj).unwrap();
    let e = emit(&post, &set(&["init"]), &BTreeSet::new(), "keep_bug").unwrap();
    assert!(e.externals.keys().all(|k| !k.contains("__key")), "the empty key is not bound to one of the kernel's copies: {:?}", e.externals);
    let k = 0xffff_ffff_8100_0000u64;
    let table = SymbolTable::new(vec![sym("__mutex_init", k, SymbolKind::Func, false)]);
    Object::parse(&e.object).unwrap().link(k + 0x20_0000, k + 0x30_0000, &[], &table).unwrap();
}

#[test]
fn a_function_missing_from_the_build_is_an_error() {
    let Some(obj) = cc(SRC) else { return };
    let post = View::parse(&obj).unwrap();
    let e = emit(&post, &set(&["nope"]), &BTreeSet::new(), "").unwrap_err();
    assert_eq!(e.cause(), "bad_object");
}

#[test]
fn two_files_in_one_object_keep_their_own_names_apart() {
    // Two files that both define `user` and use a local `helper` and `counter`
    // of their own: one object, the second file's names renamed, its
    // locals bound to its own copies, each `user` linked to its own code.
    let Some(a) = cc(SRC) else { return };
    let Some(b) = cc(&SRC.replace("x + 1", "x + 2")) else { return };
    let (va, vb) = (View::parse(&a).unwrap(), View::parse(&b).unwrap());
    let (carry, none) = (set(&["user"]), BTreeSet::new());
    let parts = [Part { post: &va, carry: &carry, keep_data: &none }, Part { post: &vb, carry: &carry, keep_data: &none }];
    let (object, per) = emit_parts(&parts, "keep_bug").unwrap();
    assert!(per[0].renamed.is_empty(), "{:?}", per[0].renamed);
    assert_eq!(per[1].renamed.get("user.vsplice.1").map(String::as_str), Some("user"), "{:?}", per[1].renamed);
    assert_eq!(per[1].renamed.get("helper.vsplice.1").map(String::as_str), Some("helper"));
    assert!(per[0].externals.contains_key("helper") && per[1].externals.contains_key("helper.vsplice.1"));
    let f = object::read::elf::ElfFile64::<object::Endianness>::parse(&*object).unwrap();
    assert_eq!(f.sections().filter(|s| s.name() == Ok(".vsplice.bug_policy")).count(), 1);
    let k = 0xffff_ffff_8100_0000u64;
    let table = SymbolTable::new(vec![
        sym("helper", k, SymbolKind::Func, true),
        sym("helper", k + 0x100, SymbolKind::Func, true),
        sym("counter", k + 0x10_0000, SymbolKind::Object, true),
        sym("ext", k + 0x200, SymbolKind::Func, false),
    ]);
    let alias = |n: &str, t: &str, pos| crate::patch::manifest::SymbolAlias { name: n.into(), target: t.into(), qualifier: Some(crate::model::Qualifier::Position(pos)), object: None };
    let aliases = [alias("helper", "helper", 1), alias("helper.vsplice.1", "helper", 2), alias("counter.vsplice.1", "counter", 1)];
    let linked = Object::parse(&object).unwrap().link(k + 0x20_0000, k + 0x30_0000, &aliases, &table).unwrap();
    assert!(linked.symbols.contains_key("user") && linked.symbols.contains_key("user.vsplice.1"));
    assert_ne!(linked.symbols["user"], linked.symbols["user.vsplice.1"]);
    let import = |n: &str| linked.imports.iter().filter(|(i, _)| i == n).map(|(_, a)| *a).collect::<Vec<u64>>();
    assert_eq!((import("helper"), import("helper.vsplice.1")), (vec![k], vec![k + 0x100]), "each file's helper is its own: {:?}", linked.imports);
}

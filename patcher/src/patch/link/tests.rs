//! Loader tests on objects compiled by gcc with the test guest's flags:
//! fentry calls become NOPs, code and data land in their parts, calls to the
//! target resolve PC-relative, data addresses absolute, and refused sections
//! are refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{Object, NOP5};
use crate::patch::build::{compile, BuildOptions};
use crate::patch::manifest::SymbolAlias;
use crate::model::{Qualifier, Symbol, SymbolKind, SymbolTable};

const HELPER: u64 = 0xffff_ffff_8100_2000;
const CODE: u64 = 0xffff_ffff_8160_0000;
const DATA: u64 = 0xffff_ffff_8140_0000;

fn object(src: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("vsplice-loader-test-{}-{:x}", std::process::id(), src.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.c");
    std::fs::write(&path, src).unwrap();
    let (obj, _) = compile(&BuildOptions::testguest("/nonexistent", &path)).expect("gcc compiles the test patch");
    let _ = std::fs::remove_dir_all(&dir);
    obj
}

fn target() -> SymbolTable {
    let f = |name: &str, addr: u64, file: &str| Symbol {
        name: name.into(),
        addr,
        size: 16,
        kind: SymbolKind::Func,
        local: true,
        file: Some(file.into()),
        position: 0,
    };
    SymbolTable::new(vec![f("helper", HELPER, "a.c"), f("helper", HELPER + 0x100, "b.c")])
}

const SRC: &str = "typedef unsigned long u64;\nu64 helper(u64);\nu64 counter;\nstatic u64 k = 7;\nu64 f(u64 x) { counter++; k += x; return helper(x) + k; }\n";

#[test]
fn fentry_nops_code_data_and_target_calls() {
    let obj = object(SRC);
    let o = Object::parse(&obj).unwrap();
    assert!(o.defines_function("f"));
    assert!(o.layout().data_size >= 16, "counter and k in the data part");
    let alias = [SymbolAlias { name: "helper".into(), target: "helper".into(), qualifier: Some(Qualifier::File("b.c".into())), object: None }];
    let l = o.link(CODE, DATA, &alias, &target()).unwrap();
    let f = l.symbols["f"];
    assert_eq!(f, CODE, "f is the first code");
    assert_eq!(&l.code[..5], &NOP5, "the fentry call became a NOP");
    assert_eq!(l.fentry_nops, 1);
    // The call to helper (b.c) is PC-relative to it.
    let mut d = iced_x86::Decoder::with_ip(64, &l.code, CODE, iced_x86::DecoderOptions::NONE);
    let call = d.iter().find(|i| i.mnemonic() == iced_x86::Mnemonic::Call).expect("a call in f");
    assert_eq!(call.near_branch_target(), HELPER + 0x100);
    assert_eq!(l.imports, vec![("helper".to_owned(), HELPER + 0x100)]);
    let counter = l.symbols["counter"];
    assert!((DATA..DATA + l.data.len() as u64).contains(&counter));
    let k = l.symbols["k"];
    assert_eq!(l.data[(k - DATA) as usize], 7, "initialized data copied");
}

#[test]
fn ambiguous_and_unknown_targets_and_refused_sections() {
    let obj = object(SRC);
    let o = Object::parse(&obj).unwrap();
    let e = o.link(CODE, DATA, &[], &target()).unwrap_err();
    assert_eq!((e.cause(), e.reason()), ("bad_patch", "ambiguous_symbol"), "{e}");
    assert!(e.to_string().contains("file:a.c") && e.to_string().contains("file:b.c"), "{e}");
    let e = o.link(CODE, DATA, &[], &SymbolTable::new(vec![])).unwrap_err();
    assert_eq!((e.cause(), e.reason()), ("failed_to_find", "unknown_symbol"), "{e}");
    let ex = object("int fixup[2] __attribute__((section(\"__ex_table\"))) = {1, 2};\nint g(void) { return 1; }\n");
    let e = Object::parse(&ex).unwrap_err();
    assert_eq!((e.cause(), e.reason()), ("unsupported_section", "ex_table"), "{e}");
    let init = object("int __attribute__((section(\".init.text\"))) g(void) { return 1; }\n");
    assert_eq!(Object::parse(&init).unwrap_err().reason(), "init_exit");
    let e = Object::parse(b"not an object").unwrap_err();
    assert_eq!(e.reason(), "not_elf");
}

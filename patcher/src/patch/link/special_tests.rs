//! Unit tests of the special sections ([`super::special`]) on objects
//! compiled by gcc, with the tables written in assembly the way the kernel's
//! macros write them: alternatives applied or not per CPU feature (and
//! refused when the features are unknown), jump labels frozen per key state,
//! WARN sites turned into NOPs, BUG sites refused, return-thunk sites aimed
//! at the guest's thunk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use super::{LinkEnv, Linked, Object, UnknownEnv};
use crate::patch::build::{compile, BuildOptions};
use crate::model::{Symbol, SymbolKind, SymbolTable};

const CODE: u64 = 0xffff_ffff_8160_0000;
const DATA: u64 = 0xffff_ffff_8140_0000;
const HELPER: u64 = 0xffff_ffff_8100_2000;
const KEY: u64 = 0xffff_ffff_8200_0040;
const THUNK: u64 = 0xffff_ffff_8100_3000;

fn object(src: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("vsplice-special-test-{}-{:x}", std::process::id(), src.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.c");
    std::fs::write(&path, src).unwrap();
    let (obj, _) = compile(&BuildOptions::testguest("/nonexistent", &path)).expect("gcc compiles the test object");
    let _ = std::fs::remove_dir_all(&dir);
    obj
}

fn target() -> SymbolTable {
    let s = |name: &str, addr: u64, kind| Symbol { name: name.into(), addr, size: 16, kind, local: false, file: None, position: 0 };
    SymbolTable::new(vec![
        s("helper", HELPER, SymbolKind::Func),
        s("a_key", KEY, SymbolKind::Object),
        s("__x86_return_thunk", THUNK - 0x100, SymbolKind::Func),
    ])
}

struct Env {
    feature: Option<bool>,
    key: Option<bool>,
    thunk: Option<u64>,
    asked: Vec<u64>,
}

impl LinkEnv for Env {
    fn cpu_has(&self, bit: u16) -> Option<bool> {
        assert_eq!(bit, 3 * 32 + 5, "the feature bit of the entry");
        self.feature
    }
    fn key_enabled(&mut self, addr: u64) -> Option<bool> {
        self.asked.push(addr);
        self.key
    }
    fn return_thunk(&self) -> Option<u64> {
        self.thunk
    }
}

fn env(feature: Option<bool>, key: Option<bool>) -> Env {
    Env { feature, key, thunk: None, asked: Vec::new() }
}

/// Decoded instructions of function `f` (up to its first `ret`/`jmp` to the thunk).
fn insns(l: &Linked, f: &str) -> Vec<iced_x86::Instruction> {
    let at = l.symbols[f];
    let code = &l.code[(at - l.code_addr) as usize..];
    Decoder::with_ip(64, code, at, DecoderOptions::NONE).into_iter().take(12).collect()
}

const ALT: &str = r#"
void helper(void);
void f(void)
{
	asm volatile("1: .byte 0x90, 0x90, 0x90, 0x90, 0x90, 0x90\n"
		     ".pushsection .altinstructions, \"a\"\n"
		     " .long 1b - .\n .long 2f - .\n .word 3*32+5\n .byte 6\n .byte 5\n"
		     ".popsection\n"
		     ".pushsection .altinstr_replacement, \"ax\"\n"
		     "2: call helper\n"
		     ".popsection\n");
}
"#;

#[test]
fn alternatives_follow_the_cpu_features_and_keep_their_targets() {
    let obj = object(ALT);
    let o = Object::parse(&obj).unwrap();
    let l = o.link_with(CODE, DATA, &[], &target(), &mut env(Some(true), None)).unwrap();
    let i = insns(&l, "f");
    let call = i.iter().find(|x| x.mnemonic() == Mnemonic::Call).expect("the replacement's call at the site");
    assert_eq!(call.near_branch_target(), HELPER, "rel32 re-aimed from the replacement to the site");
    assert!(l.notes.iter().any(|n| n.contains("1 of 1 applied")), "{:?}", l.notes);
    let l = o.link_with(CODE, DATA, &[], &target(), &mut env(Some(false), None)).unwrap();
    assert!(!insns(&l, "f").iter().take(6).any(|x| x.mnemonic() == Mnemonic::Call), "feature absent: original NOPs");
    assert!(l.notes.iter().any(|n| n.contains("0 of 1 applied")), "{:?}", l.notes);
    let e = o.link_with(CODE, DATA, &[], &target(), &mut UnknownEnv).unwrap_err();
    assert_eq!((e.cause(), e.reason()), ("unsupported_section", "altinstructions"), "{e}");
}

const JUMP: &str = r#"
extern struct { int enabled; } a_key;
int g(void)
{
	asm goto("1: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n"
		 ".pushsection __jump_table, \"aw\"\n"
		 " .balign 8\n .long 1b - .\n .long %l[yes] - .\n .quad a_key + 0 - .\n"
		 ".popsection\n" : : : : yes);
	return 0;
yes:
	return 1;
}
"#;

#[test]
fn jump_labels_are_frozen_to_the_key_state_or_refused() {
    let obj = object(JUMP);
    let o = Object::parse(&obj).unwrap();
    let mut e = env(None, Some(true));
    let l = o.link_with(CODE, DATA, &[], &target(), &mut e).unwrap();
    assert_eq!(e.asked, vec![KEY], "the key's state is read at its address");
    let i = insns(&l, "g");
    assert!(i.iter().any(|x| x.mnemonic() == Mnemonic::Jmp), "enabled key, branch default false: a jump");
    assert!(l.notes.iter().any(|n| n.contains("frozen to jump") && n.contains("a_key is enabled")), "{:?}", l.notes);
    let l = o.link_with(CODE, DATA, &[], &target(), &mut env(None, Some(false))).unwrap();
    assert!(l.notes.iter().any(|n| n.contains("frozen to no jump")), "{:?}", l.notes);
    let err = o.link_with(CODE, DATA, &[], &target(), &mut env(None, None)).unwrap_err();
    assert_eq!((err.cause(), err.reason()), ("unsupported_section", "jump_table"), "{err}");
}

fn bug(flags: u16) -> String {
    format!(
        r#"
void w(void)
{{
	asm volatile("1: ud2\n"
		     ".pushsection __bug_table, \"aw\"\n"
		     "2: .long 1b - 2b\n .long 0\n .word 7\n .word {flags}\n .org 2b + 12\n"
		     ".popsection\n");
}}
"#
    )
}

#[test]
fn warn_sites_become_nops_and_bug_sites_are_refused() {
    let obj = object(&bug(1));
    let l = Object::parse(&obj).unwrap().link_with(CODE, DATA, &[], &target(), &mut UnknownEnv).unwrap();
    let at = (l.symbols["w"] - CODE) as usize;
    let body = &l.code[at..(at + 12).min(l.code.len())];
    assert!(body.windows(2).any(|w| w == [0x66, 0x90]), "ud2 became a 2-byte NOP: {body:02x?}");
    assert!(!body.windows(2).any(|w| w == [0x0f, 0x0b]), "no bare ud2 left: {body:02x?}");
    assert!(l.notes.iter().any(|n| n.contains("WARN")), "{:?}", l.notes);
    let obj = object(&bug(0));
    let e = Object::parse(&obj).unwrap().link_with(CODE, DATA, &[], &target(), &mut UnknownEnv).unwrap_err();
    assert_eq!((e.cause(), e.reason()), ("unsupported_section", "bug_table"), "{e}");
    assert!(e.to_string().contains("BUG() at w+"), "{e}");
}

const RET: &str = r#"
void r(void)
{
	asm volatile("1: jmp __x86_return_thunk\n"
		     ".pushsection .return_sites, \"a\"\n .long 1b - .\n .popsection\n");
}
"#;

#[test]
fn return_sites_go_to_the_guests_thunk() {
    let obj = object(RET);
    let o = Object::parse(&obj).unwrap();
    let mut e = env(None, None);
    e.thunk = Some(THUNK);
    let l = o.link_with(CODE, DATA, &[], &target(), &mut e).unwrap();
    let jmp = insns(&l, "r").into_iter().find(|x| x.mnemonic() == Mnemonic::Jmp).unwrap();
    assert_eq!(jmp.near_branch_target(), THUNK);
    // Without a guest thunk the compiled target stays.
    let l = o.link_with(CODE, DATA, &[], &target(), &mut UnknownEnv).unwrap();
    let jmp = insns(&l, "r").into_iter().find(|x| x.mnemonic() == Mnemonic::Jmp).unwrap();
    assert_eq!(jmp.near_branch_target(), THUNK - 0x100);
}

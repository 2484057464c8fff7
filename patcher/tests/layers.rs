//! The patcher's module graph: its layers point one way and no two modules
//! import each other, directly or through others.
//!
//! Read from the source: every `crate::…` and `super::…` path in every file
//! (tests included for the layer rule) names the module it comes from. The
//! layer order is the one `src/lib.rs` documents. The one exception: test
//! code (test files, and what follows `#[cfg(test)]`) may also use the test
//! fixtures ([`FIXTURES`]), which sit above the layers they fake.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer: a module may use only lower layers and itself.
const LAYERS: &[(&str, u32)] = &[
    ("model", 0),
    ("arch", 1),
    ("shm", 1),
    ("gdb", 2),
    ("os", 2),
    ("safety", 3),
    ("patch", 3),
    ("kernels", 4),
    ("arena", 4),
    ("txn", 5),
    ("testing", 5),
    ("attach", 6),
    ("inspect", 7),
];

/// The test fixtures: a layer of their own, usable by every layer's tests.
const FIXTURES: &str = "testing";

fn rank(top: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == top).map(|(_, r)| *r)
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a source file (`os/linux/view.rs` → `os::linux::view`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_owned();
        if stem != "mod" && stem != "lib" {
            parts.push(stem);
        }
    }
    parts
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path a file's code refers to, resolved to absolute paths.
/// `non_test`: only the code before its `#[cfg(test)]` items.
fn references(text: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
            if i > 0 && code[..i].chars().next_back().is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            let rest = &code[i..];
            let segs: Vec<&str> = rest.split("::").map(|s| s.trim_end_matches(|c: char| !is_ident(c))).collect();
            let mut path: Vec<String> = Vec::new();
            let mut it = segs.iter().peekable();
            if rest.starts_with("crate::") {
                it.next();
            } else {
                path = me.to_vec();
                while it.peek() == Some(&&"super") {
                    it.next();
                    path.pop();
                }
            }
            for s in it {
                if s.is_empty() || !s.chars().all(is_ident) || s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    break;
                }
                path.push((*s).to_owned());
            }
            out.push(path);
        }
    }
    out
}

fn strip_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// A module's code split into what ships and what only tests compile.
fn split_tests<'a>(me: &[String], text: &'a str) -> (&'a str, &'a str) {
    if is_test_file(me) {
        return ("", text);
    }
    let code = strip_tests(text);
    (code, &text[code.len()..])
}

fn is_test_file(me: &[String]) -> bool {
    me.last().is_some_and(|n| n == "tests" || n.ends_with("_tests") || n == "testutil")
}

struct Src {
    modules: BTreeMap<Vec<String>, String>,
}

fn load() -> Src {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut modules = BTreeMap::new();
    for f in all {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        modules.insert(module_of(&src, &f), text);
    }
    Src { modules }
}

/// The longest known module that `path` names (or is inside).
fn resolve<'a>(mods: &'a BTreeMap<Vec<String>, String>, path: &[String]) -> Option<&'a Vec<String>> {
    (1..=path.len()).rev().find_map(|n| mods.get_key_value(&path[..n]).map(|(k, _)| k))
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = load();
    let mut bad = Vec::new();
    for (me, text) in &src.modules {
        let Some(my_top) = me.first() else { continue };
        let Some(mine) = rank(my_top) else {
            bad.push(format!("{}: top-level module without a layer", me.join("::")));
            continue;
        };
        let (code, tests) = split_tests(me, text);
        let refs = references(code, me).into_iter().map(|r| (r, false));
        for (r, in_tests) in refs.chain(references(tests, me).into_iter().map(|r| (r, true))) {
            let Some(top) = r.first() else { continue };
            if top == my_top || (in_tests && top == FIXTURES) {
                continue;
            }
            match rank(top) {
                Some(theirs) if theirs < mine => {}
                _ => bad.push(format!("{} uses {}", me.join("::"), r.join("::"))),
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}

/// Every cycle in a module graph (each as `a -> b -> a`).
fn find_cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(n: &str, edges: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>, cycles: &mut Vec<String>) {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                0 => visit(m, edges, state, stack, cycles),
                1 => {
                    let from = stack.iter().position(|x| x == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    cycles.push(c.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            visit(n, edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    cycles
}

#[test]
fn no_module_cycles() {
    let src = load();
    // Edges between modules neither of which contains the other (a parent
    // declaring and re-exporting its children is not a dependency).
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (me, text) in &src.modules {
        if is_test_file(me) {
            continue;
        }
        for r in references(strip_tests(text), me) {
            let Some(to) = resolve(&src.modules, &r) else { continue };
            if to.starts_with(me) || me.starts_with(to) {
                continue;
            }
            edges.entry(me.join("::")).or_default().insert(to.join("::"));
        }
    }
    assert!(edges.len() > 20, "the graph is implausibly small: {} modules with edges", edges.len());
    let cycles = find_cycles(&edges);
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_resolves_paths_and_finds_a_planted_cycle() {
    let me = vec!["os".to_owned(), "linux".to_owned(), "view".to_owned()];
    let refs = references("use crate::txn::Patcher;\nuse super::agent::find;\nuse super::super::elf::ElfImage;", &me);
    assert_eq!(refs[0], vec!["txn"]);
    assert_eq!(refs[1], vec!["os", "linux", "agent", "find"]);
    assert_eq!(refs[2], vec!["os", "elf"]);
    assert!(rank("txn") > rank("os"));
    assert!(rank(FIXTURES) > rank("kernels") && rank(FIXTURES) > rank("arena"));
    // Fixtures are test code's only: a shipped module may not use them.
    let arch = vec!["arch".to_owned(), "x86".to_owned(), "guest".to_owned()];
    let (code, tests) = split_tests(&arch, "use crate::model::Backend;\n#[cfg(test)]\nmod t { use crate::testing::RamGuest; }\n");
    assert_eq!(references(code, &arch), vec![vec!["model".to_owned()]]);
    assert_eq!(references(tests, &arch), vec![vec!["testing".to_owned()]]);
    let test_file = vec!["arch".to_owned(), "x86".to_owned(), "tests".to_owned()];
    assert_eq!(split_tests(&test_file, "use crate::testing::RamGuest;").0, "");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(find_cycles(&edges), vec!["a -> b -> c -> a"]);
    edges.remove("c");
    assert!(find_cycles(&edges).is_empty());
}

//! Unit tests of the object comparison on small objects compiled by gcc
//! (skipped with a message when gcc is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::patch::diff::view::View;

/// Compiles `src` with per-function and per-data sections; `None` without gcc.
pub(crate) fn cc(src: &str) -> Option<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("vsplice-cmp-{}-{}", std::process::id(), crate::patch::build::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t.c"), src).unwrap();
    let out = std::process::Command::new("gcc")
        .args(["-O2", "-c", "-fno-pic", "-mcmodel=kernel", "-ffunction-sections", "-fdata-sections", "-fno-asynchronous-unwind-tables", "t.c", "-o", "t.o"])
        .current_dir(&dir)
        .output();
    let obj = match out {
        Ok(o) if o.status.success() => std::fs::read(dir.join("t.o")).ok(),
        Ok(o) => panic!("gcc failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => {
            eprintln!("SKIP: gcc not found");
            None
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    obj
}

fn cmp(a: &str, b: &str) -> Option<Comparison> {
    let (pre, post) = (cc(a)?, cc(b)?);
    Some(compare(&View::parse(&pre).unwrap(), &View::parse(&post).unwrap()))
}

const BASE: &str = r#"
extern int ext(int);
static int limit = 10;
static const int table[4] = {1, 2, 3, 4};
__attribute__((noinline)) static int helper(int x) { return x > limit ? ext(x) : x + 1; }
static inline int small(int x) { return x * 3; }
int user_of_helper(int x) { return helper(x) + 1; }
int user_of_small(int x) { return small(x) - 1; }
int user_of_table(int i) { return table[i & 3]; }
const char *msg(void) { return "hello"; }
const char *msg2(void) { return "world"; }
int untouched(int x) { return ext(x) * 2; }
void set_limit(int l) { limit = l; }
"#;

#[test]
fn identical_builds_compare_equal() {
    let Some(c) = cmp(BASE, BASE) else { return };
    assert!(c.is_empty(), "{c:?}");
}

#[test]
fn a_changed_static_is_replaced_alone_and_its_callers_are_not() {
    let Some(c) = cmp(BASE, &BASE.replace("x > limit", "x >= limit")) else { return };
    assert_eq!(c.changed.keys().collect::<Vec<_>>(), ["helper"], "{c:?}");
    assert!(matches!(c.changed["helper"], Why::Code(_)));
}

#[test]
fn an_inlined_change_replaces_the_caller_the_diff_does_not_name() {
    let Some(c) = cmp(BASE, &BASE.replace("x * 3", "x * 5")) else { return };
    assert_eq!(c.changed.keys().collect::<Vec<_>>(), ["user_of_small"], "{c:?}");
}

#[test]
fn a_changed_constant_table_replaces_its_users() {
    let Some(c) = cmp(BASE, &BASE.replace("{1, 2, 3, 4}", "{1, 2, 3, 5}")) else { return };
    assert!(c.rodata_changed.contains("table"), "{c:?}");
    assert_eq!(c.changed.get("user_of_table"), Some(&Why::Uses("table".into())));
    assert!(c.data_changed.is_empty());
}

#[test]
fn a_changed_initial_value_of_writable_data_is_reported() {
    let Some(c) = cmp(BASE, &BASE.replace("limit = 10", "limit = 11")) else { return };
    assert!(c.data_changed.contains("limit"), "{c:?}");
    assert!(c.changed.is_empty(), "{c:?}");
}

#[test]
fn a_changed_string_is_a_changed_reference_and_moved_strings_are_not() {
    // "hello" grows: "world" moves in the string section, msg2 must not change.
    let Some(c) = cmp(BASE, &BASE.replace("\"hello\"", "\"hello, world\"")) else { return };
    assert_eq!(c.changed.keys().collect::<Vec<_>>(), ["msg"], "{c:?}");
    assert!(matches!(&c.changed["msg"], Why::Reloc(_, a, b) if a.contains("hello") && b.contains("hello, world")));
}

#[test]
fn new_functions_and_data_are_found() {
    let extra = format!("{BASE}\nstatic int counter;\n__attribute__((noinline)) int fresh(int x) {{ counter++; return x + counter; }}\n");
    let Some(c) = cmp(BASE, &extra) else { return };
    assert!(c.new_functions.contains("fresh"), "{c:?}");
    assert!(c.new_data.contains("counter"), "{c:?}");
    assert!(c.changed.is_empty(), "{c:?}");
}

#[test]
fn a_call_retargeted_to_another_function_is_a_change() {
    let Some(c) = cmp(BASE, &BASE.replace("return ext(x) * 2", "return helper(x) * 2")) else { return };
    assert!(c.changed.contains_key("untouched"), "{c:?}");
}

#[test]
fn a_dynamic_debug_descriptor_that_only_moved_down_the_file_is_not_changed_data() {
    // struct _ddebug's shape: four pointers, then lineno:18, class_id:6, flags:8.
    let src = |line: u32, flags: u32| {
        format!(
            "struct dd {{ const char *m, *f, *n, *fmt; unsigned int lineno:18, cls:6, flags:8; long key; }};\n\
             __attribute__((section(\"__dyndbg\"), used)) struct dd site = {{ \"m\", \"f\", \"n\", \"x=%d\\n\", {line}, 63, {flags}, 0 }};\n\
             int use(void) {{ return site.flags; }}\n"
        )
    };
    let Some(c) = cmp(&src(100, 0), &src(107, 0)) else { return };
    assert!(c.data_changed.is_empty() && c.changed.is_empty(), "a moved line is not a change: {:?} {:?}", c.data_changed, c.changed);
    let Some(c) = cmp(&src(100, 0), &src(100, 1)) else { return };
    assert!(c.data_changed.contains("site"), "other fields still count: {:?}", c.data_changed);
}

//! Comparing the two builds of one object (before and after the fix),
//! function by function and data object by data object: code bytes (the
//! relocated fields are zero in an object, so bytes compare as they are)
//! and every relocation with its canonical target ([`super::view::Target`]).
//! Not only what the diff names: whatever the compiler inlined, every
//! caller of a changed static, every user of a changed constant shows up.
//!
//! A function is changed when its bytes or its relocations differ, or when
//! it reads a read-only object whose content changed (the patch carries a
//! fresh copy, so its users must be replaced to see it). A writable object
//! whose initial value changed cannot be carried (the running kernel's copy
//! has lived since boot): it is reported for refusal.

use std::collections::{BTreeMap, BTreeSet};

use super::view::{Item, Target, View};

/// Why a function is in the patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Its code bytes differ (first differing offset).
    Code(u64),
    /// Its size differs.
    Size(u64, u64),
    /// A relocation differs (offset, what it was, what it is).
    Reloc(u64, String, String),
    /// It uses a read-only object whose content changed.
    Uses(String),
    /// The function is new.
    New,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(at) => write!(f, "code differs from +{at:#x}"),
            Self::Size(a, b) => write!(f, "size {a:#x} -> {b:#x}"),
            Self::Reloc(at, a, b) => write!(f, "reference at +{at:#x}: {a} -> {b}"),
            Self::Uses(n) => write!(f, "uses read-only data `{n}` whose content changed"),
            Self::New => f.write_str("new function"),
        }
    }
}

/// What differs between the two builds.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Functions present in both whose code changed, with why.
    pub changed: BTreeMap<String, Why>,
    /// Functions only the fixed build has.
    pub new_functions: BTreeSet<String>,
    /// Functions only the old build has (no longer called by the new code).
    pub removed: BTreeSet<String>,
    /// Writable data present in both whose initial value changed.
    pub data_changed: BTreeSet<String>,
    /// Read-only data present in both whose content changed (users replaced).
    pub rodata_changed: BTreeSet<String>,
    /// Data objects only the fixed build has (carried in the arena).
    pub new_data: BTreeSet<String>,
}

impl Comparison {
    /// True when nothing in the object's code or data changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.new_functions.is_empty() && self.data_changed.is_empty() && self.rodata_changed.is_empty() && self.new_data.is_empty()
    }
}

/// A compiler-local suffix (`.isra.0`, `.constprop.3`, `.part.1`, `.cold`)
/// keeps its name: clones are compared by full name.
fn differs(a: &Item, b: &Item) -> Option<Why> {
    if a.size != b.size {
        // Still say where the code starts to differ, more useful than sizes.
        let at = a.bytes.iter().zip(&b.bytes).position(|(x, y)| x != y).map(|p| p as u64);
        return Some(at.map_or(Why::Size(a.size, b.size), Why::Code));
    }
    if let Some(p) = a.bytes.iter().zip(&b.bytes).position(|(x, y)| x != y) {
        return Some(Why::Code(p as u64));
    }
    let n = a.relocs.len().max(b.relocs.len());
    for i in 0..n {
        match (a.relocs.get(i), b.relocs.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                let at = x.or(y).map_or(0, |r| r.at);
                let show = |r: Option<&super::view::Reloc>| r.map_or_else(|| "nothing".to_owned(), |r| r.target.to_string());
                return Some(Why::Reloc(at, show(x), show(y)));
            }
        }
    }
    None
}

/// A dynamic-debug descriptor (`struct _ddebug` in `__dyndbg`) that differs
/// only in its `lineno` bit-field (the low 18 bits of the word after the
/// four pointers): a fix that moves a `pr_debug()` down the file. The
/// kernel's descriptor stays in use (its control file keeps the old line);
/// its key, flags, format and function are the same.
fn only_ddebug_line(a: &Item, b: &Item) -> bool {
    const LINENO: usize = 32;
    if a.section_name != "__dyndbg" || b.section_name != "__dyndbg" || a.size != b.size || a.relocs != b.relocs || a.bytes.len() < LINENO + 4 || a.bytes.len() != b.bytes.len() {
        return false;
    }
    let word = |x: &[u8]| u32::from_le_bytes([x[LINENO], x[LINENO + 1], x[LINENO + 2], x[LINENO + 3]]);
    let outside = a.bytes.iter().zip(&b.bytes).enumerate().any(|(i, (x, y))| x != y && !(LINENO..LINENO + 4).contains(&i));
    !outside && (word(&a.bytes) ^ word(&b.bytes)) & !0x3ffff == 0
}

/// Compares the object built before the fix with the one built after it.
pub fn compare(pre: &View<'_>, post: &View<'_>) -> Comparison {
    let mut c = Comparison::default();
    for (name, b) in &post.items {
        match pre.items.get(name) {
            // Absent before, or a name that changed kind: the new one is new.
            a if a.is_none_or(|a| a.func != b.func) => {
                if b.func {
                    c.new_functions.insert(name.clone());
                } else {
                    c.new_data.insert(name.clone());
                }
            }
            None => {}
            Some(a) => {
                if let Some(why) = differs(a, b).filter(|_| !only_ddebug_line(a, b)) {
                    if b.func {
                        c.changed.insert(name.clone(), why);
                    } else if b.writable {
                        c.data_changed.insert(name.clone());
                    } else {
                        c.rodata_changed.insert(name.clone());
                    }
                }
            }
        }
    }
    for (name, a) in &pre.items {
        if a.func && !post.items.contains_key(name) {
            c.removed.insert(name.clone());
        }
    }
    // Users of changed read-only data must see the new copy.
    for (name, b) in &post.items {
        if !b.func || c.changed.contains_key(name) || c.new_functions.contains(name) {
            continue;
        }
        let used = b.relocs.iter().find_map(|r| match &r.target {
            Target::Sym { name: t, .. } if c.rodata_changed.contains(t) => Some(t.clone()),
            _ => None,
        });
        if let Some(t) = used {
            c.changed.insert(name.clone(), Why::Uses(t));
        }
    }
    c
}

#[cfg(test)]
#[path = "compare_tests.rs"]
pub(crate) mod tests;

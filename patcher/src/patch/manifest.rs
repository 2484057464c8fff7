//! The patch manifest (JSON inside the patch file): what the patch is, which
//! kernel build it is for, which target functions it replaces and what their
//! bytes must be (run-pre data: size and SHA-256, with tolerated byte ranges
//! for the rewrites a kernel does to itself at boot), and how the patch names
//! local target symbols.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Qualifier, TargetKind};

/// Version of the manifest schema.
pub const MANIFEST_VERSION: u32 = 1;

/// Which kernel build a patch is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Kind of target (`testguest`, `linux`).
    pub kind: TargetKind,
    /// GNU build-id (lower-case hex) of the kernel image it was built against.
    pub build_id: Option<String>,
}

/// A byte range of a target function that may differ in the running kernel
/// (boot-time rewrites: relocations, alternatives, ftrace sites, static
/// calls, jump labels); excluded from the run-pre digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteMask {
    /// Offset from the function start.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Why it may differ.
    pub why: String,
}

/// One target function the patch replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// Name of the target function.
    pub old: String,
    /// Which one, when the name exists more than once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<Qualifier>,
    /// The patch's function that takes its place.
    pub new: String,
    /// Link-time address of the target function in the image built against.
    pub old_addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 (hex) of its bytes with `tolerate` ranges zeroed.
    pub sha256: String,
    /// Byte ranges the running kernel may have rewritten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerate: Vec<ByteMask>,
}

/// A name used in the patch object for a target symbol (local ones need a qualifier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolAlias {
    /// Undefined symbol name in the object.
    pub name: String,
    /// Target symbol it stands for.
    pub target: String,
    /// Which one, when the target name exists more than once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<Qualifier>,
}

/// How the object was built (informational).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Source file.
    pub source: String,
    /// Compiler command.
    pub compiler: String,
    /// Flags.
    pub flags: Vec<String>,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema version ([`MANIFEST_VERSION`]).
    pub format: u32,
    /// Human name of the patch.
    pub name: String,
    /// Stable id: first 16 hex digits of SHA-256 over name and object.
    pub id: String,
    /// The kernel build it is for.
    pub target: TargetSpec,
    /// A cumulative patch atomically replaces every patch applied before it.
    #[serde(default)]
    pub cumulative: bool,
    /// Target functions replaced.
    pub replacements: Vec<Replacement>,
    /// Names of target symbols used by the new code that need a qualifier or a rename.
    #[serde(default)]
    pub symbols: Vec<SymbolAlias>,
    /// How it was built.
    #[serde(default)]
    pub build: BuildInfo,
}

impl Manifest {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The patch id for a name and an object.
pub fn patch_id(name: &str, object: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(object);
    crate::os::elf::hex(&h.finalize()[..8])
}

/// SHA-256 (hex) of `bytes` with the `masks` ranges zeroed: the run-pre digest.
pub fn run_pre_digest(bytes: &[u8], masks: &[ByteMask]) -> String {
    let mut b = bytes.to_vec();
    for m in masks {
        let start = (m.offset as usize).min(b.len());
        let end = (m.offset.saturating_add(m.len) as usize).min(b.len());
        b[start..end].fill(0);
    }
    crate::os::elf::hex(&Sha256::digest(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn masks_hide_exactly_their_bytes() {
        let a = [1u8, 2, 3, 4, 5, 6];
        let b = [1u8, 2, 9, 9, 5, 6];
        let m = vec![ByteMask { offset: 2, len: 2, why: "reloc".into() }];
        assert_eq!(run_pre_digest(&a, &m), run_pre_digest(&b, &m));
        assert_ne!(run_pre_digest(&a, &[]), run_pre_digest(&b, &[]));
        let c = [1u8, 2, 9, 9, 5, 7];
        assert_ne!(run_pre_digest(&a, &m), run_pre_digest(&c, &m));
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let m = Manifest {
            format: MANIFEST_VERSION,
            name: "p".into(),
            id: patch_id("p", b"obj"),
            target: TargetSpec { kind: TargetKind::TestGuest, build_id: Some("ab".into()) },
            cumulative: false,
            replacements: vec![Replacement {
                old: "f".into(),
                qualifier: Some(Qualifier::File("a.c".into())),
                new: "g".into(),
                old_addr: 0xffff_ffff_8100_0000,
                size: 16,
                sha256: "00".into(),
                tolerate: vec![],
            }],
            symbols: vec![],
            build: BuildInfo::default(),
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&j).unwrap(), m);
        assert_eq!(m.id.len(), 16);
    }
}

//! The patch manifest (JSON inside the patch file): what the patch is, which
//! kernel build it is for, which target functions it replaces and what their
//! bytes must be (run-pre data: size and SHA-256, with tolerated byte ranges
//! for the rewrites a kernel does to itself at boot), and how the patch names
//! local target symbols; and what operators look for: description, CVE
//! ids, version ([`PatchInfo`], optional, so files written before it still
//! read). [`Manifest::validate`] checks what the file alone can tell.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use thiserror::Error;
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
    /// Why it is replaced (`patch build --diff`: what changed in its code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The object the function is in: a module's name, or absent for
    /// `vmlinux` (patches written before modules could be targets). For a
    /// module, `old_addr` is the function's address in the module's `.ko`
    /// as [`crate::patch::objects`] numbers it, and the run-pre digest is of
    /// the `.ko`'s bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
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
    /// The object whose symbol it is: a module's name, or absent for `vmlinux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
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
    /// `patch build --diff --skip-refused`: files of the diff left out of
    /// the patch, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

/// A file of a source diff that a partial build left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// The file (path in the source tree).
    pub file: String,
    /// Stable cause (`ex_table`, `kbuild_failed`, `header_changed`, …).
    pub cause: String,
    /// The symbol concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Explanation.
    pub why: String,
}

/// A manifest that says something the file or the format forbids.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{detail}")]
pub struct ManifestError {
    /// Stable reason (`id_mismatch`, `bad_old_addr`, `no_build_id`, `bad_size`,
    /// `bad_mask`, `duplicate_replacement`, `bad_info`, `bad_object`).
    pub reason: &'static str,
    /// What exactly.
    pub detail: String,
}

/// What operators look for (as `kcarectl --info` shows); all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchInfo {
    /// One-paragraph description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// CVE ids fixed (`CVE-YYYY-NNNN…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    /// The patch's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Longest description accepted.
pub const MAX_DESCRIPTION: usize = 4096;
/// Most CVE ids.
pub const MAX_CVES: usize = 256;
/// Longest version string.
pub const MAX_VERSION: usize = 64;
/// Most tolerated ranges per replaced function.
pub const MAX_MASKS: usize = 4096;
/// Largest replaced function (bytes).
pub const MAX_FUNCTION_SIZE: u64 = 1 << 20;

/// True for `CVE-YYYY-N…` (4-digit year, at least 4 digits).
pub fn is_cve_id(s: &str) -> bool {
    let mut parts = s.splitn(3, '-');
    let all_digits = |p: &str, min: usize, max: usize| (min..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    parts.next() == Some("CVE") && parts.next().is_some_and(|y| all_digits(y, 4, 4)) && parts.next().is_some_and(|n| all_digits(n, 4, 12))
}

impl PatchInfo {
    /// Checks the bounds and the CVE id syntax.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |reason, detail: String| Err(ManifestError { reason, detail });
        if self.description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION) {
            return bad("bad_info", format!("description over {MAX_DESCRIPTION} bytes"));
        }
        if self.version.as_ref().is_some_and(|v| v.len() > MAX_VERSION || v.is_empty()) {
            return bad("bad_info", format!("version empty or over {MAX_VERSION} bytes"));
        }
        if self.cves.len() > MAX_CVES {
            return bad("bad_info", format!("more than {MAX_CVES} CVE ids"));
        }
        if let Some(c) = self.cves.iter().find(|c| !is_cve_id(c)) {
            return bad("bad_info", format!("`{}` is not a CVE id (CVE-YYYY-NNNN)", c.chars().take(40).collect::<String>()));
        }
        Ok(())
    }
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
    /// Description, CVE ids, version.
    #[serde(flatten)]
    pub info: PatchInfo,
}

impl Manifest {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// What the file alone can tell (the kernel's symbols are checked at
    /// apply time): the id is the name's and the object's, Linux patches
    /// name their kernel's build-id, every replacement has an address and a
    /// bounded size, its tolerated ranges lie inside it, and no function is
    /// replaced twice.
    pub fn validate(&self, object: &[u8]) -> Result<(), ManifestError> {
        let bad = |reason, detail: String| Err(ManifestError { reason, detail });
        let id = patch_id(&self.name, object);
        if self.id != id {
            return bad("id_mismatch", format!("id `{}` is not the one of its name and object ({id})", self.id.chars().take(40).collect::<String>()));
        }
        if self.target.kind == TargetKind::Linux && self.target.build_id.as_deref().is_none_or(str::is_empty) {
            return bad("no_build_id", "a Linux patch must name its kernel's build-id".into());
        }
        for (i, r) in self.replacements.iter().enumerate() {
            if r.old_addr == 0 {
                return bad("bad_old_addr", format!("replacement of `{}`: old_addr is 0", r.old));
            }
            if r.size == 0 || r.size > MAX_FUNCTION_SIZE {
                return bad("bad_size", format!("replacement of `{}`: size {} is not 1..={MAX_FUNCTION_SIZE}", r.old, r.size));
            }
            if r.tolerate.len() > MAX_MASKS {
                return bad("bad_mask", format!("replacement of `{}`: more than {MAX_MASKS} tolerated ranges", r.old));
            }
            if let Some(m) = r.tolerate.iter().find(|m| m.len == 0 || m.offset.checked_add(m.len).is_none_or(|end| end > r.size)) {
                return bad("bad_mask", format!("replacement of `{}`: tolerated range {:#x}+{:#x} is not inside its {} bytes", r.old, m.offset, m.len, r.size));
            }
            if let Some(o) = r.object.as_deref().filter(|o| !crate::model::module::valid_module_name(o)) {
                return bad("bad_object", format!("replacement of `{}`: `{}` is not a module name", r.old, o.chars().take(64).collect::<String>()));
            }
            if self.replacements[..i].iter().any(|o| o.old == r.old && o.qualifier == r.qualifier && o.object == r.object) {
                return bad("duplicate_replacement", format!("`{}` is replaced twice", r.old));
            }
        }
        if let Some(a) = self.symbols.iter().find(|a| a.object.as_deref().is_some_and(|o| !crate::model::module::valid_module_name(o))) {
            return bad("bad_object", format!("symbol `{}`: its object is not a module name", a.name));
        }
        self.info.validate()
    }

    /// The modules the patch replaces functions of or binds symbols to
    /// (empty for a patch of `vmlinux` alone).
    pub fn modules(&self) -> std::collections::BTreeSet<&str> {
        self.replacements.iter().filter_map(|r| r.object.as_deref()).chain(self.symbols.iter().filter_map(|a| a.object.as_deref())).collect()
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
                why: None,
                object: None,
            }],
            symbols: vec![],
            build: BuildInfo::default(),
            info: PatchInfo::default(),
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&j).unwrap(), m);
        assert_eq!(m.id.len(), 16);
    }

    fn valid() -> (Manifest, Vec<u8>) {
        let object = b"obj".to_vec();
        let m = Manifest {
            format: MANIFEST_VERSION,
            name: "p".into(),
            id: patch_id("p", &object),
            target: TargetSpec { kind: TargetKind::Linux, build_id: Some("ab".into()) },
            cumulative: false,
            replacements: vec![Replacement {
                old: "f".into(),
                qualifier: None,
                new: "g".into(),
                old_addr: 0xffff_ffff_8100_0000,
                size: 16,
                sha256: "00".into(),
                tolerate: vec![ByteMask { offset: 12, len: 4, why: "reloc".into() }],
                why: None,
                object: None,
            }],
            symbols: vec![],
            build: BuildInfo::default(),
            info: PatchInfo { description: Some("fix".into()), cves: vec!["CVE-2024-12345".into()], version: Some("1".into()) },
        };
        (m, object)
    }

    fn refused(f: impl FnOnce(&mut Manifest)) -> &'static str {
        let (mut m, o) = valid();
        f(&mut m);
        match m.validate(&o) {
            Err(ManifestError { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn validation_names_every_manifest_lie() {
        let (m, o) = valid();
        m.validate(&o).unwrap();
        assert_eq!(refused(|m| m.id = "0000000000000000".into()), "id_mismatch");
        assert_eq!(refused(|m| m.name = "q".into()), "id_mismatch");
        assert_eq!(refused(|m| m.target.build_id = None), "no_build_id");
        assert_eq!(refused(|m| m.target.build_id = Some(String::new())), "no_build_id");
        assert_eq!(refused(|m| m.replacements[0].old_addr = 0), "bad_old_addr");
        assert_eq!(refused(|m| m.replacements[0].size = 0), "bad_size");
        assert_eq!(refused(|m| m.replacements[0].size = u64::MAX), "bad_size");
        assert_eq!(refused(|m| m.replacements[0].tolerate[0].len = 5), "bad_mask");
        assert_eq!(refused(|m| m.replacements[0].tolerate[0].offset = u64::MAX), "bad_mask");
        assert_eq!(refused(|m| m.replacements[0].tolerate[0].len = 0), "bad_mask");
        assert_eq!(refused(|m| m.replacements[0].tolerate = vec![m.replacements[0].tolerate[0].clone(); MAX_MASKS + 1]), "bad_mask");
        assert_eq!(refused(|m| m.replacements.push(m.replacements[0].clone())), "duplicate_replacement");
        assert_eq!(refused(|m| m.info.cves.push("CVE-24-1".into())), "bad_info");
        assert_eq!(refused(|m| m.replacements[0].object = Some("../etc".into())), "bad_object");
        assert_eq!(refused(|m| m.replacements[0].object = Some(String::new())), "bad_object");
        assert_eq!(refused(|m| m.symbols.push(SymbolAlias { name: "x".into(), target: "x".into(), qualifier: None, object: Some("a b".into()) })), "bad_object");
        assert_eq!(refused(|m| m.info.description = Some("x".repeat(MAX_DESCRIPTION + 1))), "bad_info");
        // The same name with another qualifier is another function; test-guest patches need no build-id.
        let (mut m, o) = valid();
        let mut other = m.replacements[0].clone();
        other.qualifier = Some(Qualifier::File("b.c".into()));
        m.replacements.push(other);
        m.target = TargetSpec { kind: TargetKind::TestGuest, build_id: None };
        m.validate(&o).unwrap();
        // The same name in a module is another function too.
        let (mut m, o) = valid();
        let mut in_module = m.replacements[0].clone();
        in_module.object = Some("nfsd".into());
        m.replacements.push(in_module);
        m.validate(&o).unwrap();
        assert_eq!(m.modules().into_iter().collect::<Vec<_>>(), ["nfsd"]);
    }

    #[test]
    fn replacements_without_an_object_are_vmlinux_and_serialize_as_before() {
        let (m, _) = valid();
        let j = serde_json::to_string(&m).unwrap();
        // No `object` key: a file written before modules reads and re-serializes byte for byte.
        assert!(!j.contains("\"object\""), "{j}");
        let back: Manifest = serde_json::from_str(&j).unwrap();
        assert!(back.replacements[0].object.is_none() && back.modules().is_empty());
        assert_eq!(serde_json::to_string(&back).unwrap(), j);
    }

    #[test]
    fn old_manifests_without_info_still_read_and_info_round_trips() {
        let (m, _) = valid();
        let mut j: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(j["cves"][0], "CVE-2024-12345");
        for k in ["description", "cves", "version"] {
            j.as_object_mut().unwrap().remove(k);
        }
        let old: Manifest = serde_json::from_value(j).unwrap();
        assert_eq!(old.info, PatchInfo::default());
        assert!(!old.to_json().contains("cves"));
        assert!(is_cve_id("CVE-2021-4034") && !is_cve_id("CVE-2021-1") && !is_cve_id("cve-2021-4034"));
    }
}

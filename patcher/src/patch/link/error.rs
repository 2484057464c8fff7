//! Why a patch object cannot be loaded: each error names its stable cause
//! (`bad_patch`, `failed_to_find`, `unsupported_section`) and a stable reason.

use thiserror::Error;

use crate::model::Qualifier;

/// Why a patch object cannot be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The object cannot be parsed.
    #[error("patch object is not a usable ELF relocatable: {0}")]
    Elf(String),
    /// A section the loader refuses (or does not know).
    #[error("section `{name}` is not supported: {why}")]
    UnsupportedSection {
        /// Section name.
        name: String,
        /// Stable short reason (`ex_table`, `bug_table`, `ksymtab`, `init_exit`, `unknown`, …).
        reason: &'static str,
        /// Explanation.
        why: String,
    },
    /// An undefined symbol the target does not have.
    #[error("symbol `{name}`{} used by the patch is not in the target kernel", qual.as_ref().map(|q| format!(" ({q})")).unwrap_or_default())]
    UnknownSymbol {
        /// Target name looked up.
        name: String,
        /// Qualifier given.
        qual: Option<Qualifier>,
    },
    /// An undefined local name that exists more than once, without qualifier.
    #[error("symbol `{name}` is ambiguous in the target ({}); qualify it with VSPLICE_LOCAL(name, \"file:…\") or \"pos:N\"", candidates.join("; "))]
    Ambiguous {
        /// The name.
        name: String,
        /// The candidates.
        candidates: Vec<String>,
    },
    /// A relocation type the loader does not handle.
    #[error("relocation type {r_type} at {section}+{offset:#x} is not supported{}", if *got { " (GOT-relative: build without -fpic/-fpie)" } else { "" })]
    UnsupportedRelocation {
        /// Section patched.
        section: String,
        /// Offset in it.
        offset: u64,
        /// ELF r_type.
        r_type: u32,
        /// GOT relocation.
        got: bool,
    },
    /// A relocation whose value does not fit its field.
    #[error("relocation type {r_type} at {section}+{offset:#x} overflows: value {value:#x}")]
    Overflow {
        /// Section patched.
        section: String,
        /// Offset in it.
        offset: u64,
        /// ELF r_type.
        r_type: u32,
        /// Computed value.
        value: i128,
    },
    /// Something else wrong with a relocation or symbol.
    #[error("{0}")]
    Malformed(String),
    /// A replacement names a function the object does not define.
    #[error("the patch object does not define function `{0}` named in VSPLICE_REPLACE")]
    MissingFunction(String),
}

impl LoadError {
    /// Stable machine-readable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::UnsupportedSection { .. } => "unsupported_section",
            Self::UnknownSymbol { .. } => "failed_to_find",
            _ => "bad_patch",
        }
    }

    /// Stable machine-readable reason (finer than the cause).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Elf(_) => "not_elf",
            Self::UnsupportedSection { reason, .. } => reason,
            Self::UnknownSymbol { .. } => "unknown_symbol",
            Self::Ambiguous { .. } => "ambiguous_symbol",
            Self::UnsupportedRelocation { .. } => "unsupported_relocation",
            Self::Overflow { .. } => "relocation_overflow",
            Self::Malformed(_) => "malformed_object",
            Self::MissingFunction(_) => "missing_function",
        }
    }
}

//! `vsplice patch build --target linux --diff FIX.patch --source SRC`: a
//! live patch from a source fix alone, no code written by hand.
//!
//! SRC (the running kernel's source, e.g. Debian's `linux-source-6.1` at
//! the kernel's version) is configured with the kernel's `.config` and
//! compiler ([`tree`]); every C file the diff touches is built before and
//! after the fix through Kbuild with per-function and per-data sections;
//! the two objects are compared function by function ([`compare`]); the
//! functions whose code changed (and new ones) are written into a patch
//! object with everything else left to bind to the running kernel
//! ([`emit`]), local names bound by file ([`bind`]); the unfixed build of
//! each replaced function must be the kernel's own code (run-pre). The
//! manifest records each replaced function and why it changed.
//!
//! `BUG()` sites in carried code stay `ud2`: the guest oopses there as the
//! kernel would (its report reads `invalid opcode` instead of `kernel BUG
//! at file:line`, the patch's bug table not being registered). `WARN()`
//! sites would oops the same way, so the carried code is compiled once more
//! with `WARN()` as a call of the kernel's `__warn()` ([`tree::warn_as_call_header`]),
//! refused (`warn_site`) when that build inlines differently, or, with
//! `--drop-warnings`, each becomes a NOP (listed at link time).
//!
//! A diff of several C files becomes one patch ([`unit`] per file, one
//! object from [`emit::emit_all`]); a refusal in any file refuses it, naming
//! the file, unless `--skip-refused` leaves that file out and lists it in the
//! manifest (`build.left_out`).

pub mod bind;
pub mod checks;
pub mod compare;
pub mod emit;
pub mod ko;
pub mod module;
pub mod refusal;
mod run;
pub mod split;
pub mod tree;
pub mod unit;
pub mod view;

use std::path::PathBuf;

use thiserror::Error;

pub use refusal::Refusal;
pub use run::build_from_diff;

use crate::patch::manifest::PatchInfo;

/// What to build.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// The running kernel's bzImage.
    pub kernel: PathBuf,
    /// Its Kbuild headers (their `.config` configures SRC).
    pub headers: PathBuf,
    /// The kernel's module tree (`/lib/modules/<release>` of its image
    /// package): where the `.ko` of a module target is read.
    pub modules: Option<PathBuf>,
    /// The kernel's source tree.
    pub source: PathBuf,
    /// The fix, a unified diff against SRC (`-p1`).
    pub diff: PathBuf,
    /// Patch name (default: the diff's file stem).
    pub name: Option<String>,
    /// Cumulative patch.
    pub cumulative: bool,
    /// Accept losing the WARN sites of replaced code.
    pub drop_warnings: bool,
    /// Leave refused files out (listed in the manifest) instead of refusing
    /// the whole patch.
    pub skip_refused: bool,
    /// Description, CVEs, version.
    pub info: PatchInfo,
}

/// Why no patch could be built from the diff.
#[derive(Debug, Error)]
pub enum DiffError {
    /// The diff does not apply to SRC.
    #[error("{0}")]
    DoesNotApply(String),
    /// SRC is not a kernel source tree, or not the running kernel's.
    #[error("{0}")]
    NotSource(String),
    /// The compiler (or make, or patch) is missing or not the kernel's.
    #[error("{0}")]
    NoCompiler(String),
    /// Kbuild failed.
    #[error("{0}")]
    Kbuild(String),
    /// The diff changes only headers.
    #[error("the diff changes only headers ({0}); the objects that include them are not known, so nothing can be compared")]
    HeadersOnly(String),
    /// The diff changes something that is not a C file.
    #[error("the diff changes {0}, which a live patch cannot carry (only C files are rebuilt)")]
    UnsupportedFile(String),
    /// The fix compiles to the same code.
    #[error("the fix changes no function's code (the objects before and after are the same)")]
    NoChange,
    /// A change a live patch cannot carry safely.
    #[error("`{symbol}`: {why}")]
    Refused {
        /// Stable cause.
        cause: Refusal,
        /// The symbol concerned.
        symbol: String,
        /// Explanation.
        why: String,
    },
    /// An object could not be read or written.
    #[error("object: {0}")]
    Object(String),
    /// File-system trouble.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Packaging the patch failed.
    #[error(transparent)]
    Build(#[from] crate::patch::build::BuildError),
}

impl DiffError {
    /// A refusal of `symbol` for `cause`.
    pub fn refused(cause: Refusal, symbol: &str, why: impl Into<String>) -> Self {
        Self::Refused { cause, symbol: symbol.to_owned(), why: why.into() }
    }

    /// Stable machine-readable cause.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::DoesNotApply(_) => "diff_does_not_apply",
            Self::NotSource(_) => "source_mismatch",
            Self::NoCompiler(_) => "no_compiler",
            Self::Kbuild(_) => "kbuild_failed",
            Self::HeadersOnly(_) => "headers_only",
            Self::UnsupportedFile(_) => "unsupported_file",
            Self::NoChange => "no_change",
            Self::Refused { cause, .. } => cause.as_str(),
            Self::Object(_) => "bad_object",
            Self::Io { .. } => "io",
            Self::Build(e) => e.cause(),
        }
    }
}

//! Why a diff's change cannot be carried by a live patch: the stable cause
//! names of [`super::DiffError::Refused`], one per reason, so a control
//! plane (and the CVE corpus table) can group refusals without parsing text.

use std::fmt;

/// A reason a change is refused (each with its stable cause name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Every file of the diff was refused (`--skip-refused` left nothing).
    AllRefused,
    /// A local name has several copies and the file's own cannot be told apart.
    AmbiguousLocal,
    /// An assembly source file changed.
    Assembly,
    /// Existing data (an initial value, a layout) changed.
    DataChanged,
    /// Replaced code has exception-table entries.
    ExTable,
    /// A symbol the patch needs is not in the target.
    FailedToFind,
    /// A header changed: its users outside the diff are not rebuilt.
    HeaderChanged,
    /// `__init` code changed.
    InitCode,
    /// A module's `.ko` is needed and `--modules` was not given.
    ModuleKoMissing,
    /// A module's `.ko` cannot be read or parsed.
    ModuleKoUnreadable,
    /// A diff of several files that includes a module's file.
    ModuleMultiFile,
    /// The fix adds functions but replaces none.
    NoReplacement,
    /// The file is not built with this configuration.
    NotBuilt,
    /// A changed function is `notrace` (no patchable entry).
    Notrace,
    /// SRC's build of a function is not the running kernel's.
    SourceMismatch,
    /// A WARN site in replaced code cannot be kept.
    WarnSite,
}

impl Refusal {
    /// The stable cause name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllRefused => "all_refused",
            Self::AmbiguousLocal => "ambiguous_local",
            Self::Assembly => "assembly",
            Self::DataChanged => "data_changed",
            Self::ExTable => "ex_table",
            Self::FailedToFind => "failed_to_find",
            Self::HeaderChanged => "header_changed",
            Self::InitCode => "init_code",
            Self::ModuleKoMissing => "module_ko_missing",
            Self::ModuleKoUnreadable => "module_ko_unreadable",
            Self::ModuleMultiFile => "module_multi_file",
            Self::NoReplacement => "no_replacement",
            Self::NotBuilt => "not_built",
            Self::Notrace => "notrace",
            Self::SourceMismatch => "source_mismatch",
            Self::WarnSite => "warn_site",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn cause_names_are_distinct_snake_case() {
        let all = [
            Refusal::AllRefused, Refusal::AmbiguousLocal, Refusal::Assembly, Refusal::DataChanged, Refusal::ExTable,
            Refusal::FailedToFind, Refusal::HeaderChanged, Refusal::InitCode, Refusal::ModuleKoMissing,
            Refusal::ModuleKoUnreadable, Refusal::ModuleMultiFile, Refusal::NoReplacement, Refusal::NotBuilt,
            Refusal::Notrace, Refusal::SourceMismatch, Refusal::WarnSite,
        ];
        let names: std::collections::BTreeSet<&str> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}

//! Which transaction [`Cause`] each lower-layer error stands for: one
//! exhaustive `match` per error enum, so a new variant is a compile error
//! here rather than a silent `unexpected` at run time. The finer reason
//! stays the error's own (`reason()` or `cause()` name).

use super::result::Cause;
use crate::model::{BackendError, TargetError};
use crate::patch::link::LoadError;
use crate::patch::FormatError;

impl From<&LoadError> for Cause {
    fn from(e: &LoadError) -> Self {
        match e {
            LoadError::UnsupportedSection { .. } => Self::UnsupportedSection,
            LoadError::UnknownSymbol { .. } => Self::FailedToFind,
            LoadError::Elf(_)
            | LoadError::Ambiguous { .. }
            | LoadError::UnsupportedRelocation { .. }
            | LoadError::Overflow { .. }
            | LoadError::Malformed(_)
            | LoadError::MissingFunction(_) => Self::BadPatch,
        }
    }
}

impl From<&BackendError> for Cause {
    fn from(e: &BackendError) -> Self {
        match e {
            BackendError::PauseTimeout { .. } => Self::PauseTimeout,
            BackendError::WrongState(_) | BackendError::BadAddress { .. } | BackendError::Transport(_) | BackendError::GuestGone => {
                Self::Unexpected
            }
        }
    }
}

impl From<&TargetError> for Cause {
    fn from(e: &TargetError) -> Self {
        match e {
            TargetError::NotUp(_) => Self::NotUp,
            // Caught mid-update: the pause loop retries, then gives up busy.
            TargetError::Inconsistent(_) => Self::CodeBusy,
            TargetError::Malformed(_) | TargetError::Memory(_) | TargetError::Untrusted { .. } => Self::Unexpected,
        }
    }
}

impl From<&FormatError> for Cause {
    fn from(e: &FormatError) -> Self {
        match e {
            FormatError::Read { .. }
            | FormatError::NotAPatch
            | FormatError::Version(_)
            | FormatError::Truncated { .. }
            | FormatError::Corrupt
            | FormatError::Manifest(_)
            | FormatError::ManifestVersion(_)
            | FormatError::NotElf(_) => Self::BadPatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mem::MemError;

    /// The loader's own cause names (what `vsplice patch build` prints) and
    /// the transaction's causes agree for every variant.
    #[test]
    fn load_errors_agree_with_their_names() {
        let all = [
            LoadError::Elf("x".into()),
            LoadError::UnsupportedSection { name: ".x".into(), reason: "unknown", why: "x".into() },
            LoadError::UnknownSymbol { name: "x".into(), qual: None },
            LoadError::Ambiguous { name: "x".into(), candidates: vec![] },
            LoadError::UnsupportedRelocation { section: ".text".into(), offset: 0, r_type: 1, got: false },
            LoadError::Overflow { section: ".text".into(), offset: 0, r_type: 1, value: 0 },
            LoadError::Malformed("x".into()),
            LoadError::MissingFunction("x".into()),
        ];
        for e in &all {
            assert_eq!(Cause::from(e).name(), e.cause(), "{e:?}");
        }
    }

    #[test]
    fn backend_and_target_errors() {
        assert_eq!(Cause::from(&BackendError::PauseTimeout { timeout_ms: 1 }), Cause::PauseTimeout);
        assert_eq!(Cause::from(&BackendError::GuestGone), Cause::Unexpected);
        assert_eq!(Cause::from(&BackendError::Transport("x".into())), Cause::Unexpected);
        assert_eq!(Cause::from(&TargetError::NotUp("x".into())), Cause::NotUp);
        assert_eq!(Cause::from(&TargetError::Inconsistent("x".into())), Cause::CodeBusy);
        assert_eq!(Cause::from(&TargetError::Memory(MemError::NotMapped { vaddr: 0 })), Cause::Unexpected);
        assert_eq!(Cause::from(&FormatError::Corrupt), Cause::BadPatch);
    }
}

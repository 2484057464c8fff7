//! Which transaction [`Cause`] each lower-layer error stands for: one
//! exhaustive `match` per error enum, so a new variant is a compile error
//! here rather than a silent `unexpected` at run time. The finer reason
//! stays the error's own (`reason()` or `cause()` name).

use super::result::{chain, Cause, TxnReport};
use crate::model::{BackendError, TargetError};
use crate::patch::link::LoadError;
use crate::patch::sign::SignError;
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
            // Sources disagreeing for good (the pause loop decides when).
            TargetError::Disputed { .. } => Self::Unexpected,
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
            | FormatError::NotElf(_)
            | FormatError::HeaderSize(_)
            | FormatError::TooLarge { .. }
            | FormatError::TrailingBytes(_)
            | FormatError::NotRegular { .. }
            | FormatError::Invalid { .. } => Self::BadPatch,
        }
    }
}

impl From<&SignError> for Cause {
    fn from(e: &SignError) -> Self {
        match e {
            SignError::Unsigned => Self::Unsigned,
            SignError::BadSignature(_) => Self::BadSignature,
            SignError::UntrustedKey(_) => Self::UntrustedKey,
            SignError::Format(_) => Self::BadPatch,
            SignError::Read { .. } | SignError::Write { .. } | SignError::BadKeyFile { .. } | SignError::Rng(_) | SignError::NoKeys(_) => Self::Unexpected,
        }
    }
}

/// The `apply` report of a patch the trust policy refused (nothing read or
/// written in the guest).
pub fn trust_refusal(e: &SignError) -> TxnReport {
    TxnReport::refused("apply", None, None, Cause::from(e), Some(e.cause()), chain(e))
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

    #[test]
    fn trust_refusals_report_their_own_causes_before_the_guest_is_touched() {
        let fp = crate::patch::sign::Fingerprint([7; 8]);
        for (e, name) in [(SignError::Unsigned, "unsigned"), (SignError::BadSignature(fp), "bad_signature"), (SignError::UntrustedKey(fp), "untrusted_key")] {
            let r = trust_refusal(&e);
            assert_eq!((r.cause.name(), r.reason.as_deref(), r.stage), (name, Some(name), crate::txn::result::Stage::Prepare));
            assert_eq!(r.timings.downtime_us, 0);
        }
        assert!(trust_refusal(&SignError::UntrustedKey(fp)).message.contains("0707070707070707"));
    }
}

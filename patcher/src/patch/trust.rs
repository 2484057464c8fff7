//! Who may patch: the trusted keys (`--trusted-keys DIR`, a directory of
//! `*.pub`) and `--allow-unsigned`. Callers consult [`TrustPolicy::admit`]
//! with a patch file's bytes before anything touches the guest; a refusal
//! becomes a transaction report (`crate::txn::causes::trust_refusal`) with
//! cause `unsigned`, `bad_signature` or `untrusted_key` (stage `prepare`,
//! nothing read or written in the guest).
//!
//! Without trusted keys nothing is checked (as before signing existed).

use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::sign::{self, Fingerprint, SignError};

/// Most `*.pub` files read from a trusted-keys directory.
pub const MAX_TRUSTED_KEYS: usize = 1024;

/// The note (and stderr warning) every unsigned patch let through by
/// `--allow-unsigned` carries.
pub const ALLOW_UNSIGNED_NOTE: &str = "UNSIGNED patch applied because of --allow-unsigned: its author is unknown (development only)";

/// Which patches are let through.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// The trusted keys; empty = no checking.
    keys: Vec<VerifyingKey>,
    /// Let unsigned patches through (with a note).
    allow_unsigned: bool,
}

/// A patch let through: what to tell the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// The key that signed it, when verified.
    pub signer: Option<Fingerprint>,
    /// Notes for the transaction report (and, for `--allow-unsigned`, a
    /// warning the caller prints on stderr).
    pub notes: Vec<String>,
}

impl Admission {
    /// True when the caller must warn on stderr (an unsigned patch let through).
    pub fn warns(&self) -> bool {
        self.notes.iter().any(|n| n == ALLOW_UNSIGNED_NOTE)
    }
}

impl TrustPolicy {
    /// No checking (no `--trusted-keys`).
    pub fn none() -> Self {
        Self::default()
    }

    /// These keys.
    pub fn with_keys(keys: Vec<VerifyingKey>, allow_unsigned: bool) -> Self {
        Self { keys, allow_unsigned }
    }

    /// From the command line: `--trusted-keys DIR` (every `*.pub` in it; an
    /// empty directory is refused, `no_trusted_keys`) and `--allow-unsigned`.
    pub fn from_args(dir: Option<&Path>, allow_unsigned: bool) -> Result<Self, SignError> {
        let Some(dir) = dir else {
            return Ok(Self { keys: Vec::new(), allow_unsigned });
        };
        let rerr = |source| SignError::Read { path: dir.to_owned(), source };
        let mut paths = Vec::new();
        for e in std::fs::read_dir(dir).map_err(rerr)? {
            let p = e.map_err(rerr)?.path();
            if p.extension().is_some_and(|x| x == "pub") {
                paths.push(p);
                if paths.len() > MAX_TRUSTED_KEYS {
                    return Err(SignError::BadKeyFile { path: dir.to_owned(), kind: "public", why: "more than 1024 *.pub files" });
                }
            }
        }
        paths.sort();
        let keys = paths.iter().map(|p| sign::read_public(p)).collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SignError::NoKeys(dir.to_owned()));
        }
        Ok(Self { keys, allow_unsigned })
    }

    /// True when patches are checked.
    pub fn enforcing(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The fingerprints of the trusted keys.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        self.keys.iter().map(Fingerprint::of).collect()
    }

    /// Lets a patch file through or refuses it. An unusable file is let
    /// through here: parsing refuses it (`bad_patch`) with its reason.
    pub fn admit(&self, bytes: &[u8]) -> Result<Admission, SignError> {
        if !self.enforcing() {
            let unsigned = matches!(sign::split(bytes), Ok((_, None)));
            let notes = if self.allow_unsigned && unsigned { vec![ALLOW_UNSIGNED_NOTE.to_owned()] } else { Vec::new() };
            return Ok(Admission { signer: None, notes });
        }
        match sign::verify(bytes, &self.keys) {
            Ok(key) => Ok(Admission { signer: Some(key), notes: vec![format!("signature verified: key {key}")] }),
            Err(SignError::Unsigned) if self.allow_unsigned => Ok(Admission { signer: None, notes: vec![ALLOW_UNSIGNED_NOTE.to_owned()] }),
            Err(SignError::Format(_)) => Ok(Admission::default()),
            Err(e) => Err(e),
        }
    }

}

//! Signed patch files: ed25519 keys (`ed25519-dalek`), the signature block
//! at the end of a `.vsp`, and verification.
//!
//! A signed patch file is the unsigned file followed by one 80-byte block:
//!
//! ```text
//! off  size  field
//! 0     8    magic "VSPSIG01"
//! 8     8    key fingerprint: the first 8 bytes of SHA-256 of the public key
//! 16   64    ed25519 signature over every byte before it (the whole patch
//!            file, then the block's magic and fingerprint)
//! ```
//!
//! The header's lengths say exactly where the patch ends, so a block is
//! never confused with object bytes; anything else after the object is
//! refused (`trailing_bytes`). Key files are one text line each:
//! `vsplice-ed25519-secret HEX` (the 32-byte seed, mode 0600) and
//! `vsplice-ed25519-public HEX` (`KEY.pub`). What a caller does with the
//! verdict is [`super::trust::TrustPolicy`]'s business.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use ed25519_dalek::{SigningKey, VerifyingKey};
use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use super::format::{FINGERPRINT_LEN, SIG_BLOCK_LEN, SIG_MAGIC};
use super::format::{self, FormatError};
/// Largest key file read (they are one short line).
const MAX_KEY_FILE: u64 = 4096;
const SECRET_TAG: &str = "vsplice-ed25519-secret";
const PUBLIC_TAG: &str = "vsplice-ed25519-public";

/// A key's fingerprint: the first 8 bytes of SHA-256 of its public key,
/// shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// The fingerprint of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let d = Sha256::digest(key.as_bytes());
        let mut f = [0u8; FINGERPRINT_LEN];
        f.copy_from_slice(&d[..FINGERPRINT_LEN]);
        Self(f)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::os::elf::hex(&self.0))
    }
}

/// Why a key or a signature cannot be used.
#[derive(Debug, Error)]
pub enum SignError {
    /// A key file (or the trusted-keys directory) cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file cannot be written (or already exists).
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not one of ours.
    #[error("{path} is not a vsplice ed25519 {kind} key file: {why}")]
    BadKeyFile {
        /// The path.
        path: PathBuf,
        /// `secret` or `public`.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Rng(String),
    /// The trusted-keys directory holds no `*.pub` key.
    #[error("the trusted-keys directory {0} holds no *.pub key")]
    NoKeys(PathBuf),
    /// The bytes are not a patch file that can be signed.
    #[error("not a patch file that can be signed")]
    Format(#[source] FormatError),
    /// The patch file carries no signature.
    #[error("the patch file is not signed")]
    Unsigned,
    /// The signature does not verify with the key it names.
    #[error("the patch file's signature does not verify with key {0} (the file was changed after signing, or the signature is forged)")]
    BadSignature(Fingerprint),
    /// The signing key is not a trusted one.
    #[error("the patch file is signed by key {0}, which is not among the trusted keys")]
    UntrustedKey(Fingerprint),
}

impl SignError {
    /// Stable cause name.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Read { .. } => "key_unreadable",
            Self::Write { .. } => "key_unwritable",
            Self::BadKeyFile { .. } => "bad_key_file",
            Self::Rng(_) => "rng_failed",
            Self::NoKeys(_) => "no_trusted_keys",
            Self::Format(_) => "bad_patch",
            Self::Unsigned => "unsigned",
            Self::BadSignature(_) => "bad_signature",
            Self::UntrustedKey(_) => "untrusted_key",
        }
    }
}

/// The signature block of a signed patch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureBlock {
    /// The key it names.
    pub key: Fingerprint,
    /// The signature.
    pub signature: Signature,
}

/// Splits a patch file into the unsigned file and its signature block (if
/// any), by the header's lengths ([`format::split_signature`]).
pub fn split(bytes: &[u8]) -> Result<(&[u8], Option<SignatureBlock>), FormatError> {
    let (head, rest) = format::split_signature(bytes)?;
    let Some(rest) = rest else {
        return Ok((head, None));
    };
    let mut key = [0u8; FINGERPRINT_LEN];
    key.copy_from_slice(&rest[8..16]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&rest[16..]);
    Ok((head, Some(SignatureBlock { key: Fingerprint(key), signature: Signature::from_bytes(&sig) })))
}

/// What the signature covers: the unsigned file, the magic and the fingerprint.
fn signed_message(body: &[u8], key: Fingerprint) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 16);
    m.extend_from_slice(body);
    m.extend_from_slice(SIG_MAGIC);
    m.extend_from_slice(&key.0);
    m
}

/// Signs a patch file (replacing a signature it already has).
pub fn sign(bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignError> {
    let (body, _) = split(bytes).map_err(SignError::Format)?;
    let fp = Fingerprint::of(&key.verifying_key());
    let mut out = signed_message(body, fp);
    let sig = key.sign(&out);
    out.extend_from_slice(&sig.to_bytes());
    Ok(out)
}

/// Checks a signed patch file against `keys`: `Ok(key)` names the key that
/// signed it; refusals are `unsigned`, `untrusted_key`, `bad_signature`.
pub fn verify(bytes: &[u8], keys: &[VerifyingKey]) -> Result<Fingerprint, SignError> {
    let (body, block) = split(bytes).map_err(SignError::Format)?;
    let block = block.ok_or(SignError::Unsigned)?;
    let key = keys.iter().find(|k| Fingerprint::of(k) == block.key).ok_or(SignError::UntrustedKey(block.key))?;
    key.verify_strict(&signed_message(body, block.key), &block.signature).map_err(|_| SignError::BadSignature(block.key))?;
    Ok(block.key)
}

/// A fresh key from the OS random number generator.
pub fn generate() -> Result<SigningKey, SignError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SignError::Rng(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key file's path for a secret key file: `KEY.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Writes `secret` (created mode 0600, never over an existing file) and
/// `KEY.pub`.
pub fn write_keypair(key: &SigningKey, secret: &Path) -> Result<PathBuf, SignError> {
    use std::os::unix::fs::OpenOptionsExt;
    let public = public_path(secret);
    let write = |path: &Path, mode: u32, text: String| {
        let werr = |source| SignError::Write { path: path.to_owned(), source };
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(werr)?;
        f.write_all(text.as_bytes()).map_err(werr)
    };
    write(secret, 0o600, format!("{SECRET_TAG} {}\n", crate::os::elf::hex(key.as_bytes())))?;
    write(&public, 0o644, format!("{PUBLIC_TAG} {}\n", crate::os::elf::hex(key.verifying_key().as_bytes())))?;
    Ok(public)
}

/// Reads a key file's 32 bytes after its tag (bounded, never a panic).
fn read_key(path: &Path, tag: &str, kind: &'static str) -> Result<[u8; 32], SignError> {
    let bad = |why| SignError::BadKeyFile { path: path.to_owned(), kind, why };
    let rerr = |source| SignError::Read { path: path.to_owned(), source };
    let f = std::fs::File::open(path).map_err(rerr)?;
    if !f.metadata().map_err(rerr)?.is_file() {
        return Err(bad("not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_KEY_FILE + 1).read_to_string(&mut text).map_err(|_| bad("not text"))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(bad("too large"));
    }
    let mut words = text.split_whitespace();
    if words.next() != Some(tag) {
        return Err(bad("wrong tag (a secret key where a public one belongs, or another format)"));
    }
    let hex = words.next().ok_or_else(|| bad("no key"))?;
    if words.next().is_some() || hex.len() != 64 {
        return Err(bad("the key is not 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(|| bad("not hex"))?, 16).map_err(|_| bad("not hex"))?;
    }
    Ok(out)
}

/// Reads a secret key file.
pub fn read_secret(path: &Path) -> Result<SigningKey, SignError> {
    Ok(SigningKey::from_bytes(&read_key(path, SECRET_TAG, "secret")?))
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<VerifyingKey, SignError> {
    let b = read_key(path, PUBLIC_TAG, "public")?;
    VerifyingKey::from_bytes(&b).map_err(|_| SignError::BadKeyFile { path: path.to_owned(), kind: "public", why: "not a valid ed25519 point" })
}

#[cfg(test)]
#[path = "sign_tests.rs"]
mod tests;

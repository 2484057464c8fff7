//! Signed patches on the command line: `vsplice patch keygen`, `sign`,
//! `verify`, and the `--trusted-keys DIR` / `--allow-unsigned` flags that
//! `vsplice run`, `vsplice attach` and `vsplice patch apply` share.
//!
//! A signature is a block appended to the `.vsp` (the patch file format
//! reads it and refuses any other trailing byte); it covers every other
//! byte of the file and names its key by fingerprint. With trusted keys
//! configured, an unsigned patch is refused `unsigned`, a signature that
//! does not verify `bad_signature`, one by another key `untrusted_key` —
//! before anything touches the guest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use vsplice_patcher::patch::format::read_bounded;
use vsplice_patcher::patch::sign::{self, Fingerprint};
use vsplice_patcher::patch::trust::{Admission, TrustPolicy, ALLOW_UNSIGNED_NOTE};
use vsplice_patcher::txn::causes::trust_refusal;
use vsplice_patcher::txn::TxnReport;

use super::run::EXIT_BAD_INPUT;

/// Exit code of `vsplice patch verify` for a patch that does not verify.
pub const EXIT_NOT_VERIFIED: u8 = 3;

/// Who may patch (`vsplice run`, `vsplice attach`, `vsplice patch apply`).
#[derive(Debug, Clone, Default, Args)]
pub struct TrustArgs {
    /// Directory of trusted public keys (`*.pub`, made by `vsplice patch keygen`). With it,
    /// every patch (`--live-patch`, `PUT /patches`, `patch apply`) must be signed by one of
    /// them: an unsigned patch is refused `unsigned`, a signature that does not verify
    /// `bad_signature`, another key's `untrusted_key`, before anything touches the guest.
    #[arg(long, value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
    /// Development only: let unsigned patches through even with --trusted-keys. Every use
    /// prints a warning on stderr and a note in the transaction's report.
    #[arg(long)]
    pub allow_unsigned: bool,
}

impl TrustArgs {
    /// The policy, or the one-line error (exit code 1).
    pub fn policy(&self) -> Result<TrustPolicy, ExitCode> {
        TrustPolicy::from_args(self.trusted_keys.as_deref(), self.allow_unsigned).map_err(|e| {
            super::report(&e, e.cause());
            ExitCode::from(EXIT_BAD_INPUT)
        })
    }
}

/// Lets `bytes` through `policy` (printing the `--allow-unsigned` warning)
/// or returns the refusal report.
pub fn admit(policy: &TrustPolicy, bytes: &[u8], what: &Path) -> Result<Admission, Box<TxnReport>> {
    let a = policy.admit(bytes).map_err(|e| Box::new(trust_refusal(&e)))?;
    if a.warns() {
        eprintln!("vsplice: warning: {}: {ALLOW_UNSIGNED_NOTE}", what.display());
    }
    Ok(a)
}

/// `vsplice patch keygen`.
pub fn keygen(output: &Path) -> ExitCode {
    let written = sign::generate().and_then(|k| sign::write_keypair(&k, output).map(|p| (k, p)));
    match written {
        Ok((k, public)) => {
            println!("{} {}", Fingerprint::of(&k.verifying_key()), public.display());
            eprintln!("vsplice: secret key {} (mode 0600: keep it secret), public key {}", output.display(), public.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::report(&e, e.cause());
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// `vsplice patch sign`: writes the signed file to `output` (default: in place).
pub fn sign_file(key: &Path, file: &Path, output: Option<&Path>) -> ExitCode {
    let out = output.unwrap_or(file);
    let result = sign::read_secret(key).and_then(|k| {
        let bytes = read_bounded(file).map_err(sign::SignError::Format)?;
        let signed = sign::sign(&bytes, &k)?;
        // Write beside, then rename: a reader never sees half a file.
        let tmp = out.with_extension("vsp.signing");
        std::fs::write(&tmp, &signed).and_then(|()| std::fs::rename(&tmp, out)).map_err(|source| sign::SignError::Write { path: out.to_owned(), source })?;
        Ok(Fingerprint::of(&k.verifying_key()))
    });
    match result {
        Ok(fp) => {
            println!("{fp} {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::report(&e, e.cause());
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// `vsplice patch verify`: exit 0 and the signer's key id when the file
/// verifies with a trusted key (`trusted_keys`) or with `key` (said to be
/// unchecked against a trust store); 3 and the cause when it does not, or
/// when neither was given (`no_key`: the key id is printed, the signature
/// cannot be checked without the public key).
pub fn verify_file(trusted_keys: Option<&Path>, key: Option<&Path>, file: &Path) -> ExitCode {
    let keys = match (trusted_keys, key) {
        (Some(dir), _) => TrustPolicy::from_args(Some(dir), false).map(|p| Some((p, None))),
        (None, Some(k)) => sign::read_public(k).map(|pk| Some((TrustPolicy::with_keys(vec![pk], false), Some(k)))),
        (None, None) => Ok(None),
    };
    let keys = match keys {
        Ok(k) => k,
        Err(e) => {
            super::report(&e, e.cause());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let bytes = match read_bounded(file) {
        Ok(b) => b,
        Err(e) => {
            super::report(&e, e.reason());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // The file must also be a patch this vsplice reads.
    if let Err(e) = vsplice_patcher::patch::PatchFile::parse(&bytes) {
        super::report(&e, e.reason());
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let Some((policy, one_key)) = keys else {
        return match sign::split(&bytes) {
            Ok((_, Some(b))) => {
                println!("signed: {} names key {}", file.display(), b.key);
                eprintln!(
                    "vsplice: not verified [no_key]: the signature cannot be checked without the signer's public key: \
                     give it with --key FILE.pub, or check against a trust store with --trusted-keys DIR"
                );
                ExitCode::from(EXIT_NOT_VERIFIED)
            }
            Ok((_, None)) => {
                eprintln!("vsplice: not verified [unsigned]: {} has no signature", file.display());
                ExitCode::from(EXIT_NOT_VERIFIED)
            }
            Err(e) => {
                super::report(&e, e.reason());
                ExitCode::from(EXIT_BAD_INPUT)
            }
        };
    };
    match policy.admit(&bytes) {
        Ok(Admission { signer: Some(fp), .. }) => {
            match one_key {
                Some(k) => {
                    println!("verified: {} signed by {fp} (key {})", file.display(), k.display());
                    eprintln!("vsplice: the key was not checked against a trust store (--trusted-keys DIR does)");
                }
                None => println!("verified: {} signed by {fp}", file.display()),
            }
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("vsplice: error [unexpected]: {} was let through without a signer", file.display());
            ExitCode::from(EXIT_NOT_VERIFIED)
        }
        Err(e) => {
            eprintln!("vsplice: not verified [{}]: {}: {}", e.cause(), file.display(), vsplice_patcher::model::chain(&e));
            ExitCode::from(EXIT_NOT_VERIFIED)
        }
    }
}

/// The signature line `vsplice patch info` prints on stderr.
pub fn describe_signature(bytes: &[u8]) -> String {
    match sign::split(bytes) {
        Ok((_, Some(b))) => format!("signed by key {} (not verified here: `vsplice patch verify --trusted-keys DIR` or `--key FILE.pub` checks it)", b.key),
        Ok((_, None)) => "unsigned".to_owned(),
        Err(e) => format!("unreadable signature: {e}"),
    }
}

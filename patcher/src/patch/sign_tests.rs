//! Unit tests of [`super`] and of the trust policy: round trip, tampering,
//! other keys, unsigned files, key files.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::patch::trust::{TrustPolicy, ALLOW_UNSIGNED_NOTE};
use crate::patch::PatchFile;

/// A small valid unsigned patch file (no replacements; a bare ELF header as its object).
fn sample_patch_bytes() -> Vec<u8> {
    use crate::patch::manifest::{patch_id, Manifest, TargetSpec, MANIFEST_VERSION};
    let mut object = vec![0u8; 64];
    object[..4].copy_from_slice(b"\x7fELF");
    (object[4], object[5], object[16], object[18]) = (2, 1, 1, 62);
    let manifest = Manifest {
        format: MANIFEST_VERSION,
        name: "s".into(),
        id: patch_id("s", &object),
        target: TargetSpec { kind: crate::model::TargetKind::TestGuest, build_id: None },
        cumulative: false,
        replacements: vec![],
        symbols: vec![],
        build: Default::default(),
        info: Default::default(),
    };
    PatchFile { manifest, object }.to_bytes().unwrap()
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

#[test]
fn signed_files_verify_parse_and_say_who_signed_them() {
    let unsigned = sample_patch_bytes();
    let k = key(1);
    let signed = sign(&unsigned, &k).unwrap();
    assert_eq!(signed.len(), unsigned.len() + SIG_BLOCK_LEN);
    assert_eq!(&signed[..unsigned.len()], &unsigned[..]);
    assert_eq!(verify(&signed, &[k.verifying_key()]).unwrap(), Fingerprint::of(&k.verifying_key()));
    // The parser reads a signed file as the same patch.
    assert_eq!(PatchFile::parse(&signed).unwrap(), PatchFile::parse(&unsigned).unwrap());
    // Signing again replaces the signature (same key: same bytes, ed25519 is deterministic).
    assert_eq!(sign(&signed, &k).unwrap(), signed);
    assert_eq!(Fingerprint::of(&k.verifying_key()).to_string().len(), 16);
}

#[test]
fn every_tampered_byte_is_a_bad_signature_or_a_refused_file() {
    let k = key(2);
    let signed = sign(&sample_patch_bytes(), &k).unwrap();
    let keys = [k.verifying_key()];
    // A byte of the manifest, of the object, of the block's signature.
    for at in [70, signed.len() - SIG_BLOCK_LEN - 1, signed.len() - 1] {
        let mut t = signed.clone();
        t[at] ^= 0x40;
        assert_eq!(verify(&t, &keys).unwrap_err().cause(), "bad_signature", "byte {at}");
    }
    // The fingerprint changed: the key it names is not trusted.
    let mut t = signed.clone();
    t[signed.len() - SIG_BLOCK_LEN + 8] ^= 1;
    assert_eq!(verify(&t, &keys).unwrap_err().cause(), "untrusted_key");
    // A cut block is trailing bytes, not a signature.
    assert_eq!(verify(&signed[..signed.len() - 1], &keys).unwrap_err().cause(), "bad_patch");
}

#[test]
fn other_keys_and_unsigned_files_are_refused_with_their_causes() {
    let signed = sign(&sample_patch_bytes(), &key(3)).unwrap();
    let policy = TrustPolicy::with_keys(vec![key(4).verifying_key()], false);
    let e = policy.admit(&signed).unwrap_err();
    assert_eq!(e.cause(), "untrusted_key");
        assert_eq!(policy.admit(&sample_patch_bytes()).unwrap_err().cause(), "unsigned");
    // Trusted: let through, with a note naming the key.
    let ok = TrustPolicy::with_keys(vec![key(4).verifying_key(), key(3).verifying_key()], false).admit(&signed).unwrap();
    assert_eq!(ok.signer, Some(Fingerprint::of(&key(3).verifying_key())));
    assert!(!ok.warns());
    // An unusable file is left to the parser's `bad_patch`.
    assert_eq!(policy.admit(b"junk").unwrap(), Default::default());
}

#[test]
fn allow_unsigned_lets_unsigned_through_with_a_note_every_time() {
    let policy = TrustPolicy::with_keys(vec![key(5).verifying_key()], true);
    for _ in 0..2 {
        let a = policy.admit(&sample_patch_bytes()).unwrap();
        assert_eq!(a.notes, vec![ALLOW_UNSIGNED_NOTE.to_owned()]);
        assert!(a.warns());
    }
    // A bad signature is refused all the same.
    let mut bad = sign(&sample_patch_bytes(), &key(5)).unwrap();
    bad[70] ^= 1;
    assert_eq!(policy.admit(&bad).unwrap_err().cause(), "bad_signature");
    // Without keys: nothing checked, but --allow-unsigned still says so.
    assert!(TrustPolicy::none().admit(&sample_patch_bytes()).unwrap().notes.is_empty());
    assert!(TrustPolicy::with_keys(vec![], true).admit(&sample_patch_bytes()).unwrap().warns());
}

#[test]
fn key_files_round_trip_and_bad_ones_are_named() {
    let dir = std::env::temp_dir().join(format!("vsplice-sign-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("k");
    let k = generate().unwrap();
    let public = write_keypair(&k, &secret).unwrap();
    assert_eq!(public, dir.join("k.pub"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(read_secret(&secret).unwrap().to_bytes(), k.to_bytes());
    assert_eq!(read_public(&public).unwrap(), k.verifying_key());
    // Never over an existing key.
    assert_eq!(write_keypair(&k, &secret).unwrap_err().cause(), "key_unwritable");
    // A secret key where a public one belongs, garbage, a FIFO-free directory.
    assert_eq!(read_public(&secret).unwrap_err().cause(), "bad_key_file");
    std::fs::write(dir.join("junk.pub"), "vsplice-ed25519-public zz").unwrap();
    assert_eq!(read_public(&dir.join("junk.pub")).unwrap_err().cause(), "bad_key_file");
    assert_eq!(TrustPolicy::from_args(Some(&dir), false).unwrap_err().cause(), "bad_key_file");
    std::fs::remove_file(dir.join("junk.pub")).unwrap();
    let p = TrustPolicy::from_args(Some(&dir), false).unwrap();
    assert_eq!(p.fingerprints(), vec![Fingerprint::of(&k.verifying_key())]);
    std::fs::remove_file(&public).unwrap();
    assert_eq!(TrustPolicy::from_args(Some(&dir), false).unwrap_err().cause(), "no_trusted_keys");
    assert_eq!(read_secret(&dir).unwrap_err().cause(), "bad_key_file");
    std::fs::remove_dir_all(&dir).unwrap();
}

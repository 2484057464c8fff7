//! Signed patches as an operator uses them: `vsplice patch keygen`, `sign`,
//! `verify` and `info` on a test-guest patch; `vsplice run --trusted-keys`
//! with a signed and an unsigned `--live-patch` (the signed one applies,
//! the unsigned one is refused `unsigned`, the guest runs on; with
//! `--allow-unsigned` it applies, with a warning and a note); and through
//! the API, a tampered signature refused `bad_signature` (422) and an
//! unsigned patch `unsigned` (403), both before the guest is touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use vsplice_tests::api::{build_example, ApiVm};
use vsplice_tests::cli::{text, vsplice};
use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::{livepatch, testguest};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A key pair in `dir/keys` (the trusted-keys directory holds only `KEY.pub`).
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let keys = dir.join(format!("{name}-trusted"));
    std::fs::create_dir_all(&keys).unwrap();
    let secret = dir.join(name);
    let o = vsplice(&["patch", "keygen", "-o", s(&secret)]);
    assert!(o.status.success(), "keygen: {}", text(&o.stderr));
    std::fs::rename(dir.join(format!("{name}.pub")), keys.join(format!("{name}.pub"))).unwrap();
    (secret, keys)
}

#[test]
fn keygen_sign_verify_info_and_every_refusal_by_the_cli() {
    assert!(testguest::image().is_file(), "{} missing: run images/build-testguest.sh", testguest::image().display());
    let dir = tmp_dir("signed-cli");
    let vsp = build_example(&dir, "step_b_v2.c");
    let (secret, keys) = keygen(&dir, "ours");
    let (other, _) = keygen(&dir, "theirs");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    // Never over an existing key.
    let again = vsplice(&["patch", "keygen", "-o", s(&secret)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("[key_unwritable]"), "{}", text(&again.stderr));

    // Unsigned: verify says so (exit 3), info says so.
    let v = vsplice(&["patch", "verify", "--trusted-keys", s(&keys), s(&vsp)]);
    assert_eq!(v.status.code(), Some(3), "{}", text(&v.stderr));
    assert!(text(&v.stderr).contains("[unsigned]"), "{}", text(&v.stderr));
    let i = vsplice(&["patch", "info", s(&vsp)]);
    assert!(i.status.success() && text(&i.stderr).contains("unsigned"), "{}", text(&i.stderr));

    // Signed into a new file: verifies, info names the key, the manifest is unchanged.
    let signed = dir.join("signed.vsp");
    let o = vsplice(&["patch", "sign", "--key", s(&secret), "-o", s(&signed), s(&vsp)]);
    assert!(o.status.success(), "sign: {}", text(&o.stderr));
    let fp = text(&o.stdout).split_whitespace().next().unwrap().to_owned();
    assert_eq!(fp.len(), 16, "{}", text(&o.stdout));
    let v = vsplice(&["patch", "verify", "--trusted-keys", s(&keys), s(&signed)]);
    assert!(v.status.success(), "{}", text(&v.stderr));
    assert!(text(&v.stdout).contains(&format!("signed by {fp}")), "{}", text(&v.stdout));
    let i2 = vsplice(&["patch", "info", s(&signed)]);
    assert_eq!(text(&i2.stdout), text(&i.stdout));
    assert!(text(&i2.stderr).contains(&format!("signed by key {fp}")), "{}", text(&i2.stderr));

    // No trust store: with the signer's public key the signature is checked
    // (and the output says the key was not checked against a trust store);
    // with no key at all the key id is printed and it is not verified.
    let public = keys.join("ours.pub");
    let v = vsplice(&["patch", "verify", "--key", s(&public), s(&signed)]);
    assert!(v.status.success(), "{}", text(&v.stderr));
    assert!(text(&v.stdout).contains(&format!("signed by {fp}")), "{}", text(&v.stdout));
    assert!(text(&v.stderr).contains("not checked against a trust store"), "{}", text(&v.stderr));
    let v = vsplice(&["patch", "verify", s(&signed)]);
    assert_eq!(v.status.code(), Some(3), "{}", text(&v.stderr));
    assert!(text(&v.stdout).contains(&fp) && text(&v.stderr).contains("[no_key]"), "{}\n{}", text(&v.stdout), text(&v.stderr));
    let v = vsplice(&["patch", "verify", s(&vsp)]);
    assert_eq!(v.status.code(), Some(3));
    assert!(text(&v.stderr).contains("[unsigned]"), "{}", text(&v.stderr));

    // One flipped byte: bad_signature. Another key: untrusted_key.
    let mut b = std::fs::read(&signed).unwrap();
    let last = b.len() - 1;
    b[last] ^= 1; // in the signature itself: the file's checksum still holds
    let tampered = dir.join("tampered.vsp");
    std::fs::write(&tampered, &b).unwrap();
    let v = vsplice(&["patch", "verify", "--trusted-keys", s(&keys), s(&tampered)]);
    assert_eq!(v.status.code(), Some(3), "{}", text(&v.stderr));
    assert!(text(&v.stderr).contains("[bad_signature]"), "{}", text(&v.stderr));
    let theirs = dir.join("theirs.vsp");
    assert!(vsplice(&["patch", "sign", "--key", s(&other), "-o", s(&theirs), s(&vsp)]).status.success());
    let v = vsplice(&["patch", "verify", "--trusted-keys", s(&keys), s(&theirs)]);
    assert_eq!(v.status.code(), Some(3));
    assert!(text(&v.stderr).contains("[untrusted_key]"), "{}", text(&v.stderr));
    let v = vsplice(&["patch", "verify", "--key", s(&public), s(&theirs)]);
    assert_eq!(v.status.code(), Some(3));
    assert!(text(&v.stderr).contains("[untrusted_key]"), "{}", text(&v.stderr));
    let v = vsplice(&["patch", "verify", "--key", s(&public), s(&tampered)]);
    assert_eq!(v.status.code(), Some(3));
    assert!(text(&v.stderr).contains("[bad_signature]"), "{}", text(&v.stderr));
    // Trailing bytes after a signature: not a patch any more.
    let mut t = std::fs::read(&signed).unwrap();
    t.push(0);
    std::fs::write(&tampered, &t).unwrap();
    let i = vsplice(&["patch", "info", s(&tampered)]);
    assert_eq!(i.status.code(), Some(1));
    assert!(text(&i.stderr).contains("[trailing_bytes]"), "{}", text(&i.stderr));
    // An empty trusted-keys directory is an error, not "trust nothing".
    let empty = tmp_dir("signed-cli-empty");
    let v = vsplice(&["patch", "verify", "--trusted-keys", s(&empty), s(&signed)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(text(&v.stderr).contains("[no_trusted_keys]"), "{}", text(&v.stderr));

    // The operator's fields.
    let src = livepatch::example("step_b_v2.c");
    let out = dir.join("info.vsp");
    let o = vsplice(&[
        "patch", "build", "--kernel", s(&testguest::image()), "--description", "step B, version 2", "--cve", "CVE-2024-0001",
        "--version", "2", "-o", s(&out), s(&src),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&vsplice(&["patch", "info", s(&out)]).stdout).unwrap();
    assert_eq!((m["description"].as_str(), m["cves"][0].as_str(), m["version"].as_str()), (Some("step B, version 2"), Some("CVE-2024-0001"), Some("2")));
    let o = vsplice(&["patch", "build", "--kernel", s(&testguest::image()), "--cve", "CVE-1", "-o", s(&out), s(&src)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("[bad_info]"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_with_trusted_keys_applies_the_signed_patch_and_refuses_the_unsigned_one() {
    let _g = testguest::vm_lock();
    if !testguest::ready("cli_signed_run") {
        return;
    }
    let dir = tmp_dir("signed-run");
    let vsp = build_example(&dir, "step_b_v2.c");
    let (secret, keys) = keygen(&dir, "ours");
    let signed = dir.join("signed.vsp");
    assert!(vsplice(&["patch", "sign", "--key", s(&secret), "-o", s(&signed), s(&vsp)]).status.success());
    let out = vsplice(&[
        "run", "--kernel", s(&testguest::image()), "--vcpus", "2", "--memory", "64", "--serial", "stdio",
        "--cmdline", "tg.tasks=2 tg.iters=8 tg.wait=5", "--trusted-keys", s(&keys),
        "--live-patch", s(&vsp), "--live-patch", s(&signed),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "status {:?}\n{stderr}", out.status);
    let results: Vec<&str> = stderr.lines().filter(|l| l.starts_with("vsplice: live-patch ")).collect();
    assert_eq!(results.len(), 2, "{stderr}");
    assert!(results[0].contains("\"cause\":\"unsigned\""), "{stderr}");
    assert!(results[1].contains("\"cause\":\"ok\"") && results[1].contains("signature verified"), "{stderr}");
    // The guest ran on to its end, patched by the signed copy.
    let lines = testguest::parse_all(&stdout).expect("no torn line");
    let mut last = std::collections::BTreeMap::new();
    for l in &lines {
        last.insert((l.cpu, l.task), l.value == livepatch::value_step_b_v2(l.iter));
    }
    assert_eq!(last.len(), 4, "{stdout}");
    assert!(last.values().all(|&patched| patched), "a task ended unpatched:\n{stdout}");

    // --allow-unsigned: the unsigned patch applies, and says so on stderr and in its report.
    let out = vsplice(&[
        "run", "--kernel", s(&testguest::image()), "--vcpus", "1", "--memory", "64", "--serial", "null",
        "--cmdline", "tg.tasks=1 tg.iters=4 tg.wait=5", "--trusted-keys", s(&keys), "--allow-unsigned", "--live-patch", s(&vsp),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "status {:?}\n{stderr}", out.status);
    assert!(stderr.lines().any(|l| l.starts_with("vsplice: warning:") && l.contains("--allow-unsigned")), "{stderr}");
    let result = stderr.lines().find(|l| l.starts_with("vsplice: live-patch ")).unwrap_or_else(|| panic!("no result:\n{stderr}"));
    assert!(result.contains("\"cause\":\"ok\"") && result.contains("UNSIGNED patch applied"), "{result}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_api_refuses_a_bad_signature_and_an_unsigned_patch_before_the_guest() {
    let _g = testguest::vm_lock();
    if !testguest::ready("api_signed") {
        return;
    }
    let dir = tmp_dir("signed-api");
    let vsp = build_example(&dir, "step_b_v2.c");
    let (secret, keys) = keygen(&dir, "ours");
    let signed = dir.join("signed.vsp");
    assert!(vsplice(&["patch", "sign", "--key", s(&secret), "-o", s(&signed), s(&vsp)]).status.success());
    let vm = ApiVm::start("signed", "tg.tasks=2 tg.iters=400 tg.wait=5", &["--trusted-keys", s(&keys)]);
    let mut bad = std::fs::read(&signed).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1; // in the signature itself: the checksum still holds
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), &bad);
    vm.conforms("PUT", "/patches", &r);
    assert_eq!((r.status, r.json()["cause"].as_str()), (422, Some("bad_signature")), "{}", r.json());
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), &std::fs::read(&vsp).unwrap());
    vm.conforms("PUT", "/patches", &r);
    assert_eq!((r.status, r.json()["cause"].as_str()), (403, Some("unsigned")), "{}", r.json());
    assert_eq!(vm.get_json("/patches")["patches"], serde_json::json!([]));
    // The signed one applies.
    let r = vm.req("PUT", "/patches", Some("application/octet-stream"), &std::fs::read(&signed).unwrap());
    vm.conforms("PUT", "/patches", &r);
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(r.json()["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("signature verified")), "{}", r.json());
    assert_eq!(vm.get_json("/patches")["patches"].as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

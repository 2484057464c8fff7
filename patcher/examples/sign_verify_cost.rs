//! The cost of signature verification: signs patch files of several sizes
//! and times `TrustPolicy::admit` (ed25519 `verify_strict` over the whole
//! file) and, for comparison, `PatchFile::parse` of the same bytes. Prints
//! the median and the p99 of each over many runs.
//!
//!     cargo run --release -p vsplice-patcher --example sign_verify_cost

use std::time::{Duration, Instant};

use vsplice_patcher::model::TargetKind;
use vsplice_patcher::patch::manifest::{patch_id, Manifest, TargetSpec, MANIFEST_VERSION};
use vsplice_patcher::patch::sign::{self, SigningKey};
use vsplice_patcher::patch::{PatchFile, TrustPolicy};

/// A valid patch file whose object is `size` bytes (an ELF header, then zeros).
fn patch(size: usize) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut object = vec![0u8; size.max(64)];
    object[..4].copy_from_slice(b"\x7fELF");
    (object[4], object[5], object[16], object[18]) = (2, 1, 1, 62);
    let manifest = Manifest {
        format: MANIFEST_VERSION,
        name: "cost".into(),
        id: patch_id("cost", &object),
        target: TargetSpec { kind: TargetKind::TestGuest, build_id: None },
        cumulative: false,
        replacements: vec![],
        symbols: vec![],
        build: Default::default(),
        info: Default::default(),
    };
    Ok(PatchFile { manifest, object }.to_bytes()?)
}

fn stats(mut t: Vec<Duration>) -> (Duration, Duration) {
    t.sort();
    (t[t.len() / 2], t[(t.len() * 99 / 100).min(t.len() - 1)])
}

fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    stats(
        (0..runs)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed()
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = SigningKey::from_bytes(&[7; 32]);
    let policy = TrustPolicy::with_keys(vec![key.verifying_key()], false);
    for size in [4usize << 10, 64 << 10, 1 << 20, 16 << 20] {
        let signed = sign::sign(&patch(size)?, &key)?;
        let runs = if size >= 16 << 20 { 20 } else { 200 };
        let (v50, v99) = time(runs, || assert!(policy.admit(&signed).is_ok()));
        let (p50, p99) = time(runs, || assert!(PatchFile::parse(&signed).is_ok()));
        println!(
            "object {:>6} KiB (file {} bytes) n={runs}: verify p50={:.3}ms p99={:.3}ms; parse (checksum, manifest) p50={:.3}ms p99={:.3}ms",
            size >> 10,
            signed.len(),
            v50.as_secs_f64() * 1e3,
            v99.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

//! The bounded fuzz run CI does with `cargo test`: every target replays its
//! saved corpus and generated seeds, then mutates for a small budget
//! (`VSPLICE_FUZZ_MS` per target, 1500 by default) from a fixed seed, plus
//! a seed from `VSPLICE_FUZZ_SEED` when set. Fails on any panic; an input
//! over the time bound or over the allocation bounds aborts the binary.

use std::path::PathBuf;
use std::time::Duration;

use vsplice_fuzz::alloc::{self, CountingAlloc};
use vsplice_fuzz::runner::{run_target, Config};
use vsplice_fuzz::targets;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn budget() -> Duration {
    let ms = std::env::var("VSPLICE_FUZZ_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    Duration::from_millis(ms)
}

fn seeds() -> Vec<u64> {
    let mut s = vec![0x5eed];
    if let Some(v) = std::env::var("VSPLICE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()) {
        s.push(v);
    }
    s
}

#[test]
fn every_target_survives_its_corpus_and_fresh_mutations() {
    alloc::set_limits(alloc::DEFAULT_SINGLE_LIMIT, alloc::DEFAULT_LIVE_LIMIT);
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    for seed in seeds() {
        for t in targets::all() {
            let cfg = Config {
                budget: budget(),
                seed,
                hang_bound: Duration::from_secs(20),
                corpus_dir: Some(here.join("corpus")),
                artifacts_dir: None,
                max_execs: None,
            };
            let r = run_target(&t, &cfg);
            eprintln!("{:14} seed {seed:#x}: corpus {}, {} execs, {} outcomes, {} panics", r.target, r.corpus, r.execs, r.outcomes.len(), r.findings.len());
            // The corpus replay alone reaches more than one outcome: the
            // target really parses (a target that always fails early would
            // fuzz nothing).
            assert!(r.execs > r.corpus as u64, "{}: no fresh executions", r.target);
            assert!(r.outcomes.len() > 1, "{}: one outcome only: {:?}", r.target, r.outcomes);
            for f in r.findings {
                failures.push(format!("{} (seed {seed:#x}): {} on input of {} bytes", r.target, f.message, f.input.len()));
            }
        }
    }
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}

#[test]
fn a_panicking_target_is_a_finding_with_its_input() {
    fn boom(d: &[u8]) -> String {
        if d.first() == Some(&0x42) {
            panic!("found the byte");
        }
        "ok".into()
    }
    let t = targets::Target { name: "selftest", what: "a target that panics on 0x42", run: boom, seeds: || vec![vec![0x41; 4]], max_len: 8 };
    let cfg = Config { budget: Duration::from_secs(5), seed: 1, hang_bound: Duration::from_secs(20), corpus_dir: None, artifacts_dir: None, max_execs: Some(20_000) };
    let r = run_target(&t, &cfg);
    assert_eq!(r.findings.len(), 1, "{:?}", r.outcomes);
    assert!(r.findings[0].message.contains("found the byte"));
    assert_eq!(r.findings[0].input.first(), Some(&0x42));
}

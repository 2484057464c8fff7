//! `vsplice-fuzz`: a fuzz campaign over every target (or the ones named),
//! with a time budget per target; prints executions, outcomes and findings
//! per target and exits 1 when anything panicked.
//!
//!     vsplice-fuzz [--seconds N] [--seed S] [--hang-ms MS] [--corpus DIR]
//!                  [--artifacts DIR] [--list] [TARGET...]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vsplice_fuzz::alloc::{self, CountingAlloc};
use vsplice_fuzz::runner::{run_target, Config};
use vsplice_fuzz::targets;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = Config {
        budget: Duration::from_secs(20),
        seed: 0x5eed,
        hang_bound: Duration::from_secs(10),
        corpus_dir: Some(here.join("corpus")),
        artifacts_dir: Some(here.join("artifacts")),
        max_execs: None,
    };
    let mut names = Vec::new();
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Option<u64> {
            let v = args.next().and_then(|v| if let Some(h) = v.strip_prefix("0x") { u64::from_str_radix(h, 16).ok() } else { v.parse().ok() });
            if v.is_none() {
                eprintln!("{what} wants a number");
            }
            v
        };
        match a.as_str() {
            "--seconds" => match num("--seconds") {
                Some(s) => cfg.budget = Duration::from_secs(s),
                None => return ExitCode::from(2),
            },
            "--seed" => match num("--seed") {
                Some(s) => cfg.seed = s,
                None => return ExitCode::from(2),
            },
            "--hang-ms" => match num("--hang-ms") {
                Some(s) => cfg.hang_bound = Duration::from_millis(s),
                None => return ExitCode::from(2),
            },
            "--corpus" => cfg.corpus_dir = args.next().map(PathBuf::from),
            "--artifacts" => cfg.artifacts_dir = args.next().map(PathBuf::from),
            "--list" => {
                for t in targets::all() {
                    println!("{:14} {}", t.name, t.what);
                }
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("usage: vsplice-fuzz [--seconds N] [--seed S] [--hang-ms MS] [--corpus DIR] [--artifacts DIR] [--list] [TARGET...]");
                return ExitCode::SUCCESS;
            }
            other => names.push(other.to_string()),
        }
    }
    let chosen: Vec<_> = if names.is_empty() {
        targets::all()
    } else {
        let mut v = Vec::new();
        for n in &names {
            match targets::by_name(n) {
                Some(t) => v.push(t),
                None => {
                    eprintln!("no target {n} (--list)");
                    return ExitCode::from(2);
                }
            }
        }
        v
    };
    alloc::set_limits(alloc::DEFAULT_SINGLE_LIMIT, alloc::DEFAULT_LIVE_LIMIT);
    let mut failed = false;
    println!("{:14} {:>6} {:>10} {:>9} {:>10} {:>8} findings", "target", "corpus", "execs", "execs/s", "slowest", "peak");
    for t in chosen {
        let r = run_target(&t, &cfg);
        println!(
            "{:14} {:>6} {:>10} {:>9.0} {:>8}ms {:>6}MiB {}",
            r.target,
            r.corpus,
            r.execs,
            r.execs as f64 / cfg.budget.as_secs_f64().max(0.001),
            r.slowest.as_millis(),
            r.peak_bytes >> 20,
            r.findings.len()
        );
        for (o, n) in &r.outcomes {
            println!("    {n:>9}  {o}");
        }
        for f in &r.findings {
            failed = true;
            println!("  PANIC {} ({} bytes, saved {:?})", f.message, f.input.len(), f.saved);
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! The campaign: the corpus first, then seeded mutations for a time budget;
//! each input under `catch_unwind`, the watchdog and the allocation bounds.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::alloc;
use crate::mutate::{havoc, Rng};
use crate::targets::Target;

/// The input running now (for the watchdog's and the allocator's report).
static CURRENT: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static CURRENT_TARGET: Mutex<&'static str> = Mutex::new("");
/// Milliseconds since [`epoch`] when the running input started (0: idle).
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static HANG_MS: AtomicU64 = AtomicU64::new(10_000);
static FUZZING: AtomicBool = AtomicBool::new(false);
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Most inputs the live corpus keeps per target.
const MAX_LIVE_CORPUS: usize = 4096;

/// How one campaign runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time for fresh mutations (after the corpus replay).
    pub budget: Duration,
    /// PRNG seed.
    pub seed: u64,
    /// An input running longer than this aborts the run (a hang).
    pub hang_bound: Duration,
    /// Saved corpus root (`<root>/<target>/*`), when there is one.
    pub corpus_dir: Option<PathBuf>,
    /// Where inputs that panic are written (`<dir>/<target>/crash-<hash>`).
    pub artifacts_dir: Option<PathBuf>,
    /// Stop after this many fresh executions (tests).
    pub max_execs: Option<u64>,
}

/// One input that panicked.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The panic message and location.
    pub message: String,
    /// The input.
    pub input: Vec<u8>,
    /// Where it was saved.
    pub saved: Option<PathBuf>,
}

/// What a campaign on one target did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Target name.
    pub target: &'static str,
    /// Corpus inputs replayed (saved files plus generated seeds).
    pub corpus: usize,
    /// All executions (corpus and fresh).
    pub execs: u64,
    /// Executions per outcome name.
    pub outcomes: BTreeMap<String, u64>,
    /// Distinct panics.
    pub findings: Vec<Finding>,
    /// Longest single input.
    pub slowest: Duration,
    /// Highest live heap bytes while an input ran.
    pub peak_bytes: usize,
    /// Inputs in the live corpus at the end.
    pub live_corpus: usize,
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

fn write_stderr(b: &[u8]) {
    // SAFETY: a valid buffer of `b.len()` bytes to fd 2; no allocation
    // (called from the allocator and the watchdog).
    unsafe {
        libc::write(2, b.as_ptr().cast(), b.len());
    }
}

/// Writes the running target's name and input (hex, at most 64 KiB of it)
/// to stderr without allocating.
pub fn dump_current_input_raw() {
    if let Ok(t) = CURRENT_TARGET.try_lock() {
        write_stderr(t.as_bytes());
    }
    write_stderr(b"\ninput (hex): ");
    if let Ok(input) = CURRENT.try_lock() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 512];
        for chunk in input[..input.len().min(64 << 10)].chunks(256) {
            for (i, b) in chunk.iter().enumerate() {
                buf[2 * i] = HEX[(b >> 4) as usize];
                buf[2 * i + 1] = HEX[(b & 15) as usize];
            }
            write_stderr(&buf[..2 * chunk.len()]);
        }
    }
    write_stderr(b"\n");
}

fn start_watchdog() {
    static W: OnceLock<()> = OnceLock::new();
    W.get_or_init(|| {
        let spawned = std::thread::Builder::new().name("fuzz-watchdog".into()).spawn(|| loop {
            std::thread::sleep(Duration::from_millis(50));
            let s = STARTED_MS.load(Ordering::SeqCst);
            if s != 0 && now_ms().saturating_sub(s) > HANG_MS.load(Ordering::Relaxed) {
                write_stderr(b"\nvsplice-fuzz: TIME BOUND: an input ran over the bound in target ");
                dump_current_input_raw();
                std::process::abort();
            }
        });
        if spawned.is_err() {
            write_stderr(b"vsplice-fuzz: no watchdog thread: hangs are not caught\n");
        }
    });
}

fn install_panic_hook() {
    static H: OnceLock<()> = OnceLock::new();
    H.get_or_init(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if FUZZING.load(Ordering::SeqCst) {
                let msg = match (info.payload().downcast_ref::<&str>(), info.payload().downcast_ref::<String>()) {
                    (Some(s), _) => (*s).to_string(),
                    (_, Some(s)) => s.clone(),
                    _ => "non-string panic".into(),
                };
                let loc = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                if let Ok(mut p) = LAST_PANIC.lock() {
                    *p = Some(format!("{msg} at {loc}"));
                }
            } else {
                default(info);
            }
        }));
    });
}

/// FNV-1a, for artifact names.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// The saved corpus of `target` under `root` (files, sorted by name, each
/// cut to `max_len`).
pub fn load_corpus(root: &Path, target: &str, max_len: usize) -> Vec<Vec<u8>> {
    let dir = root.join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|mut v| {
            v.truncate(max_len);
            v
        })
        .collect()
}

struct Exec {
    outcome: Result<String, String>,
    took: Duration,
}

fn exec(t: &Target, input: &[u8]) -> Exec {
    if let Ok(mut c) = CURRENT.lock() {
        c.clear();
        c.extend_from_slice(input);
    }
    let start = Instant::now();
    STARTED_MS.store(now_ms(), Ordering::SeqCst);
    alloc::arm(true);
    let r = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
    alloc::arm(false);
    STARTED_MS.store(0, Ordering::SeqCst);
    let took = start.elapsed();
    let outcome = r.map_err(|_| LAST_PANIC.lock().ok().and_then(|mut p| p.take()).unwrap_or_else(|| "panic".into()));
    Exec { outcome, took }
}

/// Runs one campaign on `t`.
pub fn run_target(t: &Target, cfg: &Config) -> Report {
    start_watchdog();
    install_panic_hook();
    HANG_MS.store(cfg.hang_bound.as_millis() as u64, Ordering::Relaxed);
    if let Ok(mut n) = CURRENT_TARGET.lock() {
        *n = t.name;
    }
    FUZZING.store(true, Ordering::SeqCst);
    let mut corpus: Vec<Vec<u8>> = (t.seeds)();
    if let Some(root) = &cfg.corpus_dir {
        corpus.extend(load_corpus(root, t.name, t.max_len));
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut rep = Report { target: t.name, corpus: corpus.len(), ..Report::default() };
    let mut peak = 0usize;
    let mut record = |rep: &mut Report, input: &[u8], e: Exec| -> Option<String> {
        rep.execs += 1;
        rep.slowest = rep.slowest.max(e.took);
        peak = peak.max(alloc::peak());
        match e.outcome {
            Ok(o) => {
                let n = rep.outcomes.entry(o.clone()).or_insert(0);
                *n += 1;
                (*n == 1).then_some(o)
            }
            Err(message) => {
                if !rep.findings.iter().any(|f| f.message == message) {
                    let saved = cfg.artifacts_dir.as_ref().and_then(|d| {
                        let dir = d.join(t.name);
                        let p = dir.join(format!("crash-{:016x}", fnv(input)));
                        (std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&p, input).is_ok()).then_some(p)
                    });
                    rep.findings.push(Finding { message, input: input.to_vec(), saved });
                }
                None
            }
        }
    };
    for input in &corpus {
        let e = exec(t, input);
        record(&mut rep, input, e);
    }
    let mut rng = Rng::new(cfg.seed ^ fnv(t.name.as_bytes()));
    let deadline = Instant::now() + cfg.budget;
    let mut fresh = 0u64;
    while Instant::now() < deadline && cfg.max_execs.is_none_or(|m| fresh < m) {
        let parent = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let mut input = parent.clone();
        havoc(&mut input, other, &mut rng, t.max_len);
        let e = exec(t, &input);
        fresh += 1;
        if record(&mut rep, &input, e).is_some() && corpus.len() < MAX_LIVE_CORPUS {
            corpus.push(input);
        }
    }
    FUZZING.store(false, Ordering::SeqCst);
    rep.peak_bytes = peak;
    rep.live_corpus = corpus.len();
    rep
}

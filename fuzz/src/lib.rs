//! Fuzzing on stable Rust: every parser of untrusted bytes (patch files,
//! patch objects, kallsyms, BTF, ORC, the agent's descriptor, GDB remote
//! packets, kernel images, API request bodies) run against a saved corpus
//! plus seeded mutations of it.
//!
//! libFuzzer/cargo-fuzz need nightly; this is a small engine instead:
//!
//! - [`mutate`]: havoc-style mutations (bit flips, interesting values,
//!   inserts, deletes, chunk copies, splices of two inputs), from a seeded
//!   PRNG, so a run is reproducible from its seed;
//! - [`runner`]: replays the corpus, then mutates for a time budget; each
//!   input runs under `catch_unwind` (a panic is a finding), under a
//!   watchdog (an input over the time bound aborts the process, printing
//!   the input), and under the counting allocator of [`alloc`] (one
//!   allocation or the live total over the bound does the same);
//! - [`targets`]: the parsers, each returning an outcome name (a stable
//!   error cause or `ok`). Inputs with a new outcome join the live corpus:
//!   outcome-guided, not coverage-guided (no instrumentation on stable);
//! - [`seeds`]: inputs generated from the project's own fixtures, added to
//!   the saved corpus files under `fuzz/corpus/<target>/`.

pub mod alloc;
pub mod mutate;
pub mod runner;
pub mod seeds;
pub mod targets;

//! tests/count-results.sh, which tests/run-all.sh counts with, on a
//! fixture log: a test binary that crashed (no `test result:` line) counts
//! as failed; a skipped test is a skip, not a pass; a skip printed but not
//! in the skip log counts as failed; the summary names binaries and crashes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use vsplice_tests::scratch::tmp_dir;
use vsplice_tests::testguest::workspace_root;

const LOG: &str = "     Running unittests src/lib.rs (target/release/deps/a-1)

running 4 tests
test a::one ... ok
test a::two ... ok
test a::three ... ok
test a::boom ... FAILED

successes:

---- a::two stdout ----

*** SKIPPED debian_x: no Debian images ***


successes:
    a::one
    a::three
    a::two

failures:

---- a::boom stdout ----

*** SKIPPED not_counted: a failed test is a failure ***

failures:
    a::boom

test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

     Running tests/crashes.rs (target/release/deps/crashes-2)

running 2 tests
test first ... ok
error: test failed, to rerun pass `-p vsplice-tests --test crashes`

Caused by:
  process didn't exit successfully: `target/release/deps/crashes-2` (signal: 6, SIGABRT: process abort signal)
     Running tests/c.rs (target/release/deps/c-3)

running 3 tests
test c1 ... ok
test c2 ... ok
test c3 ... ignored

successes:

---- c2 stdout ----
*** SKIPPED c2: printed, never logged ***
A test's own output that quotes a header is no binary:
  Running tests/quoted.rs (target/release/deps/quoted-9)

successes:
    c1
    c2

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s

   Doc-tests vsplice_tests

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

";

fn count(name: &str, log: &str, skips: &str) -> (Option<i32>, String) {
    let dir = tmp_dir(name);
    let (l, s) = (dir.join("log.txt"), dir.join("skips.txt"));
    std::fs::write(&l, log).unwrap();
    std::fs::write(&s, skips).unwrap();
    let o = Command::new("bash").arg(workspace_root().join("tests/count-results.sh")).arg(&l).arg(&s).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn crashed_binaries_and_unlogged_skips_count_as_failed() {
    let (code, out) = count("count-results-crash", LOG, "SKIPPED debian_x: no Debian images\nSKIPPED not_counted: a failed test is a failure\n");
    eprintln!("{out}");
    let last = out.lines().last().unwrap();
    // 5 passed by libtest's count, 2 of them skips: 3; failed: 1 + the
    // crashed binary + the unlogged skip.
    assert_eq!(last, "vsplice tests: 3 passed, 3 failed, 2 skipped, 1 ignored; 4 test binaries, 1 crashed");
    assert_eq!(code, Some(1));
    assert!(out.contains("tests/crashes.rs"), "{out}");
    assert!(out.contains("c2 (Running tests/c.rs"), "{out}");
    assert!(!out.contains("a::two (Running"), "a logged skip is no failure: {out}");
    assert!(!out.contains("quoted"), "a header quoted in a test's output is no binary: {out}");
    // A failed test's output is printed again near the end, indented: a
    // skip line in it must not start a line (this output is itself
    // captured by this test, and counted by the outer run).
    let failed = out.split("=================== FAILED: ").nth(1).unwrap_or_else(|| panic!("no FAILED section: {out}"));
    assert!(failed.starts_with("Running unittests src/lib.rs") && failed.contains("a::boom") && failed.contains("  *** SKIPPED not_counted"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("*** SKIPPED")), "{out}");
}

#[test]
fn a_clean_run_with_logged_skips_passes() {
    let clean = LOG.replace("test a::boom ... FAILED", "").replace("FAILED. 3 passed; 1 failed", "ok. 3 passed; 0 failed");
    let clean = clean.split("Running tests/crashes.rs").next().unwrap().to_owned();
    let (code, out) = count("count-results-clean", &clean, "SKIPPED debian_x: no Debian images\n");
    assert_eq!(out.lines().last().unwrap(), "vsplice tests: 2 passed, 0 failed, 1 skipped, 0 ignored; 1 test binaries, 0 crashed");
    assert_eq!(code, Some(0), "{out}");
}

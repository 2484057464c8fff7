#!/usr/bin/env bash
# Counts a `cargo test ... -- --show-output` log for tests/run-all.sh.
#
# usage: count-results.sh LOG SKIP_LOG
#
# - per test binary (each of cargo's `     Running ...` / `   Doc-tests ...`
#   headers, in its 12-column layout): a binary
#   with no `test result:` line before the next header crashed (a signal, an
#   abort, a harness panic) and counts as one failure, named in the summary;
# - a passing test whose captured output has a line starting `*** SKIPPED ...`
#   (the skip helper, tests/src/skip.rs) is a skip, not a pass; a skip that is not in
#   SKIP_LOG as well (printed but not logged) counts as a failure, so that no
#   test that did not run passes unnoticed;
# - the captured output of each failed test (its last 40 lines, where the
#   panic message is) is printed again at the end, next to the summary,
#   indented (so that a skip line in it is not a skip when this output is
#   itself captured by a test), so that a log cut to its tail still says why
#   a test failed;
# - the last line is `vsplice tests: P passed, F failed, S skipped, I ignored;
#   N test binaries, C crashed`.
# Exit status: 0 when nothing failed or crashed, 1 otherwise.
set -euo pipefail
log="$1"
skiplog="$2"
[[ -f "$skiplog" ]] || : >"$skiplog"

awk -v skiplog="$skiplog" '
BEGIN {
    while ((getline l < skiplog) > 0) logged[l] = 1
    close(skiplog)
}
function end_binary() {
    if (bin != "" && !have_result) { crashed++; crashed_list = crashed_list "\n  " bin }
}
# cargo right-aligns its status word in 12 columns: only those headers
# start a binary, never a line of captured test output that quotes one.
/^     Running [^ ]|^   Doc-tests [^ ]/ {
    end_binary()
    bin = $0; sub(/^[ \t]*/, "", bin); have_result = 0; binaries++; section = ""; test = ""
    next
}
/^test result: / {
    have_result = 1
    passed += $4; failed += $6; ignored += $8
    section = ""; test = ""
    next
}
/^successes:$/ { section = "ok"; test = ""; next }
/^failures:$/ { section = "failed"; test = ""; next }
/^---- .* stdout ----$/ {
    test = $0; sub(/^---- /, "", test); sub(/ stdout ----$/, "", test)
    next
}
section == "failed" && test != "" {
    key = bin "::" test
    if (!(key in fail_seen)) { fail_seen[key] = 1; fail_order[++nfail] = key; fail_n[key] = 0 }
    fail_line[key, ++fail_n[key]] = $0
    next
}
section == "ok" && test != "" && /^\*\*\* SKIPPED / {
    key = bin "::" test
    line = $0; sub(/^.*\*\*\* /, "", line); sub(/ \*\*\*[ \t]*$/, "", line)
    if (!(key in skipped_tests)) { skipped_tests[key] = 1; skipped++ }
    if (!(line in logged) && !(key in unlogged_tests)) {
        unlogged_tests[key] = 1; unlogged++; unlogged_list = unlogged_list "\n  " test " (" bin "): " line
    }
    next
}
END {
    end_binary()
    for (i = 1; i <= nfail; i++) {
        key = fail_order[i]
        print ""
        print "=================== FAILED: " key
        n = fail_n[key]
        from = (n > 40) ? n - 39 : 1
        if (from > 1) print "  [... " (from - 1) " earlier lines of its output in the full log ...]"
        for (j = from; j <= n; j++) print "  " fail_line[key, j]
    }
    if (crashed > 0) {
        print ""
        print "=================== CRASHED (no test result: counted as failed) ==============="
        print substr(crashed_list, 2)
    }
    if (unlogged > 0) {
        print ""
        print "=================== SKIPPED WITHOUT A LOG LINE (counted as failed) ============"
        print substr(unlogged_list, 2)
    }
    f = failed + crashed + unlogged
    # A skipped test passed as far as libtest knows.
    p = passed - skipped
    print ""
    printf "vsplice tests: %d passed, %d failed, %d skipped, %d ignored; %d test binaries, %d crashed\n", p, f, skipped, ignored, binaries, crashed
    exit (f > 0) ? 1 : 0
}
' "$log"

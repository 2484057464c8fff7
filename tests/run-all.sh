#!/usr/bin/env bash
# The test command: set up the host (apt packages, guest images), then run every
# test in the workspace and print one summary line with how many ran, failed,
# and were skipped (with why) because this machine lacks something, and how
# many test binaries ran and crashed (tests/count-results.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash images/setup-host.sh
bash images/build-testguest.sh
# Debian kernels and initramfs for the QEMU (TCG) tests of real kernels.
if [[ -f images/debian-kernels.sh ]]; then
    bash images/debian-kernels.sh
fi
# An older Debian kernel ABI still in the archive (live-patch no_match tests).
if [[ -f images/debian-prev-kernel.sh ]]; then
    bash images/debian-prev-kernel.sh amd64
fi
# A real Debian fix (6.1.0-55 -> -56, ext4, cloud flavour) for the
# `patch build --diff` tests: source prepared once, cached under target/fixsrc.
# When the archive no longer holds that ABI the recipe fails and the tests skip.
if [[ -f images/debian-fix-source.sh ]]; then
    bash images/debian-fix-source.sh || echo "run-all: no Debian fix corpus; debian_diff_patch and debian_diff_multi will skip" >&2
    # Module targets (generic flavour): the -56 -> -57 nfsd fix and the
    # -55 -> -56 ext4 fix with ext4 a module (debian_module_patch, debian_module_ext4).
    bash images/debian-fix-source.sh --from 56 --to 57 amd64 || echo "run-all: no nfsd fix corpus; debian_module_patch will skip" >&2
    bash images/debian-fix-source.sh --from 55 --to 56 amd64 || echo "run-all: no generic ext4 fix corpus; debian_module_ext4 will skip" >&2
fi

skips="$root/target/test-skips.txt"
mkdir -p "$root/target"
: >"$skips"
export VSPLICE_SKIP_LOG="$skips"
log="$root/target/test-output.txt"

# The CLI tests run the real `vsplice` binary, target/release/vsplice, built
# here with the test-only fault injection that the crash-safety tests need
# (they check that `vsplice --version` says `(fault-injection)`).
cargo build --release -p vsplice-vmm --features fault-injection

set +e
# `cargo test` does not build that binary again (vsplice-vmm has no integration
# tests); it gets the same feature all the same, so that nothing it builds of
# vsplice-vmm lacks it (and the fault injection's own unit tests run).
# --show-output keeps the output of passing tests, where skips say so.
cargo test --workspace --release --no-fail-fast --features vsplice-vmm/fault-injection -- --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

if [[ -s "$skips" ]]; then
    echo
    echo "=================== SKIPPED (this machine lacks something) ==================="
    sort -u "$skips"
    echo "==============================================================================="
fi
# Per test binary: one that crashed (no "test result:") counts as failed; a
# skip counts as a skip, never a pass, and one not in the skip log as failed.
set +e
bash "$root/tests/count-results.sh" "$log" "$skips"
counted=$?
set -e
if [[ $status -eq 0 ]]; then
    status=$counted
fi
exit "$status"

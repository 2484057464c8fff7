#!/usr/bin/env bash
# The test command: set up the host (apt packages, guest images), then run every
# test in the workspace and print one summary line with how many ran, failed,
# and were skipped (with why) because this machine lacks something.
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
cargo test --workspace --release --no-fail-fast --features vsplice-vmm/fault-injection 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

passed=0; failed=0; ignored=0
while read -r p f i; do
    passed=$((passed + p)); failed=$((failed + f)); ignored=$((ignored + i))
done < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log")
skipped=$(sort -u "$skips" | grep -c . || true)
if [[ $skipped -gt 0 ]]; then
    echo
    echo "=================== SKIPPED (this machine lacks something) ==================="
    sort -u "$skips"
    echo "==============================================================================="
fi
echo
echo "vsplice tests: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"

#!/usr/bin/env bash
# The main job: set up the host, build vsplice and the test guest, and boot the
# test guest under `vsplice run` with 2 vCPUs until it powers itself off.
# Extra arguments are passed to `vsplice run` (e.g. --vcpus 4).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash images/setup-host.sh
bash images/build-testguest.sh
cargo build --release -p vsplice-vmm
echo "demo: booting the test guest under vsplice (it powers off after 5 iterations per task)"
exec target/release/vsplice run --kernel target/images/testguest/testguest.elf \
    --vcpus 2 --memory 128 --cmdline "tg.tasks=3 tg.iters=5" "$@"

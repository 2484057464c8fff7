#!/usr/bin/env bash
# The main job: set up the host, build vsplice, the test guest and an example
# live patch, then boot the test guest under `vsplice run` with 2 vCPUs and
# have the VMM live-patch it as soon as its kernel is up. Every task prints
# one line per iteration; the `value=` field changes when the patched
# function (tg_step_b, examples/patches/testguest/step_b_v2.c) takes over.
# The guest powers itself off after 8 iterations per task. Extra arguments are
# passed to `vsplice run` (e.g. --vcpus 4).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash images/setup-host.sh
bash images/build-testguest.sh
cargo build --release -p vsplice-vmm
vsplice=target/release/vsplice
guest=target/images/testguest/testguest.elf
patch=target/images/testguest/step_b_v2.vsp
echo "demo: building the live patch $patch"
"$vsplice" patch build --target testguest --kernel "$guest" -o "$patch" \
    examples/patches/testguest/step_b_v2.c >/dev/null
echo "demo: booting the test guest under vsplice; the patch is applied once it is up"
exec "$vsplice" run --kernel "$guest" --vcpus 2 --memory 128 \
    --cmdline "tg.tasks=3 tg.iters=8 tg.wait=10" --live-patch "$patch" "$@"

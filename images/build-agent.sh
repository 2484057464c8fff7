#!/usr/bin/env bash
# Build the vsplice guest agent (guest-agent/: vsplice_agent.ko) and the stack
# check test module (vsplice_stale.ko) with Kbuild against one Debian flavour's
# headers (target/images/debian-<flavour>/headers, laid out by
# images/debian-kernels.sh):
#
#   target/images/debian-<flavour>/agent/vsplice_agent.ko
#   target/images/debian-<flavour>/agent/vsplice_stale.ko
#
# The sources are copied to a build directory next to the output so the
# source tree stays clean and both flavours can be built. A re-run with the
# modules newer than every source does nothing.
#
# Usage: images/build-agent.sh <amd64|cloud-amd64>
# Called by images/build-initramfs.sh; needs make, gcc and the headers.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

[ $# -eq 1 ] || { echo "usage: $0 <amd64|cloud-amd64>" >&2; exit 2; }
flavour="$1"
dir="$root/target/images/debian-$flavour"
src="$root/guest-agent"
out="$dir/agent"
headers="$dir/headers"

[ -f "$headers/Makefile" ] || { echo "build-agent: no Kbuild headers at $headers (run images/debian-kernels.sh)" >&2; exit 1; }

current=1
for ko in vsplice_agent.ko vsplice_stale.ko; do
    [ -s "$out/$ko" ] || current=0
done
if [ "$current" -eq 1 ]; then
    for f in "$src"/*.c "$src"/*.h "$src"/Kbuild "$src"/Makefile "$here/build-agent.sh" "$headers/.config"; do
        [ ! "$f" -nt "$out/vsplice_agent.ko" ] || current=0
    done
fi
if [ "$current" -eq 1 ]; then
    echo "build-agent: $flavour modules are up to date in $out"
    exit 0
fi

build="$dir/agent-build"
rm -rf "$build"
mkdir -p "$build" "$out"
cp "$src"/*.c "$src"/*.h "$src"/Kbuild "$src"/Makefile "$build/"
echo "build-agent: building against $(readlink -f "$headers")"
make -s -C "$headers" M="$build" modules 2>&1 | grep -v "Skipping BTF generation" || true
for ko in vsplice_agent.ko vsplice_stale.ko; do
    [ -s "$build/$ko" ] || { echo "build-agent: $ko was not built" >&2; exit 1; }
    cp "$build/$ko" "$out/$ko.tmp"
    mv "$out/$ko.tmp" "$out/$ko"
done
echo "build-agent: wrote $out/vsplice_agent.ko and vsplice_stale.ko"

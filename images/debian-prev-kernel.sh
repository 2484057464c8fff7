#!/usr/bin/env bash
# Fetch the bzImage of an OLDER Debian 12 kernel ABI that is still in the
# archive, for the live-patch `no_match` tests (a patch built for that kernel
# must be refused by the current one):
#
#   target/images/debian-<flavour>-prev/
#     abi, release, version     of the older kernel (e.g. 6.1.0-55, 6.1.192-1)
#     vmlinuz                   its bzImage (only the image is kept)
#
# The older ABI is looked up with apt (the highest one below the current
# ABI in target/images/debian-<flavour>/abi), never hard-coded. When the
# archive holds none, nothing is fetched and the tests skip loudly. A re-run
# with the files present does nothing.
#
# Usage: images/debian-prev-kernel.sh [flavour]   (default: amd64)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
flavour="${1:-amd64}"
cur_dir="$root/target/images/debian-$flavour"
out="$root/target/images/debian-$flavour-prev"
log() { echo "debian-prev-kernel: $*"; }

[ -s "$cur_dir/abi" ] || { log "no current kernel in $cur_dir (run images/debian-kernels.sh first)"; exit 0; }
current="$(cat "$cur_dir/abi")"
cur_n="${current##*-}"

# Highest ABI number below the current one that apt knows for this flavour.
prev="$(apt-cache search --names-only "^linux-image-6\.1\.0-[0-9]+-$flavour\$" 2>/dev/null \
    | sed -n "s/^linux-image-\(6\.1\.0-\([0-9]*\)\)-$flavour .*/\2 \1/p" \
    | awk -v cur="$cur_n" '$1 < cur' | sort -n | tail -n1 | cut -d' ' -f2)"
if [ -z "$prev" ]; then
    log "apt has no $flavour kernel ABI older than $current: nothing to fetch (the no_match test will skip)"
    exit 0
fi
release="$prev-$flavour"
if [ "$(cat "$out/abi" 2>/dev/null)" = "$prev" ] && [ -s "$out/vmlinuz" ]; then
    log "debian-$flavour-prev ($release) is up to date in $out"
    exit 0
fi
mkdir -p "$out"
rm -f "$out/abi"
work="$(mktemp -d "$root/target/images/.prev-$flavour.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "downloading linux-image-$release (older ABI than $current)"
(cd "$work" && apt-get download -qq "linux-image-$release")
deb="$(ls "$work"/linux-image-"$release"_*.deb)"
dpkg-deb --fsys-tarfile "$deb" | tar -xO "./boot/vmlinuz-$release" >"$out/vmlinuz"
dpkg-deb -f "$deb" Version >"$out/version"
echo "$release" >"$out/release"
echo "$prev" >"$out/abi"
log "debian-$flavour-prev: ready ($release, $(cat "$out/version"))"

#!/usr/bin/env bash
# Fetch a real Debian kernel fix as a test corpus entry for
# `vsplice patch build --diff`: the source of an older Debian 12 kernel ABI,
# prepared for Kbuild with that kernel's own .config, the kernel image to boot,
# and the fix as a unified diff (the difference between the source packages of
# two consecutive ABIs).
#
#   target/fixsrc/<from-abi>-<flavour>/
#     abi, release, version   of the kernel the fix applies to (e.g. 6.1.0-55)
#     to-version              the source version with the fix (e.g. 6.1.192-2)
#     vmlinuz, config         the kernel image and its .config
#     headers/                its Kbuild headers, unpacked from the .debs
#     src/                    linux-source-6.1 at `version`, configured and
#                             `make modules_prepare`d
#     fix.patch               diff -urN src(version) src(to-version), -p1
#     changes.txt             the to-version's Debian changelog entries newer
#                             than `version` (the upstream commits with their
#                             CVE ids: the corpus of tests/examples/cve_corpus.rs)
#     initramfs.cpio.gz       the current kernel's test initramfs with this
#                             kernel's virtio-serial modules and loop.ko
#     src.vsplice-post/       made by `vsplice patch build --diff` (hard links)
#
# Default: 6.1.0-55 -> 6.1.0-56 of cloud-amd64 (the ext4 fix; ext4 is built
# into that flavour). Versions come from apt, never hard-coded. Idempotent:
# each step leaves a stamp and is skipped when present; a re-run with
# everything present does nothing. Needs root (apt), about 2.5 GB of disk
# during the first run and ~1.4 GB after it, and `make -j2` for a few minutes.
#
# Usage: images/debian-fix-source.sh [--from N] [--to N] [flavour]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
from=55
to=56
flavour=cloud-amd64
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from="$2"; shift 2 ;;
        --to) to="$2"; shift 2 ;;
        amd64 | cloud-amd64) flavour="$1"; shift ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "debian-fix-source: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
abi="6.1.0-$from"
release="$abi-$flavour"
out="$root/target/fixsrc/$release"
log() { echo "debian-fix-source: $*" >&2; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "debian-fix-source: need root for: $*" >&2; exit 1
    fi
}

if [ -f "$out/.done" ] && [ -f "$out/.changes" ]; then
    log "$release with the fix to 6.1.0-$to is up to date in $out"
    exit 0
fi
command -v gcc-12 >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-12 make bc bison flex libelf-dev libssl-dev xz-utils patch >/dev/null
for tool in bison flex bc; do
    command -v "$tool" >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bison flex bc libelf-dev libssl-dev >/dev/null
done
pkg_version() {
    local v
    v="$(apt-cache show "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)"
    [ -n "$v" ] || { as_root apt-get update -qq; v="$(apt-cache show "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)"; }
    [ -n "$v" ] || { echo "debian-fix-source: apt does not know $1 (left the archive?)" >&2; exit 1; }
    echo "$v"
}
version="$(pkg_version "linux-image-$release")"
to_version="$(pkg_version "linux-image-6.1.0-$to-$flavour")"
mkdir -p "$out/dl"
cd "$out/dl"
fetch() { # package=version
    local name="${1%%=*}" ver="${1#*=}"
    ls "${name}_${ver//:/%3a}"_*.deb >/dev/null 2>&1 && return 0
    log "apt-get download $1"
    apt-get download -qq "$1"
}
fetch "linux-image-$release=$version"
fetch "linux-headers-$release=$version"
fetch "linux-headers-$abi-common=$version"

if [ ! -f "$out/.image" ]; then
    rm -rf x && dpkg-deb -x linux-image-"$release"_*.deb x
    cp "x/boot/vmlinuz-$release" "$out/vmlinuz"
    cp "x/boot/config-$release" "$out/config"
    rm -rf x "$out/headers" && mkdir -p "$out/headers"
    for d in linux-headers-"$release"_*.deb linux-headers-"$abi"-common_*.deb; do dpkg-deb -x "$d" "$out/headers"; done
    echo "$abi" >"$out/abi"; echo "$release" >"$out/release"; echo "$version" >"$out/version"; echo "$to_version" >"$out/to-version"
    touch "$out/.image"
fi

# Source trees: the one the kernel was built from stays (src/), the fixed one
# only lives long enough to be diffed.
untar() { # deb dir
    local t0=$SECONDS
    rm -rf "$2" x && mkdir -p "$2" && dpkg-deb -x "$1" x
    tar -xaf x/usr/src/linux-source-6.1.tar.xz -C "$2" --strip-components=1
    rm -rf x
    log "unpacked $(basename "$1") in $((SECONDS - t0)) s"
}
if [ ! -f "$out/.src" ]; then
    fetch "linux-source-6.1=$version"
    untar "$(ls linux-source-6.1_"$version"_*.deb)" "$out/src.tmp"
    rm -rf "$out/src" && mv "$out/src.tmp" "$out/src"
    touch "$out/.src"
fi
if [ ! -f "$out/.patch" ]; then
    fetch "linux-source-6.1=$to_version"
    untar "$(ls linux-source-6.1_"$to_version"_*.deb)" "$out/src-to"
    log "diffing $version -> $to_version"
    (cd "$out" && { diff -urN -x .config src src-to || [ $? -eq 1 ]; }) \
        | sed -e 's|^--- src/|--- a/|' -e 's|^+++ src-to/|+++ b/|' >"$out/fix.patch.tmp"
    mv "$out/fix.patch.tmp" "$out/fix.patch"
    rm -rf "$out/src-to"
    touch "$out/.patch"
    log "fix.patch: $(grep -c '^+++ ' "$out/fix.patch") file(s)"
fi
if [ ! -f "$out/.prepared" ]; then
    cd "$out/src"
    cp "$out/config" .config
    want="$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"/\1/p' .config)"
    have="$(gcc-12 --version | head -n1)"
    [ "$want" = "$have" ] || log "warning: the kernel was built by '$want', this is '$have'"
    t0=$SECONDS
    log "make olddefconfig + modules_prepare (-j2)"
    make -s CC=gcc-12 olddefconfig >&2
    make -s -j2 CC=gcc-12 modules_prepare >&2
    log "prepared in $((SECONDS - t0)) s"
    touch "$out/.prepared"
fi
# The test initramfs of the current kernel (images/debian-kernels.sh) with
# this kernel's modules laid over it (a second cpio archive: later entries
# win): the virtio-serial command channel's modules and loop.ko (every
# block driver is a module in the cloud flavour; the e2e test mounts an
# ext4 image through a loop device).
if [ ! -f "$out/.initramfs" ]; then
    base="$root/target/images/debian-$flavour/initramfs.cpio.gz"
    [ -s "$base" ] || { echo "debian-fix-source: no $base (run images/debian-kernels.sh first)" >&2; exit 1; }
    cd "$out/dl"
    rm -rf x ov && dpkg-deb -x linux-image-"$release"_*.deb x
    mkdir -p ov/modules/base ov/modules/extra
    : >ov/modules/base/order
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
        ko="$(find x/lib/modules -name "$m.ko" -print -quit)"
        [ -n "$ko" ] || continue
        cp "$ko" ov/modules/base/ && echo "$m.ko" >>ov/modules/base/order
    done
    cp "$(find x/lib/modules -name loop.ko -print -quit)" ov/modules/extra/
    (cd ov && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9n) >ov.cpio.gz
    cat "$base" ov.cpio.gz >"$out/initramfs.cpio.gz.tmp" && mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
    rm -rf x ov ov.cpio.gz
    touch "$out/.initramfs"
fi
# The changelog entries of the fixed version down to (not including) ours
# (awk reads to the end: an early exit would SIGPIPE zcat under pipefail).
if [ ! -f "$out/.changes" ]; then
    cd "$out/dl"
    fetch "linux-source-6.1=$to_version"
    rm -rf x && mkdir x
    dpkg-deb --fsys-tarfile "$(ls linux-source-6.1_"$to_version"_*.deb)" | tar -x -C x ./usr/share/doc/linux-source-6.1/changelog.Debian.gz
    zcat x/usr/share/doc/linux-source-6.1/changelog.Debian.gz | awk -v v="$version" 'index($0, "linux (" v ")") == 1 { done = 1 } !done { print }' >"$out/changes.txt"
    rm -rf x
    touch "$out/.changes"
fi
rm -f "$out"/dl/linux-source-6.1_*.deb
touch "$out/.done"
log "$release ready in $out"

#!/usr/bin/env bash
# Build the test initramfs for one Debian kernel flavour:
#   target/images/debian-<flavour>/initramfs.cpio.gz   (cpio newc, gzip)
# Contents: busybox-static with all its applet links, /init from
# images/initramfs/init (mounts, kptr_restrict=0, module loading, the serial
# command protocol), /bin/mthreads (images/initramfs/mthreads.c, gcc -static),
# /bin/stallprobe (images/initramfs/stallprobe.c: clock_gettime gap probe),
# the flavour's virtio-serial modules in /modules/base (the fast command
# channel), the vsplice guest agent (/modules/vsplice_agent.ko, first in
# /modules/order; images/build-agent.sh builds it) and its test module
# (/modules/extra/vsplice_stale.ko, not loaded), and /modules/*.ko with /modules/order for every extra module given as an
# argument or in VSPLICE_INITRAMFS_MODULES (space separated), loaded in order.
#
# Usage: images/build-initramfs.sh [--out FILE] <amd64|cloud-amd64> [extra.ko ...]
# (--out: write FILE instead, e.g. a test's own initramfs with its modules)
# Normally called by images/debian-kernels.sh; needs busybox-static, gcc,
# libc6-dev, cpio and gzip (that script installs them).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

out_file=
if [ "${1:-}" = --out ]; then
    [ $# -ge 2 ] || { echo "build-initramfs: --out needs a file" >&2; exit 2; }
    out_file="$2"
    shift 2
fi
[ $# -ge 1 ] || { echo "usage: $0 [--out FILE] <amd64|cloud-amd64> [extra.ko ...]" >&2; exit 2; }
flavour="$1"
shift
out_dir="$root/target/images/debian-$flavour"
mkdir -p "$out_dir" "$root/target/images"
[ -n "$out_file" ] || out_file="$out_dir/initramfs.cpio.gz"

modules=("$@")
if [ -n "${VSPLICE_INITRAMFS_MODULES:-}" ]; then
    read -r -a env_modules <<<"$VSPLICE_INITRAMFS_MODULES"
    modules+=("${env_modules[@]}")
fi

busybox=/bin/busybox
"$busybox" --list >/dev/null 2>&1 \
    || { echo "build-initramfs: need busybox-static ($busybox)" >&2; exit 1; }

stage="$(mktemp -d "$root/target/images/.initramfs-$flavour.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
echo "build-initramfs: staging $flavour in $stage"

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc,modules,run}
cp "$busybox" "$stage/bin/busybox"
# Applet links at their canonical paths (busybox --list-full: "usr/bin/awk" ...).
while read -r applet; do
    [ -n "$applet" ] || continue
    [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)
[ -e "$stage/bin/sh" ] || ln -s busybox "$stage/bin/sh"

gcc -static -O2 -pthread -Wall -Wextra -o "$stage/bin/mthreads" "$here/initramfs/mthreads.c"
gcc -static -O2 -Wall -Wextra -o "$stage/bin/stallprobe" "$here/initramfs/stallprobe.c"
install -m 0755 "$here/initramfs/init" "$stage/init"

: >"$stage/modules/order"
# The fast command channel (virtio-serial) needs these modules from the
# flavour's own tree (images/debian-kernels.sh unpacks it to modules/).
mkdir -p "$stage/modules/base"
: >"$stage/modules/base/order"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
    ko="$(find "$out_dir/modules/kernel/drivers" -name "$m.ko" -print -quit 2>/dev/null || true)"
    if [ -z "$ko" ]; then
        echo "build-initramfs: warning: no $m.ko under $out_dir/modules; channel falls back to ttyS1" >&2
        continue
    fi
    cp "$ko" "$stage/modules/base/"
    echo "$m.ko" >>"$stage/modules/base/order"
done
# The vsplice guest agent (loaded by /init unless vsplice.agent=0) and the
# stack-check test module (in /modules/extra, for insmod by hand), built
# against this flavour's headers by images/build-agent.sh.
"$here/build-agent.sh" "$flavour"
mkdir -p "$stage/modules/extra"
cp "$out_dir/agent/vsplice_agent.ko" "$stage/modules/"
echo vsplice_agent.ko >>"$stage/modules/order"
cp "$out_dir/agent/vsplice_stale.ko" "$stage/modules/extra/"
for ko in "${modules[@]}"; do
    [ -f "$ko" ] || { echo "build-initramfs: no such module '$ko'" >&2; exit 1; }
    cp "$ko" "$stage/modules/"
    basename "$ko" >>"$stage/modules/order"
    echo "build-initramfs: + module $(basename "$ko")"
done

echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"

(cd "$stage" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -9 >"$out_file.tmp"
mv "$out_file.tmp" "$out_file"
echo "build-initramfs: wrote $out_file ($(du -h "$out_file" | cut -f1))"

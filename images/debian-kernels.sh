#!/usr/bin/env bash
# Fetch the current stock Debian 12 kernels (generic `amd64` and `cloud-amd64`)
# and their Kbuild-usable headers with apt, and lay them out for the tests:
#
#   target/images/debian-<flavour>/
#     abi                  the kernel ABI string, e.g. 6.1.0-56
#     release              uname -r of the guest, e.g. 6.1.0-56-cloud-amd64
#     version              the Debian package version, e.g. 6.1.192-2
#     vmlinuz              the bzImage
#     config               the kernel .config
#     System.map           Debian's placeholder (kept so tools find a file)
#     headers -> /usr/src/linux-headers-<release>   (Kbuild works there)
#     modules/             lib/modules/<release> from the image package
#     initramfs.cpio.gz    built by images/build-initramfs.sh
#     agent/               vsplice_agent.ko, vsplice_stale.ko (images/build-agent.sh)
#
# The ABI is looked up with apt every time (old ABIs leave the archive), never
# hard-coded. A re-run with everything present and current does nothing.
# Installs what it needs itself (qemu-system-x86, busybox-static, gcc, headers),
# so it must run as root (or with sudo available) on Debian 12.
#
# Usage: images/debian-kernels.sh [--force] [flavour...]   (default: both)
# Extra kernel modules for the initramfs: VSPLICE_INITRAMFS_MODULES="a.ko b.ko".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_base="$root/target/images"

force=0
flavours=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        amd64 | cloud-amd64) flavours+=("$arg") ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "debian-kernels: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done
[ ${#flavours[@]} -gt 0 ] || flavours=(amd64 cloud-amd64)

log() { echo "debian-kernels: $*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "debian-kernels: need root for: $*" >&2; exit 1
    fi
}

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq
        apt_updated=1
    fi
}

# Install packages that are not installed yet.
ensure_pkgs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt_update_once
        log "apt-get install ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# linux-image-<flavour> depends on linux-image-<abi>-<flavour>: take the ABI from
# apt's candidate, e.g. "linux-image-6.1.0-56-amd64" -> "6.1.0-56".
resolve_abi() {
    local flavour="$1" dep
    dep="$(apt-cache depends "linux-image-$flavour" 2>/dev/null \
        | sed -n "s/^ *Depends: linux-image-\([0-9][0-9.]*-[0-9]*\)-$flavour\$/\1/p" | head -n1)"
    if [ -z "$dep" ]; then
        apt_update_once
        dep="$(apt-cache depends "linux-image-$flavour" 2>/dev/null \
            | sed -n "s/^ *Depends: linux-image-\([0-9][0-9.]*-[0-9]*\)-$flavour\$/\1/p" | head -n1)"
    fi
    [ -n "$dep" ] || { echo "debian-kernels: apt cannot resolve linux-image-$flavour" >&2; exit 1; }
    echo "$dep"
}

# The kernel part is current when the ABI matches apt's and every file is there.
kernel_current() {
    local dir="$1" abi="$2" release="$3"
    [ "$force" -eq 0 ] || return 1
    [ "$(cat "$dir/abi" 2>/dev/null)" = "$abi" ] || return 1
    for f in vmlinuz config System.map release version; do
        [ -s "$dir/$f" ] || return 1
    done
    [ -d "$dir/modules/kernel" ] || return 1
    [ -f "$dir/headers/Makefile" ] || return 1
    [ -f "/usr/src/linux-headers-$release/.config" ] || return 1
}

# The initramfs is current when it is newer than everything it is built from.
initramfs_current() {
    local dir="$1" img="$1/initramfs.cpio.gz" src
    [ "$force" -eq 0 ] || return 1
    [ -s "$img" ] || return 1
    [ -z "${VSPLICE_INITRAMFS_MODULES:-}" ] || return 1
    for src in "$here/build-initramfs.sh" "$here/build-agent.sh" "$here"/initramfs/* "$root"/guest-agent/* /bin/busybox; do
        [ ! "$src" -nt "$img" ] || return 1
    done
}

fetch_flavour() {
    local flavour="$1" abi release dir version work deb
    abi="$(resolve_abi "$flavour")"
    release="$abi-$flavour"
    dir="$out_base/debian-$flavour"
    if kernel_current "$dir" "$abi" "$release"; then
        if initramfs_current "$dir"; then
            log "debian-$flavour ($release) is up to date in $dir"
        else
            "$here/build-initramfs.sh" "$flavour"
        fi
        return 0
    fi
    log "debian-$flavour: kernel ABI $abi (from apt)"
    mkdir -p "$dir"
    rm -f "$dir/abi"

    # Headers: installed, because Kbuild wants the -common tree and kbuild next to them.
    ensure_pkgs "linux-headers-$release"

    # Image: downloaded and unpacked here, not installed on the host.
    work="$(mktemp -d "$out_base/.fetch-$flavour.XXXXXX")"
    cleanup_dirs+=("$work")
    local t0=$SECONDS
    (cd "$work" && apt-get download -qq "linux-image-$release" >/dev/null 2>&1) || {
        apt_update_once
        (cd "$work" && apt-get download -qq "linux-image-$release")
    }
    deb="$(ls "$work"/linux-image-"$release"_*.deb)"
    log "debian-$flavour: downloaded $(basename "$deb") ($(du -h "$deb" | cut -f1)) in $((SECONDS - t0)) s"
    version="$(dpkg-deb -f "$deb" Version)"
    dpkg-deb -x "$deb" "$work/x"

    cp "$work/x/boot/vmlinuz-$release" "$dir/vmlinuz"
    cp "$work/x/boot/config-$release" "$dir/config"
    cp "$work/x/boot/System.map-$release" "$dir/System.map"
    rm -rf "$dir/modules"
    mv "$work/x/lib/modules/$release" "$dir/modules"
    ln -sfn "/usr/src/linux-headers-$release" "$dir/headers"
    echo "$release" >"$dir/release"
    echo "$version" >"$dir/version"

    "$here/build-initramfs.sh" "$flavour"
    # Written last: its presence with the right content means "complete".
    echo "$abi" >"$dir/abi"
    rm -rf "$work"
    log "debian-$flavour: ready ($release, $version)"
}

cleanup_dirs=()
cleanup() { [ ${#cleanup_dirs[@]} -eq 0 ] || rm -rf "${cleanup_dirs[@]}"; }
trap cleanup EXIT

ensure_pkgs qemu-system-x86 busybox-static gcc libc6-dev make cpio gzip
mkdir -p "$out_base"
for f in "${flavours[@]}"; do
    fetch_flavour "$f"
done

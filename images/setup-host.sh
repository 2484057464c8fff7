#!/usr/bin/env bash
# Installs everything vsplice needs on a fresh Debian 12 host: the apt packages
# for building the test guest and images and for running QEMU, plus cargo-nextest
# is NOT needed (tests run with cargo test). Idempotent and quiet when all is there.
set -euo pipefail

need_pkgs=(gcc make binutils libc6-dev qemu-system-x86 busybox-static cpio gzip xz-utils zstd python3)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup-host: installing ${missing[*]}"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    for attempt in 1 2 3 4 5; do
        if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
            break
        fi
        echo "setup-host: apt failed (attempt $attempt; dpkg lock busy?), retrying in 10 s" >&2
        sleep 10
        [[ $attempt -eq 5 ]] && { echo "setup-host: cannot install ${missing[*]}" >&2; exit 1; }
    done
fi
# Optional: etcd for the fleet's etcd tests (they skip loudly without it).
if ! command -v etcd >/dev/null; then
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null 2>&1; } \
        || echo "setup-host: etcd-server could not be installed (the fleet's etcd tests will skip)" >&2
fi
command -v cargo >/dev/null || { echo "setup-host: cargo (Rust) is required" >&2; exit 1; }
echo "setup-host: host packages present"

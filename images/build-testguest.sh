#!/usr/bin/env bash
# build-testguest.sh - one command to build the vsplice test guest
# (images/testguest/) into <repo>/target/images/testguest/:
#   testguest.elf      the guest, booted by `vsplice run --kernel ...`
#   testguest-pvh.elf  the same with a PVH entry, for qemu -kernel debugging
# Works from any directory; installs gcc/binutils/make with apt-get if they
# are missing; does nothing expensive when the outputs are up to date (make).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/target/images/testguest"

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v ld >/dev/null 2>&1 && command -v objdump >/dev/null 2>&1 \
	&& command -v readelf >/dev/null 2>&1 && command -v nm >/dev/null 2>&1 \
	|| missing+=(binutils)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ "${#missing[@]}" -gt 0 ]; then
	echo "build-testguest: installing ${missing[*]}" >&2
	if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
	"${sudo[@]}" apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
		"${sudo[@]}" apt-get update >/dev/null
		"${sudo[@]}" apt-get install -y "${missing[@]}"
	}
fi

mkdir -p "$out"
make --no-print-directory -s -C "$here/testguest" O="$out" all
echo "$out/testguest.elf"

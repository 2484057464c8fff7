#!/usr/bin/env bash
# run-qemu.sh - debug helper: boot the test guest under QEMU TCG (software
# emulation) through its optional PVH entry, serial on stdout, independently
# of the vsplice VMM. Builds the guest first; installs qemu-system-x86 with
# apt-get if it is missing. Exits when the guest powers off or resets.
#
#   images/testguest/run-qemu.sh [--smp N] [--gdb PORT] [-- extra qemu args] ['guest cmdline']
#   e.g. images/testguest/run-qemu.sh --smp 4 'tg.iters=3'
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
smp=4
gdb=()
extra=()
cmdline=""
while [ $# -gt 0 ]; do
	case "$1" in
	--smp) smp="$2"; shift 2 ;;
	--gdb) gdb=(-gdb "tcp:127.0.0.1:$2"); shift 2 ;;
	--) shift; extra=("$@"); break ;;
	*) cmdline="$1"; shift ;;
	esac
done

"$root/images/build-testguest.sh" >/dev/null
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
	apt-get install -y qemu-system-x86 >/dev/null 2>&1 || {
		apt-get update >/dev/null
		apt-get install -y qemu-system-x86
	}
fi

exec qemu-system-x86_64 -accel tcg -m 256 -smp "$smp" -display none -serial stdio \
	-monitor none -no-reboot "${gdb[@]}" \
	-kernel "$root/target/images/testguest/testguest-pvh.elf" -append "$cmdline" "${extra[@]}"

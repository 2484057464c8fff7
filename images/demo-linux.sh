#!/usr/bin/env bash
# The main job: live-patch a REAL, stock Debian 12 kernel through vsplice's API.
#
# Sets up the host (images/setup-host.sh: apt packages; images/debian-kernels.sh:
# the current Debian kernel, its Kbuild headers and the test initramfs), builds
# vsplice and the example patch examples/patches/linux/cmdline_marker.c (Kbuild
# against the kernel's headers), boots the kernel under QEMU (TCG, 2 vCPUs,
# 1 GiB, KASLR on) with a gdbstub and the patch arena reserved from its RAM
# (memmap=4M$0x3f000000), and starts `vsplice attach`, which attaches once to
# the gdbstub, identifies the kernel from guest memory and serves the HTTP API
# on a Unix socket. Then, through `vsplice remote`: /proc/cmdline before, the
# VM as vsplice sees it, the apply (its JSON report), /proc/cmdline after, the
# patch list, the revert, /proc/cmdline after the revert. SIGTERM ends the
# daemon (it detaches, the guest runs on), then QEMU is stopped; everything is
# torn down however the script ends.
#
# Commands in the guest go over the test initramfs's command channel (a
# virtio-serial port, here on a local TCP socket; protocol in
# images/initramfs/init). Results go to stdout, progress lines to stderr.
#
# Usage: images/demo-linux.sh [--no-setup] [amd64|cloud-amd64]
#   --no-setup   skip setup-host.sh and debian-kernels.sh (images already built)
# Needs root (or sudo) for the set-up on a fresh Debian 12 machine with Rust.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { echo "demo: $*" >&2; }
die() { echo "demo: error: $*" >&2; exit 1; }

setup=1
flavour=amd64
for arg in "$@"; do
    case "$arg" in
        --no-setup) setup=0 ;;
        amd64 | cloud-amd64) flavour="$arg" ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

if ((setup)); then
    say "setting up the host and the Debian $flavour kernel (apt; idempotent)"
    bash images/setup-host.sh >&2
    bash images/debian-kernels.sh "$flavour" >&2
fi
img="target/images/debian-$flavour"
for f in vmlinuz initramfs.cpio.gz headers/Makefile release; do
    [[ -e "$img/$f" ]] || die "$img/$f is missing: run without --no-setup (or images/debian-kernels.sh $flavour)"
done
release="$(cat "$img/release")"

say "building vsplice (cargo build --release)"
cargo build --release -q -p vsplice-vmm
vsplice="${CARGO_TARGET_DIR:-$root/target}/release/vsplice"

work="$(mktemp -d /tmp/vsplice-demo.XXXXXX)"
qemu_pid=
daemon_pid=
cleanup() {
    local rc=$?
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n "$qemu_pid" ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    { exec 3<&-; } 2>/dev/null || true
    if ((rc != 0)); then
        say "failed (status $rc); the guest's console ends with:"
        tail -n 15 "$work/console.log" >&2 2>/dev/null || true
        [[ -s "$work/attach.log" ]] && { say "vsplice attach said:"; cat "$work/attach.log" >&2; }
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

patch="$work/cmdline_marker.vsp"
say "building the live patch examples/patches/linux/cmdline_marker.c against $release (Kbuild)"
"$vsplice" patch build --target linux --kernel "$img/vmlinuz" --headers "$img/headers" \
    -o "$patch" examples/patches/linux/cmdline_marker.c >"$work/manifest.json"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gdb_port="$(free_port)"
cmd_port="$(free_port)"
arena_start=0x3f000000
arena="$arena_start:4M"

say "booting Debian $release under QEMU (TCG, 2 vCPUs, 1 GiB, arena $arena reserved, gdbstub on 127.0.0.1:$gdb_port)"
qemu-system-x86_64 -accel tcg -display none -nodefaults -no-reboot -smp 2 -m 1024 \
    -kernel "$img/vmlinuz" -initrd "$img/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 memmap=0x400000\$$arena_start vsplice.agent=0" \
    -serial "file:$work/console.log" -gdb "tcp:127.0.0.1:$gdb_port" \
    -chardev "socket,id=cmd,host=127.0.0.1,port=$cmd_port,server=on,wait=on" \
    -device virtio-serial-pci -device virtserialport,chardev=cmd,name=org.vsplice.cmd \
    </dev/null >"$work/qemu.log" 2>&1 &
qemu_pid=$!

# The command channel: QEMU waits for it before starting the guest.
for _ in $(seq 1 300); do
    kill -0 "$qemu_pid" 2>/dev/null || die "QEMU exited: $(cat "$work/qemu.log")"
    # (The braces keep the 2>/dev/null off the shell's own stderr.)
    if { exec 3<>"/dev/tcp/127.0.0.1/$cmd_port"; } 2>/dev/null; then break; fi
    sleep 0.1
done
[[ -e /dev/fd/3 ]] || die "cannot connect to QEMU's command channel on port $cmd_port"
ready=0
while IFS= read -r -t 600 line <&3; do
    [[ "${line%$'\r'}" == VSPLREADY ]] && { ready=1; break; }
done
((ready)) || die "the guest did not come up"
say "the guest is up"

# guest SCRIPT: runs SCRIPT in the guest, prints its output, returns its status.
n=0
guest() {
    local id line status out=() started=0
    n=$((n + 1))
    id="c$n"
    printf 'VSPLCMD %s raw 60 %s\n' "$id" "$(printf '%s' "$1" | base64 -w0)" >&3
    while IFS= read -r -t 120 line <&3; do
        if ((!started)); then
            [[ "$line" == "VSPLBEGIN $id" ]] && started=1
            continue
        fi
        if [[ "$line" =~ ^VSPLEND\ $id\ (-?[0-9]+)$ ]]; then
            status="${BASH_REMATCH[1]}"
            # The guest adds one newline before VSPLEND.
            unset 'out[${#out[@]}-1]'
            ((${#out[@]})) && printf '%s\n' "${out[@]}"
            return "$status"
        fi
        out+=("$line")
    done
    die "no answer from the guest to: $1"
}

sock="$work/api.sock"
say "starting vsplice attach (attaches once, identifies the kernel, serves the API on $sock)"
"$vsplice" attach --gdb "127.0.0.1:$gdb_port" --target linux --arena "$arena" --api-sock "$sock" 2>"$work/attach.log" &
daemon_pid=$!
for _ in $(seq 1 6000); do
    grep -q '^vsplice: attached to ' "$work/attach.log" && break
    kill -0 "$daemon_pid" 2>/dev/null || die "vsplice attach exited"
    sleep 0.1
done
grep -q '^vsplice: attached to ' "$work/attach.log" || die "vsplice attach is not ready"
grep '^vsplice: attached to ' "$work/attach.log" >&2

remote() { "$vsplice" remote --api-sock "$sock" "$@"; }

echo "== /proc/cmdline before"
guest 'cat /proc/cmdline'
echo "== vsplice remote vm"
remote vm
echo "== vsplice remote --json patch apply cmdline_marker.vsp"
remote --json patch apply "$patch"
echo "== /proc/cmdline after the apply"
after="$(guest 'cat /proc/cmdline')"
echo "$after"
[[ "$after" == *vsplice.marker=cmdline* ]] || die "the patch did not take effect"
echo "== vsplice remote patch list"
remote patch list
echo "== vsplice remote patch revert cmdline_marker"
remote patch revert cmdline_marker
echo "== /proc/cmdline after the revert"
reverted="$(guest 'cat /proc/cmdline')"
echo "$reverted"
[[ "$reverted" != *vsplice.marker=cmdline* ]] || die "the revert did not take effect"

say "stopping vsplice attach (SIGTERM: it detaches, the guest runs on)"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || die "vsplice attach ended with status $?"
daemon_pid=
tail -n 1 "$work/attach.log" >&2
[[ ! -e "$sock" ]] || die "the API socket is still there"
guest 'echo "the guest still runs: $(cut -d" " -f1 /proc/uptime) s up"'
say "done; stopping QEMU"

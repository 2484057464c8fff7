#!/bin/sh
# check-elf.sh - build-time checks of a linked test guest ELF (run by the
# Makefile): the vmlinux-like layout the vsplice VMM and patcher rely on,
# the exported symbols, the patchable functions (ftrace NOP at entry,
# __mcount_loc entry, >= 16 bytes), and that only plain integer
# instructions are in the 64-bit code (the CPL0 emulator on our test machines
# cannot run XSAVE, INT3, SSE/AVX, ...). Fails loudly on the first problem.
set -eu

elf="$1"
fail() { echo "check-elf: $elf: $*" >&2; exit 1; }

sym() { nm "$elf" | awk -v s="$1" '$3 == s { print $1; exit }'; }

# ---- ELF header and program headers ----
readelf -h "$elf" | grep -q 'Class:.*ELF64' || fail "not ELF64"
readelf -h "$elf" | grep -q 'Type:.*EXEC' || fail "not an executable"
readelf -h "$elf" | grep -q 'Machine:.*X86-64' || fail "not x86-64"
entry=$(readelf -h "$elf" | awk '/Entry point address/ { print $4 }')
phys=$(sym phys_startup_64)
[ -n "$phys" ] || fail "no phys_startup_64"
[ "$((entry))" -eq "$((0x$phys))" ] || fail "e_entry $entry != phys_startup_64 0x$phys"
[ "$((entry))" -lt "$((0x100000000))" ] || fail "e_entry $entry is not a physical address"

readelf -lW "$elf" | awk '
	$1 == "LOAD" {
		n++
		v = $3; p = $4
		if (n == 1 && p != "0x0000000001000000") { print "first PT_LOAD paddr " p; bad = 1 }
		# vaddr - paddr must be __START_KERNEL_map: compare the low 8 hex digits
		# after adding 0x80000000 and the high ones against ffffffff.
		if (substr(v, 3, 8) != "ffffffff") { print "vaddr " v " not in the kernel half"; bad = 1 }
		if (substr(p, 3, 8) != "00000000") { print "paddr " p " above 4 GiB"; bad = 1 }
	}
	END { if (!n) { print "no PT_LOAD"; bad = 1 } exit bad }' >&2 || fail "bad program headers"

# ---- exported symbols ----
for s in _text _etext _edata __bss_start _end startup_64 phys_startup_64 \
	tg_task_table tg_task_count tg_task_lock tg_task_stacks tg_magic \
	tg_compute tg_step_a tg_step_b tg_sleep tg_busy \
	tg_pml4 tg_kernel_pdpt tg_kernel_pd tg_ident_pdpt tg_ident_pd \
	init_top_pgt level3_kernel_pgt level2_kernel_pgt \
	__start_mcount_loc __stop_mcount_loc tg_cpu_count; do
	[ -n "$(sym "$s")" ] || fail "missing symbol $s"
done
text=$(sym _text)
[ "$text" = "ffffffff81000000" ] || fail "_text at $text"

# ---- patchable functions ----
mcount=$(objdump -s -j __mcount_loc "$elf" | awk '
	/^ [0-9a-f]+ / { for (i = 2; i <= 5; i++) if ($i ~ /^[0-9a-f]+$/) hex = hex $i }
	END {
		for (o = 1; o + 15 <= length(hex); o += 16) {
			q = ""
			for (b = 14; b >= 0; b -= 2) q = q substr(hex, o + b, 2)
			print q
		}
	}')
for f in tg_compute tg_step_a tg_step_b tg_sleep tg_busy tg_nap; do
	line=$(nm -S "$elf" | awk -v s="$f" '$4 == s { print $1, $2, $3 }')
	set -- $line
	[ "$#" -eq 3 ] || fail "no size for $f"
	case "$3" in T) ;; *) fail "$f is not a global text symbol" ;; esac
	[ "$((0x$2))" -ge 16 ] || fail "$f is only $((0x$2)) bytes (need >= 16)"
	echo "$mcount" | grep -qx "$1" || fail "$f (0x$1) not in __mcount_loc"
	first=$(objdump -d --disassemble="$f" "$elf" |
		awk -F'\t' '/^ *[0-9a-f]+:/ { print $2; exit }' | tr -d ' ')
	[ "$first" = "0f1f440000" ] || fail "$f does not start with the 5-byte NOP (got $first)"
done

# ---- instructions (64-bit code; the PVH variant has 32-bit code too) ----
if [ -z "$(sym pvh_start32)" ]; then
	objdump -d --no-show-raw-insn "$elf" | awk -F'\t' '
		/^ *[0-9a-f]+:\t/ {
			n = split($2, w, /[ \t]+/)
			i = 1
			while (i < n && w[i] ~ /^(rep|repz|repnz|lock|cs|ds|data16|addr32)$/) i++
			m = w[i]
			if (m == "" || m == "(bad)") { print "undecodable: " $0; bad = 1; next }
			if (m !~ /^(mov[bwlq]?|movabs[bwlq]?|movz[bw][wlq]|movs[bwl][wlq]|lea[wlq]?|add[bwlq]?|adc[bwlq]?|sub[bwlq]?|sbb[bwlq]?|and[bwlq]?|or[bwlq]?|xor[bwlq]?|not[bwlq]?|neg[bwlq]?|inc[bwlq]?|dec[bwlq]?|sh[lr][bwlq]?|sa[lr][bwlq]?|ro[lr][bwlq]?|imul[bwlq]?|mul[bwlq]?|i?div[bwlq]?|cmp[bwlq]?|test[bwlq]?|j[a-z]+|call[q]?|ret[q]?|push[wlq]?|pop[wlq]?|pushf[q]?|popf[q]?|cli|sti|cld|hlt|in|out|lgdt[lq]?|lidt[lq]?|iretq|lretq?|nop[wlq]?|xchg[bwlq]?|cpuid|rdmsr|wrmsr|cmov[a-z]+|set[a-z]+|bt[lq]?|pause|ud2|stos[bwlq]?|cltq|cqto|cltd|cwtl|leave[q]?|bs[fr][lq]?|xadd[bwlq]?|cmpxchg[bwlq]?)$/) {
				print "not allowed: " $0; bad = 1
			}
		}
		END { exit bad }' >&2 || fail "instructions outside the allowed integer set"
fi
exit 0

/*
 * compute_bug.c - a DELIBERATELY BROKEN example patch, for the fleet's
 * console health gate: tg_compute keeps its value but its first call prints
 * a kernel-style "BUG:" line on the console, as a Linux patch that trips a
 * BUG_ON would. The VMM counts it (GET /vm: console.bug) and
 * `vsplice fleet` reverts the target and halts the rollout.
 */
#include <vsplice.h>

typedef unsigned long u64;

u64 tg_step_a(u64 x);
void tg_printf(const char *fmt, ...);

u64 vsplice_bug_said;			/* .bss of the patch */

u64 tg_compute_buggy(u64 x)
{
	if (!__atomic_exchange_n(&vsplice_bug_said, 1, __ATOMIC_RELAXED))
		tg_printf("BUG: vsplice example compute_bug: deliberately broken patch\n");
	return tg_step_a(x) + 0x1000;
}
VSPLICE_REPLACE(tg_compute, tg_compute_buggy);

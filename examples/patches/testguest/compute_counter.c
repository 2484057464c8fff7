/*
 * compute_counter.c - example patch with NEW GLOBAL DATA: tg_compute counts
 * its calls in a variable that lives in the patch arena's data slot, and
 * adds 0x100000 * (calls so far, capped to 1) to its value:
 *   value = tg_step_a(x) + 0x1000 + 0x100000   (after the first call)
 * The counter is also readable by the host (symbol in the patch object).
 */
#include <vsplice.h>

typedef unsigned long u64;

u64 tg_step_a(u64 x);

u64 vsplice_compute_calls;		/* .bss of the patch */
static u64 bonus = 0x100000;		/* .data of the patch */

u64 tg_compute_counted(u64 x)
{
	u64 n = __atomic_add_fetch(&vsplice_compute_calls, 1, __ATOMIC_RELAXED);

	return tg_step_a(x) + 0x1000 + (n ? bonus : 0);
}
VSPLICE_REPLACE(tg_compute, tg_compute_counted);

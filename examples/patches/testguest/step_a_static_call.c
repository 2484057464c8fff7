/*
 * step_a_static_call.c - example patch that CALLS A STATIC FUNCTION of the
 * target: tg_scale is static in patchable.c (x * 3) and another static
 * tg_scale exists in lib.c (x * 5), so the patch names the one it means with
 * a file qualifier. tg_step_a becomes:
 *   tg_step_a(x) = tg_scale(tg_step_b(x)) ^ 0xa5a5      (tg_scale from patchable.c)
 */
#include <vsplice.h>

typedef unsigned long u64;

u64 tg_step_b(u64 x);
u64 tg_scale(u64 x);
VSPLICE_LOCAL(tg_scale, "file:patchable.c");

u64 tg_step_a_scaled(u64 x)
{
	return tg_scale(tg_step_b(x)) ^ 0xa5a5;
}
VSPLICE_REPLACE(tg_step_a, tg_step_a_scaled);

/*
 * step_b_v2.c - example patch for the vsplice test guest: replaces
 * tg_step_b (x * 0x10001 + 0x2a) with x * 0x10001 + 0x2b, so every task's
 * printed value changes from the next iteration on:
 *   iter 1: 0x1b58e -> 0x1b589
 *
 *   vsplice patch build --target testguest \
 *       --kernel target/images/testguest/testguest.elf \
 *       -o step_b_v2.vsp examples/patches/testguest/step_b_v2.c
 */
#include <vsplice.h>

typedef unsigned long u64;

u64 tg_step_b_v2(u64 x)
{
	return x * 0x10001 + 0x2b;
}
VSPLICE_REPLACE(tg_step_b, tg_step_b_v2);

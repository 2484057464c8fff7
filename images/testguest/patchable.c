/*
 * patchable.c - the functions vsplice live-patches in the test guest.
 *
 * Built with -pg -mfentry -mrecord-mcount -mnop-mcount, like a Linux kernel
 * function: each starts with the 5-byte NOP (0f 1f 44 00 00) where ftrace
 * would put its call, and its address is listed in __mcount_loc. Each is at
 * least 16 bytes long (checked at build time by check-elf.sh), so a 5-byte
 * jmp fits after the NOP. `noipa` keeps gcc from inlining, cloning or
 * assuming anything about them: every call is a real call.
 *
 * Each task computes, every iteration, value = tg_compute(iter):
 *   tg_step_b(x) = x * 0x10001 + 0x2a
 *   tg_step_a(x) = tg_step_b(x) ^ 0xa5a5
 *   tg_compute(x) = tg_step_a(x) + 0x1000
 * e.g. iter 1 -> 0x1b58e, iter 2 -> 0x2b589, iter 3 -> 0x3b588. Replacing any of them changes
 * the printed value from the next iteration on.
 *
 * tg_sleep is where every task waits between iterations (halted until the
 * timer wakes it), so it is almost always on some task's stack: patching it
 * exercises the "code busy" path. tg_busy is optional busy work (tg.work=N).
 *
 * For the patcher's tests: tg_hold is where task 1 waits (with tg.hold)
 * until the host sets tg_hold_release (a task blocked inside a function that
 * it leaves on demand); tg_tiny is too small to hold a jump after its NOP;
 * tg_scale is a static (local) function whose name also exists in lib.c, so
 * a patch must name it with a file qualifier; tg_nap is where the sleepers
 * of tg.nappers=K sleep for good (a code_busy target among many tasks).
 */
#include "tg.h"

#define PATCHABLE __attribute__((noipa, used))

PATCHABLE u64 tg_step_b(u64 x)
{
	return x * 0x10001 + 0x2a;
}

PATCHABLE u64 tg_step_a(u64 x)
{
	return tg_step_b(x) ^ 0xa5a5;
}

PATCHABLE u64 tg_compute(u64 x)
{
	return tg_step_a(x) + 0x1000;
}

/* Sleep for `ticks` timer ticks: the scheduler runs other tasks meanwhile. */
PATCHABLE void tg_sleep(u64 ticks)
{
	u64 wake = tg_sched_sleep_begin(ticks);

	while (tg_cpu_ticks() < wake)
		__asm__ __volatile__("hlt" ::: "memory");
}

/* Busy work: n rounds of integer mixing; the result is printed nowhere. */
PATCHABLE u64 tg_busy(u64 n)
{
	u64 acc = 0x9e3779b97f4a7c15ULL;

	for (u64 i = 0; i < n; i++) {
		acc ^= acc >> 7;
		acc += i;
		barrier();
	}
	return acc;
}

/* Task 1 waits here (tg.hold) until the host writes tg_hold_release != 0. */
PATCHABLE void tg_hold(void)
{
	/* do/while: the loop branches back to the first instruction after the
	 * NOP (allowed: a fresh entry), never into the jump site's middle. */
	do
		__asm__ __volatile__("hlt" ::: "memory");
	while (!READ_ONCE(tg_hold_release));
}

/* Too small for a 5-byte jump after the ftrace NOP (9 bytes in all). */
PATCHABLE u64 tg_tiny(u64 x)
{
	return x;
}

/* Local; lib.c has another tg_scale (x * 5): patches must qualify the name. */
static PATCHABLE u64 tg_scale(u64 x)
{
	return x * 3;
}

/*
 * tg.nappers: a sleeper parks here (sleepers.c) and is never woken, so its
 * stack keeps a return address into tg_nap. The loop after the call keeps
 * the call a call (no tail jump) and is where it would continue if resumed.
 */
PATCHABLE void tg_nap(u64 *saved_sp)
{
	tg_park(saved_sp);
	for (;;)
		__asm__ __volatile__("hlt" ::: "memory");
}

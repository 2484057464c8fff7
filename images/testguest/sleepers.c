/*
 * sleepers.c - tg.sleepers=N: N tasks that sleep for good, each on its own
 * 4 KiB stack, so the host's safety check has many tasks to walk (issue 12:
 * downtime with 100 vs 10,000 sleeping tasks).
 *
 * At boot the BSP runs each sleeper once on its fresh stack
 * (tg_park_enter): tg_sleeper_main -> tg_sleeper_wait (not patchable) ->
 * tg_park, which leaves the frame the timer leaves for a switched-out task
 * (15 GPRs + interrupt frame, saved_sp in the table entry) and switches back.
 * The first K sleepers (tg.nappers=K) park in tg_nap instead, a patchable
 * function: patching tg_nap must be refused code_busy while they sleep.
 * Sleepers are in no CPU's run queue (never woken), state sleeping, on CPU 0.
 *
 * Their stacks are in usable e820 RAM above the image, below 3 GiB, reached
 * through the identity map (virtual = physical); the exported
 * tg_sleeper_area / tg_sleeper_area_size say where, so the host counts that
 * RAM as the guest's.
 */
#include "tg.h"
#include "task_table.h"

/* Exported: the sleepers' stacks [tg_sleeper_area, +size), 0 when none. */
u64 tg_sleeper_area;
u64 tg_sleeper_area_size;
/* tg_park_enter's caller's stack pointer (head64.S). */
u64 tg_park_return_sp;

struct sleeper {
	struct vsplice_task_entry *e;
	int nap;
};

/* Where a sleeper waits: not patchable, so patches never meet it. */
static __attribute__((noinline, noipa)) void tg_sleeper_wait(u64 *saved_sp)
{
	tg_park(saved_sp);
	for (;;)
		__asm__ __volatile__("hlt" ::: "memory");
}

static __attribute__((noinline, noipa)) void tg_sleeper_main(void *arg)
{
	struct sleeper *s = arg;

	if (s->nap)
		tg_nap(&s->e->saved_sp);
	else
		tg_sleeper_wait(&s->e->saved_sp);
	for (;;)
		__asm__ __volatile__("hlt" ::: "memory");
}

static u64 rd64le(const u8 *p)
{
	u64 v;

	memcpy(&v, p, 8);
	return v;
}

/* Lowest usable e820 range of `need` bytes above `floor` and below 3 GiB. */
static u64 find_area(const u8 *bp, u64 floor, u64 need)
{
	int n = bp[0x1e8] > 128 ? 128 : bp[0x1e8];
	u64 best = 0;

	for (int i = 0; i < n; i++) {
		const u8 *e = bp + 0x2d0 + 20 * i;
		u64 addr = rd64le(e), end = addr + rd64le(e + 8);
		u32 type;

		memcpy(&type, e + 16, 4);
		if (type != 1)
			continue;
		if (addr < floor)
			addr = floor;
		addr = (addr + 0xfff) & ~0xfffULL;
		if (end > 0xc0000000ULL)
			end = 0xc0000000ULL;
		if (addr + need <= end && (!best || addr < best))
			best = addr;
	}
	return best;
}

/* "<prefix><n>" without snprintf (10,000 names at boot must be cheap). */
static void name_of(char *dst, const char *prefix, u32 n)
{
	char digits[10];
	int k = 0, i = 0;

	while (prefix[i] && i < VSPLICE_TASK_NAME_LEN - 1) {
		dst[i] = prefix[i];
		i++;
	}
	do {
		digits[k++] = (char)('0' + n % 10);
		n /= 10;
	} while (n && k < 10);
	while (k && i < VSPLICE_TASK_NAME_LEN - 1)
		dst[i++] = digits[--k];
	dst[i] = '\0';
}

u32 tg_sleepers_create(struct vsplice_task_entry *first, u64 first_id, u32 count, u32 nappers,
		       const u8 *boot_params)
{
	u64 floor = (u64)_end - TG_START_KERNEL_MAP, area = 0;

	if (count > TG_MAX_SLEEPERS)
		count = TG_MAX_SLEEPERS;
	while (count && !(area = find_area(boot_params, floor, (u64)count * TG_SLEEPER_STACK_SIZE)))
		count /= 2;
	if (!count)
		return 0;
	tg_sleeper_area = area;
	tg_sleeper_area_size = (u64)count * TG_SLEEPER_STACK_SIZE;
	for (u32 i = 0; i < count; i++) {
		struct vsplice_task_entry *e = &first[i];
		u64 base = area + (u64)i * TG_SLEEPER_STACK_SIZE;
		struct sleeper s = { e, i < nappers };

		e->id = first_id + i;
		name_of(e->name, s.nap ? "napper/" : "sleeper/", i);
		e->state = VSPLICE_TASK_SLEEPING;
		e->cpu = 0;
		e->stack_base = base;
		e->stack_size = TG_SLEEPER_STACK_SIZE;
		e->on_cpu = 0;
		e->switches = 1;	/* the one switch away, in tg_park */
		tg_park_enter(base + TG_SLEEPER_STACK_SIZE, &s, tg_sleeper_main);
	}
	return count;
}

/*
 * main.c - the vsplice test guest's kernel: boot_params and command line,
 * IDT, local APIC, CPU discovery and AP start-up (INIT/SIPI/SIPI through a
 * real-mode trampoline), the exported task table, per-CPU round-robin
 * scheduling of tasks preempted by the LAPIC timer, the task loop that calls
 * the patchable chain and prints one checksummed line per iteration, and
 * power-off / triple fault at the end of a run.
 *
 * See README.md for the command line and output format, task_table.h for
 * the task table layout.
 */
#include "tg.h"
#include "task_table.h"

/* ---------------- exported to the host (keep names stable) ---------------- */

/* Changed by the host through guest memory; printed on every line. */
volatile u64 tg_magic = 0x1234;

/* tg.hold: task 1 waits in tg_hold until the host makes this non-zero. */
volatile u64 tg_hold_release;

/*
 * Header + entries, see task_table.h. Over 1 MiB with the sleepers' room,
 * so not in the .bss the boot code clears word by word: tg_main zeroes the
 * header first, entries are written before the count covers them.
 */
struct tg_task_table {
	struct vsplice_task_header hdr;
	struct vsplice_task_entry entries[TG_MAX_TASKS + TG_MAX_SLEEPERS];
};
struct tg_task_table tg_task_table __attribute__((section(".bss..stacks"), aligned(64)));
u32 tg_task_count;
/* The change ring (task_table.h): which entries changed, newest last. */
u32 tg_task_ring[TG_TASK_RING_MAX];
tg_spinlock_t tg_task_lock;		/* serializes writers of the table */
u8 tg_task_stacks[TG_MAX_TASKS][TG_TASK_STACK_SIZE]
	__attribute__((section(".bss..stacks"), aligned(TG_TASK_STACK_SIZE)));
u32 tg_cpu_count;			/* CPUs online */
u64 tg_trampoline_pa;			/* where the AP trampoline was put */

/* ---------------- internal state ---------------- */

struct tg_task;

struct tg_cpu {
	struct tg_cpu *self;		/* %gs:0 */
	u32 index;
	u32 apic_id;
	volatile u64 ticks;
	u32 ntasks;
	u32 cur;
	struct tg_task *tasks[TG_MAX_TASKS_PER_CPU];
	volatile u32 online;
};

struct tg_task {
	struct vsplice_task_entry *e;
	struct tg_cpu *cpu;
	u64 wake;
	u64 iter;
};

static struct tg_cpu cpus[TG_MAX_CPUS];
static struct tg_task tasks[TG_MAX_TASKS];
static u64 idt[256 * 2] __attribute__((aligned(16)));
static struct __attribute__((packed)) { u16 limit; u64 base; } idt_desc;
static u8 boot_params[4096] __attribute__((aligned(16)));
static char cmdline[2048];
static volatile u32 go;
static volatile u32 tasks_done;
static u32 task_total;			/* scheduled tasks (tasks_done counts these) */
static u32 sleeper_total;		/* tg.sleepers parked for good */
static int shutting_down;
static volatile u32 *lapic;

extern u8 tg_boot_stacks[];
NORETURN void tg_task_main(struct tg_task *t);
u64 tg_timer_interrupt(u64 sp);
void tg_exception(struct tg_exc_frame *f);
NORETURN void tg_main(u64 bp_pa);
NORETURN void tg_ap_main(u32 idx);
extern u32 tg_efer_nx;

/* Options (README.md). */
static u64 opt_tasks = 3, opt_iters, opt_hz = 100, opt_wait = 20, opt_work = 100;
static u64 opt_maxcpus = TG_MAX_CPUS, opt_lapic_mhz = 1000, opt_sleepers, opt_nappers;
static u64 opt_ring = TG_TASK_RING_DEFAULT;
static int opt_quiet, opt_triple, opt_hold, opt_reboot, opt_acpi = 1;

/* ---------------- helpers ---------------- */

static inline struct tg_cpu *this_cpu(void)
{
	struct tg_cpu *c;

	__asm__ __volatile__("movq %%gs:0, %0" : "=r"(c));
	return c;
}

static u32 rd32(const u8 *p) { u32 v; memcpy(&v, p, 4); return v; }
static u64 rd64(const u8 *p) { u64 v; memcpy(&v, p, 8); return v; }

#define APIC_ID		0x20
#define APIC_TPR	0x80
#define APIC_EOI	0xb0
#define APIC_SVR	0xf0
#define APIC_ICR_LO	0x300
#define APIC_ICR_HI	0x310
#define APIC_LVT_TIMER	0x320
#define APIC_LVT_LINT0	0x350
#define APIC_LVT_ERR	0x370
#define APIC_TICR	0x380
#define APIC_TCCR	0x390
#define APIC_TDCR	0x3e0

static inline u32 lapic_read(u32 reg)
{
	return lapic[reg / 4];
}

static inline void lapic_write(u32 reg, u32 v)
{
	lapic[reg / 4] = v;
}

/* ---------------- command line ---------------- */

/* Find `name` or `name=value` as a whole word; *val = value or NULL. */
static int opt_find(const char *name, const char **val)
{
	size_t nl = strlen(name);
	const char *p = cmdline;

	while (*p) {
		while (*p == ' ')
			p++;
		if (!memcmp(p, name, nl) && (p[nl] == ' ' || p[nl] == '\0' || p[nl] == '=')) {
			*val = p[nl] == '=' ? p + nl + 1 : NULL;
			return 1;
		}
		while (*p && *p != ' ')
			p++;
	}
	return 0;
}

static u64 parse_num(const char *s, u64 def)
{
	u64 v = 0, base = 10;
	int any = 0;

	if (!s)
		return def;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	for (;; s++, any = 1) {
		u64 d;
		if (*s >= '0' && *s <= '9')
			d = (u64)(*s - '0');
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = (u64)(*s - 'a' + 10);
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = (u64)(*s - 'A' + 10);
		else
			break;
		v = v * base + d;
	}
	return any ? v : def;
}

static u64 opt_num(const char *name, u64 def)
{
	const char *v;

	return opt_find(name, &v) ? parse_num(v, def) : def;
}

static int opt_flag(const char *name)
{
	const char *v;

	return opt_find(name, &v) && (!v || (*v != '0' && *v != 'n'));
}

static void parse_options(void)
{
	const char *v;

	opt_tasks = opt_num("tg.tasks", opt_tasks);
	opt_iters = opt_num("tg.iters", opt_iters);
	opt_hz = opt_num("tg.hz", opt_hz);
	opt_wait = opt_num("tg.wait", opt_wait);
	opt_work = opt_num("tg.work", opt_work);
	opt_maxcpus = opt_num("tg.maxcpus", opt_maxcpus);
	opt_lapic_mhz = opt_num("tg.lapic_mhz", opt_lapic_mhz);
	opt_sleepers = opt_num("tg.sleepers", 0);
	opt_nappers = opt_num("tg.nappers", 0);
	opt_ring = opt_num("tg.ring", opt_ring);
	opt_quiet = opt_flag("tg.quiet");
	opt_triple = opt_flag("tg.triple_fault");
	opt_hold = opt_flag("tg.hold");
	opt_reboot = opt_flag("tg.reboot");
	if (opt_flag("tg.mptable") || (opt_find("acpi", &v) && v && !memcmp(v, "off", 3)))
		opt_acpi = 0;

	if (opt_tasks < 1)
		opt_tasks = 1;
	if (opt_tasks > TG_MAX_TASKS_PER_CPU)
		opt_tasks = TG_MAX_TASKS_PER_CPU;
	if (opt_hz < 1)
		opt_hz = 1;
	if (opt_hz > 1000)
		opt_hz = 1000;
	if (opt_maxcpus < 1)
		opt_maxcpus = 1;
	if (opt_maxcpus > TG_MAX_CPUS)
		opt_maxcpus = TG_MAX_CPUS;
	if (opt_lapic_mhz < 1)
		opt_lapic_mhz = 1000;
	if (opt_sleepers > TG_MAX_SLEEPERS)
		opt_sleepers = TG_MAX_SLEEPERS;
	if (opt_nappers > opt_sleepers)
		opt_nappers = opt_sleepers;
	if (opt_ring > TG_TASK_RING_MAX)
		opt_ring = TG_TASK_RING_MAX;
	while (opt_ring & (opt_ring - 1))	/* a power of two (0: no ring) */
		opt_ring &= opt_ring - 1;
	if ((opt_triple || opt_reboot) && !opt_iters)
		opt_iters = 1;
}

/* ---------------- IDT ---------------- */

static void set_gate(int vec, const void *handler)
{
	u64 a = (u64)handler;

	idt[vec * 2] = (a & 0xffff) | ((u64)TG_KERNEL_CS << 16) | (0x8eULL << 40) |
		       (((a >> 16) & 0xffff) << 48);
	idt[vec * 2 + 1] = a >> 32;
}

static void idt_init(void)
{
	for (int v = 0; v < 32; v++)
		set_gate(v, tg_exc_stubs + 16 * v);
	set_gate(TG_TIMER_VECTOR, tg_timer_entry);
	set_gate(TG_SPURIOUS_VECTOR, tg_spurious_entry);
	idt_desc.limit = sizeof(idt) - 1;
	idt_desc.base = (u64)idt;
}

static void idt_load(void)
{
	__asm__ __volatile__("lidt %0" : : "m"(idt_desc));
}

static void cpu_set_self(struct tg_cpu *c)
{
	c->self = c;
	wrmsr(0xc0000101, (u64)c);	/* IA32_GS_BASE */
}

/* ---------------- local APIC ---------------- */

static void lapic_setup_base(void)
{
	u64 msr = rdmsr(0x1b);		/* IA32_APIC_BASE */
	u64 base = msr & 0xfffff000ULL;

	if (msr & (1 << 10)) {		/* x2APIC: go back to xAPIC (disable first) */
		wrmsr(0x1b, msr & ~((1ULL << 10) | (1ULL << 11)));
		msr &= ~(1ULL << 10);
	}
	if (!(msr & (1 << 11)))
		wrmsr(0x1b, (msr & ~(1ULL << 10)) | (1ULL << 11));
	if (!base)
		base = 0xfee00000;
	lapic = (volatile u32 *)(uintptr_t)base;	/* identity map, uncached */
}

static void lapic_enable(void)
{
	lapic_write(APIC_TPR, 0);
	lapic_write(APIC_LVT_LINT0, 0x10000);		/* masked: no ExtINT from a PIC */
	lapic_write(APIC_LVT_ERR, 0x10000);		/* masked */
	lapic_write(APIC_SVR, 0x100 | TG_SPURIOUS_VECTOR);
}

static u32 lapic_id(void)
{
	return lapic_read(APIC_ID) >> 24;
}

/* Boot-time clock: the BSP's timer counting down from 2^32-1, masked. */
static void clock_start(void)
{
	lapic_write(APIC_TDCR, 0x3);			/* divide by 16 */
	lapic_write(APIC_LVT_TIMER, 0x10000 | TG_TIMER_VECTOR);
	lapic_write(APIC_TICR, 0xffffffff);
}

static u64 clock_us(void)
{
	return (u64)(0xffffffffU - lapic_read(APIC_TCCR)) * 16 / opt_lapic_mhz;
}

/*
 * Wait until *flag != 0 or `us` microseconds passed; at least `min_polls`
 * polls so a broken clock cannot cut the wait to nothing.
 */
static int wait_flag(volatile u32 *flag, u64 us, u64 min_polls)
{
	u64 start = clock_us();

	for (u64 polls = 0;; polls++) {
		if (flag && *flag)
			return 1;
		if (polls >= min_polls && clock_us() - start >= us)
			return 0;
		cpu_relax();
	}
}

static void lapic_send_ipi(u32 apic_id, u32 cmd)
{
	lapic_write(APIC_ICR_HI, apic_id << 24);
	lapic_write(APIC_ICR_LO, cmd);
	for (int i = 0; i < 100000 && (lapic_read(APIC_ICR_LO) & (1 << 12)); i++)
		cpu_relax();
}

static void timer_start_periodic(void)
{
	u64 count = opt_lapic_mhz * 1000000 / 16 / opt_hz;

	if (count > 0xffffffff)
		count = 0xffffffff;
	lapic_write(APIC_TDCR, 0x3);
	lapic_write(APIC_LVT_TIMER, 0x20000 | TG_TIMER_VECTOR);	/* periodic */
	lapic_write(APIC_TICR, (u32)count);
}

/* ---------------- the task table ---------------- */

static void table_begin(void)
{
	WRITE_ONCE(tg_task_table.hdr.seq, tg_task_table.hdr.seq + 1);	/* odd */
	barrier();
}

static void table_end(void)
{
	barrier();
	WRITE_ONCE(tg_task_table.hdr.seq, tg_task_table.hdr.seq + 1);	/* even */
}

/* Inside table_begin/end: entry `e` changed, say so in the change ring. */
static void table_changed(struct vsplice_task_entry *e)
{
	struct vsplice_task_header *h = &tg_task_table.hdr;

	if (!h->ring_size)
		return;
	tg_task_ring[h->changes & (h->ring_size - 1)] = (u32)(e - tg_task_table.entries);
	h->changes++;
}

static void task_init(struct tg_task *t, u32 id, struct tg_cpu *c, u32 i)
{
	struct vsplice_task_entry *e = &tg_task_table.entries[id - 1];
	u64 base = (u64)tg_task_stacks[id - 1];
	u64 *top = (u64 *)(base + TG_TASK_STACK_SIZE);
	u64 *sp = top - 21;

	t->e = e;
	t->cpu = c;
	e->id = id;
	tg_snprintf(e->name, sizeof(e->name), "worker/%u:%u", c->index, i);
	e->state = VSPLICE_TASK_RUNNABLE;
	e->cpu = c->index;
	e->stack_base = base;
	e->stack_size = TG_TASK_STACK_SIZE;
	e->on_cpu = 0;
	e->switches = 0;

	/* Initial frame, as tg_timer_entry leaves it: 15 GPRs then iret frame. */
	memset(sp, 0, 21 * sizeof(u64));
	top[-1] = 0;				/* fake return address: end of stack */
	top[-2] = TG_KERNEL_DS;			/* ss */
	top[-3] = (u64)&top[-1];		/* rsp: as if tg_task_main was called */
	top[-4] = 0x202;			/* rflags: IF */
	top[-5] = TG_KERNEL_CS;			/* cs */
	top[-6] = (u64)tg_task_main;		/* rip */
	((struct tg_regs *)sp)->rdi = (u64)t;
	e->saved_sp = (u64)sp;

	c->tasks[i] = t;
}

static void tasks_create(u32 ncpu)
{
	u32 per = (u32)opt_tasks, id = 0;

	if (per * ncpu > TG_MAX_TASKS)
		per = TG_MAX_TASKS / ncpu;
	for (u32 ci = 0; ci < ncpu; ci++) {
		for (u32 i = 0; i < per; i++, id++)
			task_init(&tasks[id], id + 1, &cpus[ci], i);
		cpus[ci].ntasks = per;
	}
	task_total = id;
	sleeper_total = tg_sleepers_create(&tg_task_table.entries[id], id + 1, (u32)opt_sleepers,
					   (u32)opt_nappers, boot_params);
	tg_task_count = id + sleeper_total;

	struct vsplice_task_header *h = &tg_task_table.hdr;
	h->version = VSPLICE_TASK_VERSION;
	h->entry_size = sizeof(struct vsplice_task_entry);
	h->count = id + sleeper_total;
	h->header_size = sizeof(struct vsplice_task_header);
	h->seq = 0;
	h->changes = 0;
	h->ring = (u64)tg_task_ring;
	h->ring_size = (u32)opt_ring;
	h->nr_cpus = ncpu;
	h->tasks_per_cpu = per;
	barrier();
	WRITE_ONCE(h->magic, VSPLICE_TASK_MAGIC);	/* last: the table is complete */
}

/* ---------------- scheduling ---------------- */

static void bsp_tick(void)
{
	if (!opt_iters || shutting_down || READ_ONCE(tasks_done) < task_total)
		return;
	shutting_down = 1;
	if (opt_triple) {
		tg_printf("TG triple fault\n");
		tg_triple_fault();
	}
	if (opt_reboot) {
		tg_printf("TG reboot\n");
		outb(0x64, 0xfe);	/* i8042 reset pulse: a reboot request */
		halt_forever();
	}
	tg_printf("TG poweroff\n");
	/* ACPI S5 through PM1a_CNT (FADT: 0x604; _S5_ sleep type 5, SLP_EN) ... */
	outw(0x604, (5 << 10) | (1 << 13));
	/* ... and the i8042 reset pulse if the platform has no ACPI power-off. */
	outb(0x64, 0xfe);
	halt_forever();
}

/*
 * Called by tg_timer_entry with the interrupted task's stack pointer (its
 * GPRs and iret frame are there); returns the stack pointer to resume.
 */
u64 tg_timer_interrupt(u64 sp)
{
	struct tg_cpu *c = this_cpu();
	struct tg_task *cur, *next = NULL;
	u64 now = c->ticks + 1;
	u32 n = c->ntasks, ni = 0;

	lapic_write(APIC_EOI, 0);
	WRITE_ONCE(c->ticks, now);
	if (c->index == 0)
		bsp_tick();
	if (!n)
		return sp;
	cur = c->tasks[c->cur];

	spin_lock(&tg_task_lock);
	table_begin();
	if (cur->e->state == VSPLICE_TASK_RUNNING)
		cur->e->state = VSPLICE_TASK_RUNNABLE;
	/* Round robin, starting after the current task and ending with it. */
	for (u32 k = 0, i = c->cur; k < n; k++) {
		struct tg_task *t;

		if (++i == n)
			i = 0;
		t = c->tasks[i];
		if (t->e->state == VSPLICE_TASK_SLEEPING && now >= t->wake)
			t->e->state = VSPLICE_TASK_RUNNABLE;
		if (!next && t->e->state == VSPLICE_TASK_RUNNABLE) {
			next = t;
			ni = i;
		}
	}
	if (!next) {			/* everybody sleeps: stay, it halts again */
		next = cur;
		ni = c->cur;
	}
	if (next != cur) {
		cur->e->saved_sp = sp;
		cur->e->switches++;
		cur->e->on_cpu = 0;
		next->e->on_cpu = 1;
		table_changed(cur->e);
		table_changed(next->e);
		c->cur = ni;
		sp = next->e->saved_sp;
	}
	if (next->e->state == VSPLICE_TASK_RUNNABLE)
		next->e->state = VSPLICE_TASK_RUNNING;
	table_end();
	spin_unlock(&tg_task_lock);
	return sp;
}

u64 tg_cpu_ticks(void)
{
	return this_cpu()->ticks;
}

/* Mark the current task sleeping until `ticks` ticks from now; returns the wake tick. */
u64 tg_sched_sleep_begin(u64 ticks)
{
	struct tg_cpu *c = this_cpu();
	struct tg_task *t = c->tasks[c->cur];
	u64 flags, wake;

	if (!ticks)
		return c->ticks;
	flags = irq_save();
	wake = c->ticks + ticks;
	spin_lock(&tg_task_lock);
	table_begin();
	t->wake = wake;
	t->e->state = VSPLICE_TASK_SLEEPING;
	table_end();
	spin_unlock(&tg_task_lock);
	irq_restore(flags);
	return wake;
}

/* Start this CPU's first task; its timer takes over from there. */
static NORETURN void cpu_run(struct tg_cpu *c)
{
	struct tg_task *t = c->tasks[0];

	if (!c->ntasks)
		for (;;)
			__asm__ __volatile__("sti; hlt" ::: "memory");
	spin_lock(&tg_task_lock);
	table_begin();
	c->cur = 0;
	t->e->on_cpu = 1;
	t->e->state = VSPLICE_TASK_RUNNING;
	table_changed(t->e);
	table_end();
	spin_unlock(&tg_task_lock);
	timer_start_periodic();
	tg_start_first(t->e->saved_sp);
}

/* ---------------- the tasks ---------------- */

/* The line checksum: s = (s * 31 + byte) mod 65536 over the text before " sum=". */
static u32 line_sum(const char *s, int n)
{
	u32 sum = 0;

	for (int i = 0; i < n; i++)
		sum = (sum * 31 + (u8)s[i]) & 0xffff;
	return sum;
}

static void print_iteration(struct tg_task *t, u64 iter, u64 value)
{
	char line[160];
	int n;

	n = tg_snprintf(line, sizeof(line), "TG cpu=%u task=%lu iter=%lu value=0x%lx magic=0x%lx",
			t->cpu->index, t->e->id, iter, value, tg_magic);
	n += tg_snprintf(line + n, sizeof(line) - (size_t)n, " sum=0x%04x\n", line_sum(line, n));
	tg_puts_locked(line, (size_t)n);
}

NORETURN void tg_task_main(struct tg_task *t)
{
	for (;;) {
		u64 iter = ++t->iter;
		u64 value;

		if (opt_hold && t->e->id == 1 && iter == 1) {
			tg_printf("TG hold task=1 in tg_hold\n");
			tg_hold();
			tg_printf("TG hold released task=1\n");
		}
		if (opt_work)
			tg_busy(opt_work);
		value = tg_compute(iter);
		if (!opt_quiet)
			print_iteration(t, iter, value);
		if (opt_iters && iter == opt_iters) {
			__atomic_fetch_add(&tasks_done, 1, __ATOMIC_SEQ_CST);
			for (;;)
				tg_sleep(1000);
		}
		tg_sleep(opt_wait);
	}
}

/* ---------------- exceptions ---------------- */

void tg_exception(struct tg_exc_frame *f)
{
	char line[200];
	u64 cr2;
	int n;

	__asm__ __volatile__("movq %%cr2, %0" : "=r"(cr2));
	n = tg_snprintf(line, sizeof(line),
			"TG panic: exception vec=%lu err=0x%lx rip=0x%lx rsp=0x%lx cr2=0x%lx\n",
			f->vector, f->error, f->iret.rip, f->iret.rsp, cr2);
	/* Do not deadlock if the fault hit inside the console lock. */
	for (int i = 0; i < 1000000; i++)
		if (spin_trylock(&tg_console_lock))
			break;
	for (int i = 0; i < n; i++)
		outb(0x3f8, (u8)line[i]);
	spin_unlock(&tg_console_lock);
	halt_forever();
}

/* ---------------- boot ---------------- */

static int e820_count(void)
{
	int n = boot_params[0x1e8];

	return n > 128 ? 128 : n;
}

static int e820_page_usable(u64 pa)
{
	for (int i = 0; i < e820_count(); i++) {
		const u8 *e = boot_params + 0x2d0 + 20 * i;
		u64 addr = rd64(e), size = rd64(e + 8);

		if (rd32(e + 16) == 1 && pa >= addr && pa + 4096 <= addr + size)
			return 1;
	}
	return 0;
}

/*
 * A page below 1 MiB for the AP trampoline: usable in the e820, clear of
 * the loader's boot_params and command line. 0x10000 is free in the vsplice
 * VMM's layout (page tables end at 0xf000, the command line is at 0x20000).
 */
static u64 pick_trampoline(u64 bp_pa, u64 cl_pa, u64 cl_len)
{
	if (!e820_count())
		return 0x10000;
	for (u64 pa = 0x10000; pa + 4096 <= 0x9f000; pa += 4096) {
		if (!e820_page_usable(pa))
			continue;
		if (pa < bp_pa + 4096 && bp_pa < pa + 4096)
			continue;
		if (cl_pa && pa < cl_pa + cl_len + 1 && cl_pa < pa + 4096)
			continue;
		return pa;
	}
	return 0;
}

static void trampoline_install(u64 pa)
{
	u8 *tr = (u8 *)(uintptr_t)pa;
	u64 gdt[4] = { 0, 0x00cf9b000000ffffULL, 0x00cf93000000ffffULL, 0x00af9b000000ffffULL };
	u16 v16;
	u32 v32;
	u64 v64;

	memcpy(tr, tg_tramp_start, (size_t)(tg_tramp_end - tg_tramp_start));
	memcpy(tr + TR_GDT, gdt, sizeof(gdt));
	v16 = sizeof(gdt) - 1;
	memcpy(tr + TR_GDTR, &v16, 2);
	v32 = (u32)(pa + TR_GDT);
	memcpy(tr + TR_GDTR + 2, &v32, 4);
	v32 = (u32)(pa + (u64)(tg_tramp_pm - tg_tramp_start));
	memcpy(tr + TR_PM_PTR, &v32, 4);
	v16 = TR_SEL_CODE32;
	memcpy(tr + TR_PM_PTR + 4, &v16, 2);
	v32 = (u32)(pa + (u64)(tg_tramp_lm - tg_tramp_start));
	memcpy(tr + TR_LM_PTR, &v32, 4);
	v16 = TR_SEL_CODE64;
	memcpy(tr + TR_LM_PTR + 4, &v16, 2);
	v32 = (u32)((u64)tg_pml4 - TG_START_KERNEL_MAP);
	memcpy(tr + TR_CR3, &v32, 4);
	memcpy(tr + TR_EFER_OR, &tg_efer_nx, 4);
	v64 = (u64)tg_ap_start64;
	memcpy(tr + TR_ENTRY, &v64, 8);
}

/* INIT / SIPI / SIPI one AP and wait until it reports online. */
static int start_ap(u64 tramp_pa, struct tg_cpu *c)
{
	volatile u32 *started = (volatile u32 *)(uintptr_t)(tramp_pa + TR_STARTED);
	u64 stack = (u64)(tg_boot_stacks + (u64)(c->index + 1) * TG_BOOT_STACK_SIZE);
	u32 idx = c->index, sipi = 0x4600 | (u32)(tramp_pa >> 12);

	memcpy((u8 *)(uintptr_t)(tramp_pa + TR_STACK), &stack, 8);
	memcpy((u8 *)(uintptr_t)(tramp_pa + TR_CPU), &idx, 4);
	*started = 0;
	barrier();

	lapic_send_ipi(c->apic_id, 0x4500);		/* INIT, assert */
	wait_flag(NULL, 10000, 10);
	lapic_send_ipi(c->apic_id, sipi);		/* STARTUP */
	if (!wait_flag(started, 1000, 100))
		lapic_send_ipi(c->apic_id, sipi);	/* second STARTUP */
	return wait_flag(&c->online, 5000000, 100000);
}

static const char *const source_name[] = { "none", "madt", "mp" };

NORETURN void tg_main(u64 bp_pa)
{
	static u32 ids[256];
	u64 cl_pa, cl_len = 0, rsdp, tramp;
	int n_ids, source;
	u32 ncpu = 1, bsp_id;

	/* The task table is not in the cleared .bss: no stale magic (reboot). */
	memset(&tg_task_table.hdr, 0, sizeof(tg_task_table.hdr));
	/* Copy what the loader gave us (Linux: copy_bootdata). */
	memcpy(boot_params, (const void *)(uintptr_t)bp_pa, sizeof(boot_params));
	cl_pa = rd32(boot_params + 0x228) | ((u64)rd32(boot_params + 0x0c8) << 32);
	if (cl_pa) {
		const char *src = (const char *)(uintptr_t)cl_pa;
		while (cl_len < sizeof(cmdline) - 1 && src[cl_len])
			cl_len++;
		memcpy(cmdline, src, cl_len);
	}
	cmdline[cl_len] = '\0';
	rsdp = rd64(boot_params + 0x070);
	parse_options();

	cpus[0].index = 0;
	cpu_set_self(&cpus[0]);
	idt_init();
	idt_load();

	tg_printf("TG testguest boot_params=0x%lx cmdline=\"%s\"\n", bp_pa, cmdline);

	/* Mask both 8259 PICs (a BIOS may have left the PIT on vector 8). */
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
	lapic_setup_base();
	lapic_enable();
	clock_start();
	bsp_id = lapic_id();
	cpus[0].apic_id = bsp_id;

	n_ids = tg_find_cpus(rsdp, opt_acpi, ids, 256, &source);
	for (int i = 0; i < n_ids && ncpu < opt_maxcpus; i++) {
		if (ids[i] == bsp_id)
			continue;
		cpus[ncpu].index = ncpu;
		cpus[ncpu].apic_id = ids[i];
		ncpu++;
	}
	tg_printf("TG boot cpus=%u source=%s tasks=%lu\n", n_ids > 0 ? (u32)n_ids : 1,
		  source_name[source], opt_tasks);

	tramp = ncpu > 1 ? pick_trampoline(bp_pa, cl_pa, cl_len) : 0;
	tg_trampoline_pa = tramp;
	if (ncpu > 1 && !tramp) {
		tg_printf("TG no free page below 1 MiB for the AP trampoline: running on cpu 0 only\n");
		ncpu = 1;
	}
	if (ncpu > 1)
		trampoline_install(tramp);
	cpus[0].online = 1;
	for (u32 i = 1; i < ncpu; i++) {
		if (!start_ap(tramp, &cpus[i])) {
			tg_printf("TG cpu %u failed to start apic=%u\n", i, cpus[i].apic_id);
			ncpu = i;
			break;
		}
	}
	tg_cpu_count = ncpu;

	tasks_create(ncpu);
	if (opt_sleepers)
		tg_printf("TG sleepers=%u nappers=%lu stacks=0x%lx+0x%lx\n", sleeper_total,
			  opt_nappers < sleeper_total ? opt_nappers : sleeper_total, tg_sleeper_area,
			  tg_sleeper_area_size);
	tg_printf("TG ready cpus=%u tasks=%u task_table=0x%lx magic_at=0x%lx\n", ncpu, task_total + sleeper_total,
		  (u64)&tg_task_table, (u64)&tg_magic);
	WRITE_ONCE(go, 1);
	cpu_run(&cpus[0]);
}

NORETURN void tg_ap_main(u32 idx)
{
	struct tg_cpu *c = &cpus[idx];

	cpu_set_self(c);
	idt_load();
	lapic_enable();
	tg_printf("TG cpu %u online apic=%u\n", idx, lapic_id());
	WRITE_ONCE(c->online, 1);
	while (!READ_ONCE(go))
		cpu_relax();
	cpu_run(c);
}

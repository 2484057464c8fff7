/*
 * tg.h - internal definitions of the vsplice test guest, shared by its C and
 * assembly files (the parts guarded by __ASSEMBLER__ are C only).
 *
 * The exported, host-visible layout of the task table lives in task_table.h;
 * this header is for the guest's own use.
 */
#ifndef TG_H
#define TG_H

/* Linux's __START_KERNEL_map: kernel virtual = this + physical. */
#define TG_START_KERNEL_MAP	0xffffffff80000000
/* Physical load address of the image (Linux's LOAD_PHYSICAL_ADDR). */
#define TG_PHYS_LOAD		0x1000000

/* Segment selectors of our GDT: the same as Linux's __KERNEL_CS / __KERNEL_DS. */
#define TG_KERNEL_CS		0x10
#define TG_KERNEL_DS		0x18

#define TG_MAX_CPUS		16
#define TG_MAX_TASKS_PER_CPU	8
#define TG_MAX_TASKS		64	/* all CPUs together */
#define TG_TASK_STACK_SIZE	16384	/* like Linux's THREAD_SIZE */
#define TG_BOOT_STACK_SIZE	8192	/* per-CPU boot stack, abandoned once tasks run */
#define TG_TASK_RING_MAX	4096	/* tg.ring: entries of the task table's change ring */
#define TG_TASK_RING_DEFAULT	256
#define TG_MAX_SLEEPERS		16384	/* tg.sleepers: tasks parked for good at boot */
#define TG_SLEEPER_STACK_SIZE	4096	/* each sleeper's own stack (RAM above the image) */

#define TG_TIMER_VECTOR		0xec	/* Linux's LOCAL_TIMER_VECTOR */
#define TG_SPURIOUS_VECTOR	0xff

/*
 * AP trampoline: real-mode code copied to a page below 1 MiB. It starts with a
 * 2-byte jmp over a data block at TR_DATA that the BSP fills in before each
 * INIT/SIPI/SIPI sequence. Offsets are from the start of the trampoline.
 */
#define TR_DATA			8
#define TR_GDT			(TR_DATA + 0)	/* 4 descriptors: null, code32, data, code64 */
#define TR_GDTR			(TR_DATA + 34)	/* u16 limit, u32 base (lgdt operand) */
#define TR_PM_PTR		(TR_DATA + 40)	/* u32 offset, u16 selector (ljmpl *) */
#define TR_LM_PTR		(TR_DATA + 48)	/* u32 offset, u16 selector (ljmpl *) */
#define TR_CR3			(TR_DATA + 56)	/* u32 physical address of tg_pml4 */
#define TR_EFER_OR		(TR_DATA + 60)	/* u32 extra EFER bits (NXE when supported) */
#define TR_STACK		(TR_DATA + 64)	/* u64 initial RSP (kernel virtual) */
#define TR_ENTRY		(TR_DATA + 72)	/* u64 64-bit entry (kernel virtual) */
#define TR_CPU			(TR_DATA + 80)	/* u32 CPU index, passed in EDI */
#define TR_STARTED		(TR_DATA + 84)	/* u32 set to 1 by the AP's first instructions */
#define TR_DATA_END		(TR_DATA + 88)
#define TR_SEL_CODE32		0x08
#define TR_SEL_DATA		0x10
#define TR_SEL_CODE64		0x18

#ifndef __ASSEMBLER__

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t s64;

#define NORETURN __attribute__((noreturn))
#define barrier() __asm__ __volatile__("" ::: "memory")
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* GPRs as pushed by the interrupt entry stubs (head64.S), lowest address first. */
struct tg_regs {
	u64 r15, r14, r13, r12, r11, r10, r9, r8;
	u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
};

/* What the CPU pushes on an interrupt (64-bit mode, no privilege change). */
struct tg_iret {
	u64 rip, cs, rflags, rsp, ss;
};

/* Exception frame: regs, then vector and error code pushed by the stub, then iret. */
struct tg_exc_frame {
	struct tg_regs regs;
	u64 vector, error;
	struct tg_iret iret;
};

/* ---- port I/O, MSRs, misc (plain integer instructions only) ---- */
static inline void outb(u16 port, u8 v)
{
	__asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(u16 port, u16 v)
{
	__asm__ __volatile__("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ __volatile__("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ __volatile__("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

static inline void cpu_relax(void)
{
	__asm__ __volatile__("pause" ::: "memory");
}

static inline u64 irq_save(void)
{
	u64 flags;
	__asm__ __volatile__("pushfq; popq %0; cli" : "=r"(flags) : : "memory");
	return flags;
}

static inline void irq_restore(u64 flags)
{
	if (flags & 0x200)
		__asm__ __volatile__("sti" ::: "memory");
}

static inline NORETURN void halt_forever(void)
{
	for (;;)
		__asm__ __volatile__("cli; hlt" ::: "memory");
}

/* xchg-based spinlock. */
typedef struct { volatile u32 v; } tg_spinlock_t;

static inline void spin_lock(tg_spinlock_t *l)
{
	while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE))
		while (READ_ONCE(l->v))
			cpu_relax();
}

static inline int spin_trylock(tg_spinlock_t *l)
{
	return !__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE);
}

static inline void spin_unlock(tg_spinlock_t *l)
{
	__atomic_store_n(&l->v, 0, __ATOMIC_RELEASE);
}

/* ---- lib.c ---- */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int tg_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int tg_snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void tg_puts_locked(const char *s, size_t len);
void tg_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern tg_spinlock_t tg_console_lock;

/* ---- acpi.c: CPU discovery ---- */
#define TG_CPU_SOURCE_NONE	0
#define TG_CPU_SOURCE_MADT	1
#define TG_CPU_SOURCE_MP	2
/* Fills apic_ids (enabled CPUs, firmware order); returns the count. */
int tg_find_cpus(u64 rsdp_hint, int use_acpi, u32 *apic_ids, int max, int *source);

/* ---- main.c: services used by patchable.c ---- */
u64 tg_sched_sleep_begin(u64 ticks);
u64 tg_cpu_ticks(void);

/* ---- sleepers.c ---- */
struct vsplice_task_entry;
/* Parks `count` sleepers (the first `nappers` in tg_nap) as table entries
 * from `first` on, their stacks in usable e820 RAM above the image;
 * returns how many it made. */
extern u64 tg_sleeper_area, tg_sleeper_area_size;
u32 tg_sleepers_create(struct vsplice_task_entry *first, u64 first_id, u32 count, u32 nappers,
		       const u8 *boot_params);

/* ---- patchable.c ---- */
u64 tg_compute(u64 x);
u64 tg_step_a(u64 x);
u64 tg_step_b(u64 x);
void tg_sleep(u64 ticks);
u64 tg_busy(u64 n);
void tg_hold(void);
u64 tg_tiny(u64 x);
void tg_nap(u64 *saved_sp);
extern volatile u64 tg_hold_release;

/* ---- head64.S ---- */
extern char tg_exc_stubs[];		/* 32 stubs, 16 bytes apart */
extern char tg_timer_entry[], tg_spurious_entry[];
extern char tg_ap_start64[];
extern char tg_tramp_start[], tg_tramp_end[], tg_tramp_pm[], tg_tramp_lm[];
extern u64 tg_pml4[];
extern char _text[], _end[];
NORETURN void tg_start_first(u64 saved_sp);
void tg_park_enter(u64 stack_top, void *arg, void (*fn)(void *));
void tg_park(u64 *saved_sp);
NORETURN void tg_triple_fault(void);

#endif /* !__ASSEMBLER__ */
#endif /* TG_H */

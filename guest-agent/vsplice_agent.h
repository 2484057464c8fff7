/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vsplice_agent.h — the descriptor the vsplice guest agent publishes, and
 * the agent's internal interfaces.
 *
 * The descriptor is the contract with the host: patcher/src/linux/agent/
 * layout.rs mirrors it field by field (change both, bump the version).
 * Everything is little-endian, naturally aligned, and lives in two places:
 *
 *   block  physically contiguous pages (alloc_pages_exact), page aligned:
 *          [0, 256)             struct vsplice_agent_header
 *          [cpu_off, ...)       cpu_count x struct vsplice_agent_cpu
 *          [page_list_off, ...) table_pages x u64: guest-physical address
 *                               of each page of the task table
 *   table  vmalloc'd, task_cap x struct vsplice_agent_task; entries
 *          [0, task_count) are live (dense: removal moves the last entry
 *          into the hole).
 *
 * The block's guest-physical address is what the agent announces through
 * the doorbell and what a magic scan finds (magic + self_phys + checksum).
 *
 * Consistency: a sequence counter, odd while the agent updates the table
 * (fork, rename, exec, free). A reader that stops every vCPU and sees an
 * odd value must let the guest run and try again; an even value means the
 * header, the table and the sums agree:
 *   header_sum  = vsa_sum(header bytes [0, 248))
 *   static_sum  = vsa_sum(block bytes [cpu_off, page_list_off + 8*table_pages))
 *   tasks_sum   = wrapping sum of vsa_sum(entry) over the live entries
 * where vsa_sum folds the little-endian u64 words of a buffer through
 * vsa_mix (below). The sums are position-independent for the table so a
 * moved entry costs nothing to re-sum.
 *
 * Dynamic task fields (state, cpu, on_cpu, saved sp) are snapshots taken
 * at the task's last event; the header carries the task_struct offsets so
 * a reader with every vCPU stopped refreshes them from the task itself.
 */
#ifndef VSPLICE_AGENT_H
#define VSPLICE_AGENT_H

#include <linux/types.h>

#define VSA_MAGIC0		0x544e47414c505356ULL	/* "VSPLAGNT" */
#define VSA_MAGIC1		0x9c1d6f2b37e4a580ULL
#define VSA_VERSION		1
#define VSA_HEADER_SIZE		256
#define VSA_DOORBELL_PORT	0x5f0	/* +0: low 32 bits (commits), +4: high 32 bits */
#define VSA_DOORBELL_SIG	0x4c505356	/* "VSPL": what the vsplice VMM answers on inl(port) */

/* header.flags */
#define VSA_F_OVERFLOW		(1u << 0)	/* a task could not be recorded: the table is unusable */
#define VSA_F_IRQ_STACKS	(1u << 1)	/* the cpu records include the IRQ stacks */
#define VSA_F_IDLE_TASKS	(1u << 2)	/* the idle task of every CPU is in the table */
#define VSA_F_LIVE		(1u << 3)	/* tracking is active */

/* task.flags */
#define VSA_T_ON_CPU		(1u << 0)	/* snapshot of on_cpu */
#define VSA_T_IDLE		(1u << 1)	/* a CPU's idle task (pid 0) */
#define VSA_T_KTHREAD		(1u << 2)	/* PF_KTHREAD */

/* cpu stack kinds */
enum vsa_stack_kind {
	VSA_STACK_NONE = 0,
	VSA_STACK_IRQ = 1,
	VSA_STACK_DF = 2,
	VSA_STACK_NMI = 3,
	VSA_STACK_DB = 4,
	VSA_STACK_MCE = 5,
	VSA_STACK_VC = 6,
	VSA_STACK_VC2 = 7,
	VSA_STACK_ENTRY = 8,
};
#define VSA_CPU_STACKS		8

struct vsplice_agent_header {
	__u64 magic[2];		/* 0x00 VSA_MAGIC0, VSA_MAGIC1; zero after unload */
	__u32 version;		/* 0x10 */
	__u32 header_size;	/* 0x14 VSA_HEADER_SIZE */
	__u64 self_phys;	/* 0x18 guest-physical address of this header */
	__u64 self_virt;	/* 0x20 kernel virtual address of this header */
	__u64 seq;		/* 0x28 odd while updating */
	__u64 boot_id;		/* 0x30 random, per load */
	__u32 block_size;	/* 0x38 bytes of the contiguous block */
	__u32 flags;		/* 0x3c VSA_F_* */
	__u32 cpu_off;		/* 0x40 */
	__u32 cpu_count;	/* 0x44 records (CPU ids 0..cpu_count-1, possible ones filled) */
	__u32 cpu_rec_size;	/* 0x48 sizeof(struct vsplice_agent_cpu) */
	__u32 page_list_off;	/* 0x4c */
	__u32 table_pages;	/* 0x50 */
	__u32 task_rec_size;	/* 0x54 sizeof(struct vsplice_agent_task) */
	__u32 task_cap;		/* 0x58 */
	__u32 task_count;	/* 0x5c */
	__u64 table_virt;	/* 0x60 kernel virtual address of the table */
	__u64 tasks_sum;	/* 0x68 */
	__u64 static_sum;	/* 0x70 */
	__u64 updates;		/* 0x78 table updates since load */
	__u32 thread_size;	/* 0x80 THREAD_SIZE */
	__u32 task_struct_size;	/* 0x84 */
	__u32 off_pid;		/* 0x88 offsets inside struct task_struct */
	__u32 off_tgid;		/* 0x8c */
	__u32 off_comm;		/* 0x90 */
	__u32 off_state;	/* 0x94 __state */
	__u32 off_on_cpu;	/* 0x98 */
	__u32 off_cpu;		/* 0x9c thread_info.cpu */
	__u32 off_stack;	/* 0xa0 */
	__u32 off_thread_sp;	/* 0xa4 thread.sp */
	__u32 off_flags;	/* 0xa8 flags (PF_*) */
	__u32 off_exit_state;	/* 0xac */
	__u32 irq_stack_size;	/* 0xb0 IRQ_STACK_SIZE */
	__u32 dropped;		/* 0xb4 tasks that did not fit (then VSA_F_OVERFLOW) */
	__u64 reserved[8];	/* 0xb8 zero */
	__u64 header_sum;	/* 0xf8 */
};

struct vsplice_agent_stack {
	__u64 start;		/* lowest address */
	__u64 end;		/* one past the highest */
	__u32 kind;		/* enum vsa_stack_kind, 0 = unused slot */
	__u32 reserved;
};

struct vsplice_agent_cpu {
	__u32 cpu;
	__u32 online;		/* 1 if the CPU was online when recorded */
	__u64 idle_task;	/* its idle task_struct, 0 if unknown */
	struct vsplice_agent_stack stacks[VSA_CPU_STACKS];
};

struct vsplice_agent_task {
	__u64 task;		/* 0x00 struct task_struct * */
	__u64 stack;		/* 0x08 task->stack */
	__u64 sp;		/* 0x10 thread.sp (snapshot) */
	__s32 pid;		/* 0x18 */
	__s32 tgid;		/* 0x1c */
	__u32 state;		/* 0x20 __state (snapshot) */
	__u32 cpu;		/* 0x24 (snapshot) */
	__u32 flags;		/* 0x28 VSA_T_* */
	__u32 stack_size;	/* 0x2c */
	char comm[16];		/* 0x30 NUL-padded */
};

/* One step of the checksum: mixes a little-endian u64 word into h. */
static inline __u64 vsa_mix(__u64 h, __u64 w)
{
	h ^= w * 0x9e3779b97f4a7c15ULL;
	h = (h << 31) | (h >> 33);
	return h * 0xbf58476d1ce4e5b9ULL;
}

/* The checksum of n bytes (a multiple of 8). */
static inline __u64 vsa_sum(const void *p, unsigned long n)
{
	const __u64 *w = p;
	__u64 h = 0x243f6a8885a308d3ULL;
	unsigned long i;

	for (i = 0; i < n / 8; i++)
		h = vsa_mix(h, w[i]);
	return h ^ (h >> 29);
}

#ifdef __KERNEL__
struct task_struct;

/* agent_table.c: the task table */
int vsa_table_init(unsigned int cap);
void vsa_table_free(void);
void vsa_table_add(struct task_struct *t);
void vsa_table_remove(struct task_struct *t);
void vsa_table_rename(struct task_struct *t, const char *comm);
void vsa_table_exec(struct task_struct *t, pid_t old_pid);
void vsa_table_fill(void);
void vsa_table_kill(void);
u32 vsa_table_snapshot(struct vsplice_agent_task *buf, u32 max, struct vsplice_agent_header *hdr);

/* agent_cpu.c: per-CPU stacks, idle tasks, kallsyms */
unsigned long vsa_lookup_name(const char *name);
void vsa_fill_cpus(struct vsplice_agent_cpu *recs, unsigned int n, __u32 *flags);
struct task_struct *vsa_idle_task(int cpu);

/* agent_status.c: debugfs */
int vsa_status_init(void);
void vsa_status_exit(void);

/* agent_main.c: shared state */
extern struct vsplice_agent_header *vsa_hdr;
extern struct vsplice_agent_task *vsa_tasks;
extern int vsa_doorbell_seen;
#endif

#endif /* VSPLICE_AGENT_H */

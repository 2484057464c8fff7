// SPDX-License-Identifier: GPL-2.0
/*
 * agent_table.c — the vsplice agent's task table: the contiguous descriptor
 * block (header, per-CPU stacks, page list), the vmalloc'd table of tasks,
 * a private open-addressing hash from task_struct pointer to table slot,
 * and every update under one raw spinlock and the descriptor's sequence
 * counter (odd while updating), with the checksums kept current
 * incrementally (see vsplice_agent.h).
 */
#include <linux/hash.h>
#include <linux/io.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/random.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "vsplice_agent.h"

struct vsplice_agent_header *vsa_hdr;
struct vsplice_agent_task *vsa_tasks;
/* The authoritative header; vsa_hdr is its published copy. */
static struct vsplice_agent_header vsa_own;

static DEFINE_RAW_SPINLOCK(vsa_lock);
static size_t vsa_block_size;
static u32 *vsa_hash;		/* slot + 1; 0 = empty */
static unsigned int vsa_hash_bits;

static unsigned int hpos(u64 task)
{
	return hash_64(task, vsa_hash_bits);
}

/* Hash position holding task, or -1. */
static long find_pos(u64 task)
{
	unsigned int mask = (1u << vsa_hash_bits) - 1, i = hpos(task);

	for (;;) {
		u32 v = vsa_hash[i];

		if (!v)
			return -1;
		if (vsa_tasks[v - 1].task == task)
			return i;
		i = (i + 1) & mask;
	}
}

static void hash_insert(u64 task, u32 slot)
{
	unsigned int mask = (1u << vsa_hash_bits) - 1, i = hpos(task);

	while (vsa_hash[i])
		i = (i + 1) & mask;
	vsa_hash[i] = slot + 1;
}

/* Linear-probing deletion by backward shift (no tombstones). */
static void hash_delete(unsigned int i)
{
	unsigned int mask = (1u << vsa_hash_bits) - 1, j = i, k;

	for (;;) {
		j = (j + 1) & mask;
		if (!vsa_hash[j])
			break;
		k = hpos(vsa_tasks[vsa_hash[j] - 1].task);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		vsa_hash[i] = vsa_hash[j];
		i = j;
	}
	vsa_hash[i] = 0;
}

static void begin_update(void)
{
	vsa_own.seq++;
	WRITE_ONCE(vsa_hdr->seq, vsa_own.seq);
	smp_wmb();
}

/*
 * Publishes the agent's own copy of the header: the shared page is only
 * ever written, never trusted, so whatever the host scribbles there is
 * overwritten at the next event and cannot steer the agent.
 */
static void end_update(void)
{
	struct vsplice_agent_header copy;

	vsa_own.updates++;
	vsa_own.seq++;
	vsa_own.header_sum = 0;
	vsa_own.header_sum = vsa_sum(&vsa_own, offsetof(struct vsplice_agent_header, header_sum));
	copy = vsa_own;
	copy.seq = vsa_own.seq - 1;
	memcpy(vsa_hdr, &copy, sizeof(copy));
	smp_wmb();
	WRITE_ONCE(vsa_hdr->seq, vsa_own.seq);
}

static void snapshot(struct vsplice_agent_task *e, struct task_struct *t)
{
	memset(e, 0, sizeof(*e));
	e->task = (unsigned long)t;
	e->stack = (unsigned long)READ_ONCE(t->stack);
	e->sp = READ_ONCE(t->thread.sp);
	e->pid = READ_ONCE(t->pid);
	e->tgid = READ_ONCE(t->tgid);
	e->state = READ_ONCE(t->__state);
	e->cpu = task_cpu(t);
	e->flags = (READ_ONCE(t->on_cpu) ? VSA_T_ON_CPU : 0) |
		   (READ_ONCE(t->flags) & PF_KTHREAD ? VSA_T_KTHREAD : 0) |
		   (e->pid == 0 ? VSA_T_IDLE : 0);
	e->stack_size = THREAD_SIZE;
	/* Like the tracepoints do: an unlocked copy, terminated. */
	memcpy(e->comm, t->comm, sizeof(e->comm));
	e->comm[sizeof(e->comm) - 1] = 0;
}

/* Adds t, or refreshes its entry if it is there already (idempotent). */
void vsa_table_add(struct task_struct *t)
{
	struct vsplice_agent_task e;
	unsigned long flags;
	long pos;

	snapshot(&e, t);
	raw_spin_lock_irqsave(&vsa_lock, flags);
	begin_update();
	pos = find_pos(e.task);
	if (pos >= 0) {
		struct vsplice_agent_task *old = &vsa_tasks[vsa_hash[pos] - 1];

		vsa_own.tasks_sum -= vsa_sum(old, sizeof(*old));
		*old = e;
		vsa_own.tasks_sum += vsa_sum(old, sizeof(*old));
	} else if (vsa_own.task_count >= vsa_own.task_cap) {
		vsa_own.flags |= VSA_F_OVERFLOW;
		vsa_own.dropped++;
	} else {
		u32 slot = vsa_own.task_count;

		vsa_tasks[slot] = e;
		hash_insert(e.task, slot);
		vsa_own.task_count = slot + 1;
		vsa_own.tasks_sum += vsa_sum(&e, sizeof(e));
	}
	end_update();
	raw_spin_unlock_irqrestore(&vsa_lock, flags);
}

void vsa_table_remove(struct task_struct *t)
{
	unsigned long flags;
	long pos;

	raw_spin_lock_irqsave(&vsa_lock, flags);
	pos = find_pos((unsigned long)t);
	if (pos >= 0) {
		u32 slot = vsa_hash[pos] - 1, last = vsa_own.task_count - 1;

		begin_update();
		vsa_own.tasks_sum -= vsa_sum(&vsa_tasks[slot], sizeof(vsa_tasks[slot]));
		if (slot != last) {
			long q = find_pos(vsa_tasks[last].task);

			vsa_tasks[slot] = vsa_tasks[last];
			if (q >= 0)
				vsa_hash[q] = slot + 1;
		}
		memset(&vsa_tasks[last], 0, sizeof(vsa_tasks[last]));
		hash_delete(pos);
		vsa_own.task_count = last;
		end_update();
	}
	raw_spin_unlock_irqrestore(&vsa_lock, flags);
}

void vsa_table_rename(struct task_struct *t, const char *comm)
{
	unsigned long flags;
	char buf[16];
	long pos;

	strscpy_pad(buf, comm, sizeof(buf));
	raw_spin_lock_irqsave(&vsa_lock, flags);
	pos = find_pos((unsigned long)t);
	if (pos >= 0) {
		struct vsplice_agent_task *e = &vsa_tasks[vsa_hash[pos] - 1];

		begin_update();
		vsa_own.tasks_sum -= vsa_sum(e, sizeof(*e));
		memcpy(e->comm, buf, sizeof(e->comm));
		vsa_own.tasks_sum += vsa_sum(e, sizeof(*e));
		end_update();
	}
	raw_spin_unlock_irqrestore(&vsa_lock, flags);
}

/*
 * A non-leader thread that execs takes over its leader's pid (de_thread
 * swaps the two): the exec'ing task gets the leader's pid, the old leader
 * (still in the table until it is freed) gets old_pid. Only `t` is read;
 * the table's own pointers are never dereferenced, so a table scribbled on
 * from outside can mislead readers but cannot crash the guest.
 */
void vsa_table_exec(struct task_struct *t, pid_t old_pid)
{
	pid_t pid = READ_ONCE(t->pid), tgid = READ_ONCE(t->tgid);
	unsigned long flags;
	u32 i;

	if (pid == old_pid)
		return;
	raw_spin_lock_irqsave(&vsa_lock, flags);
	begin_update();
	for (i = 0; i < vsa_own.task_count; i++) {
		struct vsplice_agent_task *e = &vsa_tasks[i];
		pid_t want;

		if (e->task == (unsigned long)t)
			want = pid;
		else if (e->pid == pid && e->tgid == tgid)
			want = old_pid;
		else
			continue;
		if (e->pid == want)
			continue;
		vsa_own.tasks_sum -= vsa_sum(e, sizeof(*e));
		e->pid = want;
		vsa_own.tasks_sum += vsa_sum(e, sizeof(*e));
	}
	end_update();
	raw_spin_unlock_irqrestore(&vsa_lock, flags);
}

/* Every existing task and each CPU's idle task (tracepoints are already on). */
void vsa_table_fill(void)
{
	struct task_struct *g, *t;
	unsigned long flags;
	bool idle_all = true;
	int cpu;

	rcu_read_lock();
	for_each_process_thread(g, t)
		vsa_table_add(t);
	rcu_read_unlock();
	vsa_table_add(&init_task);
	for_each_possible_cpu(cpu) {
		struct task_struct *idle = vsa_idle_task(cpu);

		if (idle)
			vsa_table_add(idle);
		else if (cpu != 0)
			idle_all = false;
	}
	raw_spin_lock_irqsave(&vsa_lock, flags);
	begin_update();
	vsa_own.flags |= VSA_F_LIVE | (idle_all ? VSA_F_IDLE_TASKS : 0);
	end_update();
	raw_spin_unlock_irqrestore(&vsa_lock, flags);
}

/* Copies up to max live entries into buf (for the status files); returns how many. */
u32 vsa_table_snapshot(struct vsplice_agent_task *buf, u32 max, struct vsplice_agent_header *hdr)
{
	unsigned long flags;
	u32 n;

	raw_spin_lock_irqsave(&vsa_lock, flags);
	n = min(max, vsa_own.task_count);
	memcpy(buf, vsa_tasks, (size_t)n * sizeof(*buf));
	*hdr = vsa_own;
	raw_spin_unlock_irqrestore(&vsa_lock, flags);
	return n;
}

/* Unload: no reader may take this memory for a descriptor any more. */
void vsa_table_kill(void)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&vsa_lock, flags);
	vsa_own.seq |= 1;
	WRITE_ONCE(vsa_hdr->seq, vsa_own.seq);
	smp_wmb();
	memset(vsa_hdr, 0, sizeof(*vsa_hdr));
	vsa_hdr->seq = vsa_own.seq;
	raw_spin_unlock_irqrestore(&vsa_lock, flags);
}

static u32 table_offset(u32 cpus)
{
	return ALIGN(VSA_HEADER_SIZE + cpus * sizeof(struct vsplice_agent_cpu), 8);
}

int vsa_table_init(unsigned int cap)
{
	size_t table_bytes = PAGE_ALIGN((size_t)cap * sizeof(struct vsplice_agent_task));
	u32 pages = table_bytes >> PAGE_SHIFT, cpus = nr_cpu_ids, i;
	u32 list_off = table_offset(cpus);
	struct vsplice_agent_header *h;
	u64 *list;

	BUILD_BUG_ON(sizeof(struct vsplice_agent_header) != VSA_HEADER_SIZE);
	BUILD_BUG_ON(sizeof(struct vsplice_agent_task) != 64);
	BUILD_BUG_ON(sizeof(struct vsplice_agent_cpu) != 16 + 24 * VSA_CPU_STACKS);

	vsa_block_size = PAGE_ALIGN(list_off + (size_t)pages * 8);
	vsa_hdr = alloc_pages_exact(vsa_block_size, GFP_KERNEL | __GFP_ZERO);
	vsa_tasks = vzalloc(table_bytes);
	vsa_hash_bits = ilog2(roundup_pow_of_two(2 * (unsigned long)cap));
	vsa_hash = kvcalloc(1ul << vsa_hash_bits, sizeof(u32), GFP_KERNEL);
	if (!vsa_hdr || !vsa_tasks || !vsa_hash) {
		vsa_table_free();
		return -ENOMEM;
	}
	memset(&vsa_own, 0, sizeof(vsa_own));
	h = &vsa_own;
	h->version = VSA_VERSION;
	h->header_size = VSA_HEADER_SIZE;
	h->boot_id = get_random_u64();
	h->block_size = vsa_block_size;
	h->cpu_off = VSA_HEADER_SIZE;
	h->cpu_count = cpus;
	h->cpu_rec_size = sizeof(struct vsplice_agent_cpu);
	h->page_list_off = list_off;
	h->table_pages = pages;
	h->task_rec_size = sizeof(struct vsplice_agent_task);
	h->task_cap = cap;
	h->table_virt = (unsigned long)vsa_tasks;
	h->thread_size = THREAD_SIZE;
	h->task_struct_size = sizeof(struct task_struct);
	h->off_pid = offsetof(struct task_struct, pid);
	h->off_tgid = offsetof(struct task_struct, tgid);
	h->off_comm = offsetof(struct task_struct, comm);
	h->off_state = offsetof(struct task_struct, __state);
	h->off_on_cpu = offsetof(struct task_struct, on_cpu);
	h->off_cpu = offsetof(struct task_struct, thread_info.cpu);
	h->off_stack = offsetof(struct task_struct, stack);
	h->off_thread_sp = offsetof(struct task_struct, thread.sp);
	h->off_flags = offsetof(struct task_struct, flags);
	h->off_exit_state = offsetof(struct task_struct, exit_state);
	h->irq_stack_size = IRQ_STACK_SIZE;
	h->self_phys = virt_to_phys(vsa_hdr);
	h->self_virt = (unsigned long)vsa_hdr;
	vsa_fill_cpus((struct vsplice_agent_cpu *)((char *)vsa_hdr + h->cpu_off), cpus, &h->flags);
	list = (u64 *)((char *)vsa_hdr + list_off);
	for (i = 0; i < pages; i++)
		list[i] = page_to_phys(vmalloc_to_page((char *)vsa_tasks + ((size_t)i << PAGE_SHIFT)));
	h->static_sum = vsa_sum((char *)vsa_hdr + h->cpu_off, list_off + pages * 8 - h->cpu_off);
	/* The magic last: until here nothing looks like a descriptor. */
	h->magic[0] = VSA_MAGIC0;
	h->magic[1] = VSA_MAGIC1;
	begin_update();
	end_update();
	return 0;
}

void vsa_table_free(void)
{
	if (vsa_hdr)
		free_pages_exact(vsa_hdr, vsa_block_size);
	vfree(vsa_tasks);
	kvfree(vsa_hash);
	vsa_hdr = NULL;
	vsa_tasks = NULL;
	vsa_hash = NULL;
}

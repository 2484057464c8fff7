// SPDX-License-Identifier: GPL-2.0
/*
 * agent_cpu.c — what the vsplice agent knows about each CPU: its idle task
 * and the stacks that belong to it rather than to a task (the IRQ stack,
 * the IST exception stacks of the cpu_entry_area, the entry stack).
 *
 * Two of those are not exported to modules on 6.1: the per-CPU
 * `hardirq_stack_ptr` and `idle_task()`. They are looked up through
 * kallsyms_lookup_name, whose address a kprobe registration reveals (the
 * usual way since 5.7 unexported it). Without it the descriptor says so
 * (no VSA_F_IRQ_STACKS / VSA_F_IDLE_TASKS) and the host fills the gaps
 * from its own view of kallsyms.
 */
#include <linux/cc_platform.h>
#include <linux/cpumask.h>
#include <linux/kprobes.h>
#include <linux/percpu.h>
#include <linux/sched.h>
#include <asm/cpu_entry_area.h>
#include <asm/page_64_types.h>

#include "vsplice_agent.h"

static unsigned long (*klookup)(const char *name);
static bool klookup_tried;

unsigned long vsa_lookup_name(const char *name)
{
	if (!klookup_tried) {
		struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };

		klookup_tried = true;
		if (register_kprobe(&kp) == 0) {
			klookup = (unsigned long (*)(const char *))kp.addr;
			unregister_kprobe(&kp);
		} else {
			pr_info("vsplice_agent: kallsyms_lookup_name not found; IRQ stacks and idle tasks left to the host\n");
		}
	}
	return klookup ? klookup(name) : 0;
}

struct task_struct *vsa_idle_task(int cpu)
{
	static struct task_struct *(*idle_fn)(int cpu);

	if (cpu == 0)
		return &init_task;
	if (!idle_fn)
		idle_fn = (struct task_struct *(*)(int))vsa_lookup_name("idle_task");
	return idle_fn ? idle_fn(cpu) : NULL;
}

static void put(struct vsplice_agent_cpu *r, unsigned int *n, u32 kind, unsigned long start, unsigned long size)
{
	if (*n >= VSA_CPU_STACKS || !size)
		return;
	r->stacks[*n].start = start;
	r->stacks[*n].end = start + size;
	r->stacks[*n].kind = kind;
	(*n)++;
}

void vsa_fill_cpus(struct vsplice_agent_cpu *recs, unsigned int count, __u32 *flags)
{
	unsigned long hsp = vsa_lookup_name("hardirq_stack_ptr");
	bool vc = cc_platform_has(CC_ATTR_GUEST_STATE_ENCRYPT);
	bool irq_all = hsp != 0;
	unsigned int cpu;

	for (cpu = 0; cpu < count; cpu++) {
		struct vsplice_agent_cpu *r = &recs[cpu];
		struct cea_exception_stacks *es;
		struct cpu_entry_area *cea;
		struct task_struct *idle;
		unsigned int n = 0;

		r->cpu = cpu;
		if (!cpu_possible(cpu))
			continue;
		r->online = cpu_online(cpu);
		idle = vsa_idle_task(cpu);
		r->idle_task = (unsigned long)idle;
		if (hsp) {
			/* hardirq_stack_ptr points at the top-most word of the stack. */
			unsigned long top = (unsigned long)*per_cpu_ptr((void * __percpu *)hsp, cpu);

			if (top)
				put(r, &n, VSA_STACK_IRQ, top + 8 - IRQ_STACK_SIZE, IRQ_STACK_SIZE);
			else if (r->online)
				irq_all = false;
		}
		cea = get_cpu_entry_area(cpu);
		es = &cea->estacks;
		put(r, &n, VSA_STACK_DF, CEA_ESTACK_BOT(es, DF), CEA_ESTACK_SIZE(DF));
		put(r, &n, VSA_STACK_NMI, CEA_ESTACK_BOT(es, NMI), CEA_ESTACK_SIZE(NMI));
		put(r, &n, VSA_STACK_DB, CEA_ESTACK_BOT(es, DB), CEA_ESTACK_SIZE(DB));
		put(r, &n, VSA_STACK_MCE, CEA_ESTACK_BOT(es, MCE), CEA_ESTACK_SIZE(MCE));
		if (vc) {
			/* Mapped only in SEV-ES guests. */
			put(r, &n, VSA_STACK_VC, CEA_ESTACK_BOT(es, VC), CEA_ESTACK_SIZE(VC));
			put(r, &n, VSA_STACK_VC2, CEA_ESTACK_BOT(es, VC2), CEA_ESTACK_SIZE(VC2));
		}
		put(r, &n, VSA_STACK_ENTRY, (unsigned long)&cea->entry_stack_page.stack, sizeof(struct entry_stack));
	}
	if (irq_all)
		*flags |= VSA_F_IRQ_STACKS;
}

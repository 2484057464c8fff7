// SPDX-License-Identifier: GPL-2.0
/*
 * agent_main.c — the vsplice guest agent: module parameters, the scheduler
 * tracepoints that keep the task table current, the doorbell, load/unload.
 *
 * Events (tracepoints; on 6.1 they are not exported to modules one by one,
 * so they are found with for_each_kernel_tracepoint and attached with the
 * exported tracepoint_probe_register):
 *   sched_wakeup_new    a new task is about to run for the first time: add
 *                       it (every way of creating a task ends here, io
 *                       threads included; before it the task has never run)
 *   sched_process_free  the task_struct is about to be freed (an RCU grace
 *                       period after the last context switch away from the
 *                       dead task): remove it. Earlier events (exit) would
 *                       drop tasks that still run exit code on their stacks.
 *   task_rename         comm changes (exec, prctl, kthread naming)
 *   sched_process_exec  a thread that execs may take over its leader's pid
 * A timer-driven for_each_process_thread walk would be simpler but could
 * miss a short-lived task between two walks; the events cannot.
 */
#include <linux/io.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/tracepoint.h>

#include "vsplice_agent.h"

MODULE_LICENSE("GPL");
MODULE_AUTHOR("vsplice");
MODULE_DESCRIPTION("vsplice guest agent: publishes the task table and CPU stacks to the hypervisor");
MODULE_VERSION("1");

static unsigned int max_tasks;
module_param(max_tasks, uint, 0444);
MODULE_PARM_DESC(max_tasks, "task table capacity (0: like pid_max's default + one per CPU)");

static bool doorbell = true;
module_param(doorbell, bool, 0444);
MODULE_PARM_DESC(doorbell, "announce the descriptor through the vsplice doorbell port");

int vsa_doorbell_seen;

static void probe_wakeup_new(void *data, struct task_struct *p)
{
	vsa_table_add(p);
}

static void probe_free(void *data, struct task_struct *p)
{
	vsa_table_remove(p);
}

static void probe_rename(void *data, struct task_struct *p, const char *comm)
{
	vsa_table_rename(p, comm);
}

static void probe_exec(void *data, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	vsa_table_exec(p, old_pid);
}

static struct vsa_hook {
	const char *name;
	void *probe;
	struct tracepoint *tp;
	bool registered;
} hooks[] = {
	{ "sched_wakeup_new", probe_wakeup_new },
	{ "sched_process_free", probe_free },
	{ "task_rename", probe_rename },
	{ "sched_process_exec", probe_exec },
};

static void find_tracepoint(struct tracepoint *tp, void *priv)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(hooks); i++)
		if (!strcmp(tp->name, hooks[i].name))
			hooks[i].tp = tp;
}

static void unhook(void)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(hooks); i++) {
		if (hooks[i].registered)
			tracepoint_probe_unregister(hooks[i].tp, hooks[i].probe, NULL);
		hooks[i].registered = false;
	}
	/* No probe runs any more once this returns. */
	tracepoint_synchronize_unregister();
}

static int hook(void)
{
	unsigned int i;
	int err;

	for_each_kernel_tracepoint(find_tracepoint, NULL);
	for (i = 0; i < ARRAY_SIZE(hooks); i++) {
		if (!hooks[i].tp) {
			pr_err("vsplice_agent: no tracepoint %s\n", hooks[i].name);
			unhook();
			return -ENOENT;
		}
		err = tracepoint_probe_register(hooks[i].tp, hooks[i].probe, NULL);
		if (err) {
			pr_err("vsplice_agent: cannot attach to %s: %d\n", hooks[i].name, err);
			unhook();
			return err;
		}
		hooks[i].registered = true;
	}
	return 0;
}

/* Tells the VMM where the descriptor is (0: gone). Harmless without one. */
static void ring(u64 gpa)
{
	if (!doorbell)
		return;
	outl((u32)(gpa >> 32), VSA_DOORBELL_PORT + 4);
	outl((u32)gpa, VSA_DOORBELL_PORT);
}

static int __init vsa_init(void)
{
	unsigned int cap = max_tasks;
	int err;

	if (!cap)
		cap = max_t(unsigned int, PID_MAX_DEFAULT, PIDS_PER_CPU_DEFAULT * num_possible_cpus()) + nr_cpu_ids;
	err = vsa_table_init(cap);
	if (err)
		return err;
	err = hook();
	if (err) {
		vsa_table_free();
		return err;
	}
	vsa_table_fill();
	if (doorbell)
		vsa_doorbell_seen = inl(VSA_DOORBELL_PORT) == VSA_DOORBELL_SIG;
	ring(vsa_hdr->self_phys);
	vsa_status_init();
	pr_info("vsplice_agent: descriptor at phys %#llx, %u tasks (capacity %u), doorbell %s\n",
		vsa_hdr->self_phys, vsa_hdr->task_count, vsa_hdr->task_cap,
		!doorbell ? "off" : vsa_doorbell_seen ? "answered by vsplice" : "rung (no vsplice VMM answered)");
	return 0;
}

static void __exit vsa_exit(void)
{
	vsa_status_exit();
	unhook();
	vsa_table_kill();
	ring(0);
	vsa_table_free();
	pr_info("vsplice_agent: unloaded\n");
}

module_init(vsa_init);
module_exit(vsa_exit);

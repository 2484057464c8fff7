// SPDX-License-Identifier: GPL-2.0
/*
 * vsplice_stale.c — a test module for vsplice's stack checks (not part of
 * the agent; built with it, loaded by hand by the tests).
 *
 * It starts two kernel threads that sleep until the module is unloaded:
 *   vsplice_stale   leaves the address of a code location (the `target`
 *                   parameter, default: inside vsplice_stale_target) in a
 *                   local of its own long-lived frame. The word is on the
 *                   live part of the stack but is no return address: a
 *                   conservative scan reports it, a precise (ORC) unwind
 *                   does not.
 *   vsplice_inside  sleeps inside vsplice_stale_inside: a real frame of
 *                   that function, which every check must report.
 * Each thread prints "vsplice_stale: <name> pid <pid> word <addr>" once its
 * stack is in place, and the module's parameters say where everything is.
 */
#include <linux/delay.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/sched.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vsplice test: a stale code address on a sleeping kernel thread's stack");

static unsigned long target;
module_param(target, ulong, 0444);
MODULE_PARM_DESC(target, "code address to leave on the stack (0: inside vsplice_stale_target)");

static int stale_pid, inside_pid;
module_param(stale_pid, int, 0444);
module_param(inside_pid, int, 0444);

static struct task_struct *stale_thread, *inside_thread;

/* The function a stale word points into; nothing ever calls it while loaded. */
noinline int vsplice_stale_target(int x)
{
	asm volatile("" : "+r"(x));
	return x * 3 + 1;
}
EXPORT_SYMBOL_GPL(vsplice_stale_target);

static noinline void leave_word(unsigned long *slot, unsigned long v)
{
	WRITE_ONCE(*slot, v);
}

static int stale_main(void *arg)
{
	unsigned long words[4] = { 0 };
	unsigned long w = target ? target : (unsigned long)vsplice_stale_target + 4;

	leave_word(&words[1], w);
	pr_info("vsplice_stale: vsplice_stale pid %d word %#lx at %px\n", current->pid, w, &words[1]);
	while (!kthread_should_stop())
		msleep_interruptible(1000);
	/* Keeps the array (and the word) live for the whole sleep. */
	return READ_ONCE(words[1]) == w ? 0 : -EINVAL;
}

/* Sleeps with a real frame of its own on the stack. */
noinline int vsplice_stale_inside(void *arg)
{
	pr_info("vsplice_stale: vsplice_inside pid %d\n", current->pid);
	while (!kthread_should_stop())
		msleep_interruptible(1000);
	asm volatile("");
	return 0;
}

static int __init stale_init(void)
{
	stale_thread = kthread_run(stale_main, NULL, "vsplice_stale");
	if (IS_ERR(stale_thread))
		return PTR_ERR(stale_thread);
	inside_thread = kthread_run(vsplice_stale_inside, NULL, "vsplice_inside");
	if (IS_ERR(inside_thread)) {
		kthread_stop(stale_thread);
		return PTR_ERR(inside_thread);
	}
	stale_pid = stale_thread->pid;
	inside_pid = inside_thread->pid;
	return 0;
}

static void __exit stale_exit(void)
{
	kthread_stop(stale_thread);
	kthread_stop(inside_thread);
}

module_init(stale_init);
module_exit(stale_exit);

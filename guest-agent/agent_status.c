// SPDX-License-Identifier: GPL-2.0
/*
 * agent_status.c — read-only debugfs files of the vsplice agent, for humans
 * (and for tests that compare from inside the guest):
 *   /sys/kernel/debug/vsplice_agent/status  descriptor address, counters,
 *                                          flags, per-CPU stacks
 *   /sys/kernel/debug/vsplice_agent/tasks   the table: pid tgid flags comm
 *                                          task stack
 */
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/vmalloc.h>

#include "vsplice_agent.h"

static struct dentry *dir;

static const char *kind_name(u32 k)
{
	static const char *const names[] = { "none", "irq", "df", "nmi", "db", "mce", "vc", "vc2", "entry" };

	return k < ARRAY_SIZE(names) ? names[k] : "?";
}

static int status_show(struct seq_file *m, void *v)
{
	struct vsplice_agent_header h;
	struct vsplice_agent_cpu *cpus;
	u32 c, i;

	vsa_table_snapshot(NULL, 0, &h);
	seq_printf(m, "version %u\nphys %#llx\nvirt %#llx\nblock_size %u\nseq %llu\nupdates %llu\n",
		   h.version, h.self_phys, h.self_virt, h.block_size, h.seq, h.updates);
	seq_printf(m, "tasks %u\ncapacity %u\ndropped %u\n", h.task_count, h.task_cap, h.dropped);
	seq_printf(m, "flags%s%s%s%s\n", h.flags & VSA_F_LIVE ? " live" : "",
		   h.flags & VSA_F_OVERFLOW ? " overflow" : "", h.flags & VSA_F_IRQ_STACKS ? " irq_stacks" : "",
		   h.flags & VSA_F_IDLE_TASKS ? " idle_tasks" : "");
	seq_printf(m, "doorbell %s\n", vsa_doorbell_seen ? "vsplice" : "no-answer");
	cpus = (struct vsplice_agent_cpu *)((char *)vsa_hdr + h.cpu_off);
	for (c = 0; c < h.cpu_count; c++) {
		seq_printf(m, "cpu %u online %u idle %#llx", cpus[c].cpu, cpus[c].online, cpus[c].idle_task);
		for (i = 0; i < VSA_CPU_STACKS; i++)
			if (cpus[c].stacks[i].kind)
				seq_printf(m, " %s=%#llx-%#llx", kind_name(cpus[c].stacks[i].kind),
					   cpus[c].stacks[i].start, cpus[c].stacks[i].end);
		seq_putc(m, '\n');
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(status);

static int tasks_show(struct seq_file *m, void *v)
{
	struct vsplice_agent_header h;
	struct vsplice_agent_task *buf;
	u32 n, i;

	vsa_table_snapshot(NULL, 0, &h);
	/* Room for some growth between the two snapshots. */
	buf = vmalloc(array_size(h.task_count + 1024, sizeof(*buf)));
	if (!buf)
		return -ENOMEM;
	n = vsa_table_snapshot(buf, h.task_count + 1024, &h);
	for (i = 0; i < n; i++)
		seq_printf(m, "%d %d %#x %s %#llx %#llx\n", buf[i].pid, buf[i].tgid, buf[i].flags,
			   buf[i].comm, buf[i].task, buf[i].stack);
	vfree(buf);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(tasks);

int vsa_status_init(void)
{
	dir = debugfs_create_dir("vsplice_agent", NULL);
	if (IS_ERR(dir))
		return PTR_ERR(dir);
	debugfs_create_file("status", 0444, dir, NULL, &status_fops);
	debugfs_create_file("tasks", 0444, dir, NULL, &tasks_fops);
	return 0;
}

void vsa_status_exit(void)
{
	debugfs_remove_recursive(dir);
}

// SPDX-License-Identifier: GPL-2.0
/*
 * vsplice example 2 (a hot path): /proc/version prints the same banner with
 * " [vsplice]" before its newline. Every read of /proc/version runs it, so a
 * stress loop of readers keeps it busy while the patch goes in and out.
 *
 * Target: version_proc_show() in fs/proc/version.c (static).
 */
#include <linux/kernel.h>
#include <linux/printk.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>
#include "vsplice.h"

static int version_proc_show_marked(struct seq_file *m, void *v)
{
	seq_printf(m, linux_proc_banner,
		   utsname()->sysname,
		   utsname()->release,
		   utsname()->version);
	/* The banner ends with a newline: put the marker before it. */
	if (!seq_has_overflowed(m) && m->count && m->buf[m->count - 1] == '\n')
		m->count--;
	seq_puts(m, " [vsplice]\n");
	return 0;
}
VSPLICE_REPLACE(version_proc_show, version_proc_show_marked);

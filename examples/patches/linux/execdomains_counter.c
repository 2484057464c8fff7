// SPDX-License-Identifier: GPL-2.0
/*
 * vsplice example 3 (new global data): /proc/execdomains gets a second line
 * counting how often it was read since the patch went in. The counter
 * (.bss), the label (.data) and the tag (.rodata) are new data the patch
 * brings; vsplice places them in its arena (data: read-write, no execute).
 *
 * Target: execdomains_proc_show() in kernel/exec_domain.c (static).
 */
#include <linux/atomic.h>
#include <linux/seq_file.h>
#include "vsplice.h"

static atomic_long_t vsplice_reads;		/* .bss */
static char vsplice_label[16] = "reads";	/* .data */
static const char vsplice_tag[] = "vsplice";	/* .rodata */

static int execdomains_proc_show_counted(struct seq_file *m, void *v)
{
	long n = atomic_long_inc_return(&vsplice_reads);

	seq_puts(m, "0-0\tLinux           \t[kernel]\n");
	seq_printf(m, "%s %s=%ld\n", vsplice_tag, vsplice_label, n);
	return 0;
}
VSPLICE_REPLACE(execdomains_proc_show, execdomains_proc_show_counted);

// SPDX-License-Identifier: GPL-2.0
/*
 * vsplice example 1 (the classic): /proc/cmdline prints a marker after the
 * kernel command line.
 *
 * Target: cmdline_proc_show() in fs/proc/cmdline.c (static).
 * Build:  vsplice patch build --target linux --kernel vmlinuz \
 *             --headers /usr/src/linux-headers-$(uname -r) -o cmdline.vsp cmdline_marker.c
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include "vsplice.h"

static int cmdline_proc_show_marked(struct seq_file *m, void *v)
{
	seq_puts(m, saved_command_line);
	seq_puts(m, " vsplice.marker=cmdline\n");
	return 0;
}
VSPLICE_REPLACE(cmdline_proc_show, cmdline_proc_show_marked);

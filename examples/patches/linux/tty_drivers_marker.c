// SPDX-License-Identifier: GPL-2.0
/*
 * vsplice example 4 (a static function of the target's own file):
 * /proc/tty/drivers ends with a marker line. The replacement is the
 * original show_tty_driver() of fs/proc/proc_tty.c plus the marker, and it
 * calls show_tty_range(), a static, non-exported function of that file:
 * the undefined symbol is resolved against the running kernel's kallsyms.
 *
 * A static name that exists more than once in the kernel must be qualified
 * with its position in kallsyms, e.g. for proc_tty.c's t_next():
 *     extern void *t_next(struct seq_file *, void *, loff_t *);
 *     VSPLICE_LOCAL(t_next, "pos:6");
 * (`vsplice inspect --image vmlinuz symbol t_next` lists the positions);
 * show_tty_range exists once, so it needs none.
 */
#include <linux/seq_file.h>
#include <linux/tty.h>
#include <linux/tty_driver.h>
#include <linux/major.h>
#include "vsplice.h"

/* static in fs/proc/proc_tty.c */
void show_tty_range(struct seq_file *m, struct tty_driver *p, dev_t from, int num);

static int show_tty_driver_marked(struct seq_file *m, void *v)
{
	struct tty_driver *p = list_entry(v, struct tty_driver, tty_drivers);
	dev_t from = MKDEV(p->major, p->minor_start);
	dev_t to = from + p->num;

	if (&p->tty_drivers == tty_drivers.next) {
		/* pseudo-drivers first */
		seq_printf(m, "%-20s /dev/%-8s ", "/dev/tty", "tty");
		seq_printf(m, "%3d %7d ", TTYAUX_MAJOR, 0);
		seq_puts(m, "system:/dev/tty\n");
		seq_printf(m, "%-20s /dev/%-8s ", "/dev/console", "console");
		seq_printf(m, "%3d %7d ", TTYAUX_MAJOR, 1);
		seq_puts(m, "system:console\n");
#ifdef CONFIG_UNIX98_PTYS
		seq_printf(m, "%-20s /dev/%-8s ", "/dev/ptmx", "ptmx");
		seq_printf(m, "%3d %7d ", TTYAUX_MAJOR, 2);
		seq_puts(m, "system\n");
#endif
#ifdef CONFIG_VT
		seq_printf(m, "%-20s /dev/%-8s ", "/dev/vc/0", "vc/0");
		seq_printf(m, "%3d %7d ", TTY_MAJOR, 0);
		seq_puts(m, "system:vtmaster\n");
#endif
	}

	while (MAJOR(from) < MAJOR(to)) {
		dev_t next = MKDEV(MAJOR(from) + 1, 0);

		show_tty_range(m, p, from, next - from);
		from = next;
	}
	if (from != to)
		show_tty_range(m, p, from, to - from);
	if (p->tty_drivers.next == &tty_drivers)
		seq_puts(m, "vsplice: /proc/tty/drivers patched\n");
	return 0;
}
VSPLICE_REPLACE(show_tty_driver, show_tty_driver_marked);

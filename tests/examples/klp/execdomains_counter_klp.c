// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel's own livepatch (CONFIG_LIVEPATCH) with the SAME replacement
 * function as the vsplice example examples/patches/linux/execdomains_counter.c:
 * that file is included as it is; VSPLICE_REPLACE becomes nothing and the
 * klp_patch below names the target instead. (That example uses only
 * exported symbols and its own data, so it needs no klp relocations.)
 */
#include <linux/module.h>
#include <linux/livepatch.h>

#define VSPLICE_H
#define VSPLICE_REPLACE(old, new)
#include "execdomains_counter.c"

static struct klp_func funcs[] = {
	{ .old_name = "execdomains_proc_show", .new_func = execdomains_proc_show_counted, },
	{ }
};

static struct klp_object objs[] = {
	{ .funcs = funcs, },	/* vmlinux */
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init vsplice_klp_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit vsplice_klp_exit(void)
{
}

module_init(vsplice_klp_init);
module_exit(vsplice_klp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

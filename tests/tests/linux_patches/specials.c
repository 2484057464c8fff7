// SPDX-License-Identifier: GPL-2.0
/*
 * Test patch with the special sections a Kbuild object carries: alternatives
 * (static_cpu_has), jump labels on a kernel key and on the patch's own key,
 * a WARN site, return thunks. /proc/execdomains then says what the patch saw.
 */
#include <linux/bug.h>
#include <linux/cpuset.h>
#include <linux/jump_label.h>
#include <linux/seq_file.h>
#include <asm/cpufeature.h>
#include "vsplice.h"

static DEFINE_STATIC_KEY_TRUE(vsplice_key);

static int execdomains_proc_show_specials(struct seq_file *m, void *v)
{
	seq_puts(m, static_cpu_has(X86_FEATURE_HYPERVISOR) ? "hypervisor" : "no-hypervisor");
	seq_puts(m, static_cpu_has(X86_FEATURE_XMM4_2) ? " sse4_2" : " no-sse4_2");
	seq_puts(m, cpusets_enabled() ? " cpusets" : " no-cpusets");
	seq_puts(m, static_branch_likely(&vsplice_key) ? " key-on" : " key-off");
	WARN_ON_ONCE(!v);
	seq_putc(m, '\n');
	return 0;
}
VSPLICE_REPLACE(execdomains_proc_show, execdomains_proc_show_specials);

// SPDX-License-Identifier: GPL-2.0
/*
 * Test patch: the same common_nsleep() (kernel/time/posix-timers.c), so a
 * task sleeping in clock_nanosleep (busybox `sleep`) is a task blocked
 * inside the target function: applying must give code_busy naming it.
 */
#include <linux/hrtimer.h>
#include <linux/time64.h>
#include "vsplice.h"

static int common_nsleep_copy(const clockid_t which_clock, int flags, const struct timespec64 *rqtp)
{
	ktime_t texp = timespec64_to_ktime(*rqtp);

	return hrtimer_nanosleep(texp, flags & TIMER_ABSTIME ? HRTIMER_MODE_ABS : HRTIMER_MODE_REL, which_clock);
}
VSPLICE_REPLACE(common_nsleep, common_nsleep_copy);

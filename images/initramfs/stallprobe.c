/*
 * stallprobe: what a guest thread sees of a live patch.
 *
 *   stallprobe probe SECONDS [CPU]
 *       Spin on clock_gettime(CLOCK_MONOTONIC) for SECONDS (pinned to CPU
 *       when given) and print one line:
 *         samples=N max_gap_us=G max_at_ms=T over_1ms=A over_10ms=B top=g1,g2,...
 *       The gap between two consecutive readings is how long this thread
 *       was kept from running (interrupts, preemption, stop_machine, IPIs).
 *       A hypervisor that stops the whole VM also stops the guest's clock
 *       sources under QEMU, so such a pause is not seen here.
 *   stallprobe exec CMD [ARG...]
 *       Run CMD and print "elapsed_us=E status=S" (CLOCK_MONOTONIC).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TOP 8

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int probe(double seconds, int cpu)
{
	long long top[TOP] = { 0 };
	long long start, end, prev, t, gap, max = 0, max_at = 0, samples = 0, over1 = 0, over10 = 0;
	int i, j;

	if (cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			perror("sched_setaffinity");
	}
	start = prev = now_ns();
	end = start + (long long)(seconds * 1e9);
	while ((t = now_ns()) < end) {
		gap = t - prev;
		prev = t;
		samples++;
		if (gap > 1000000)
			over1++;
		if (gap > 10000000)
			over10++;
		if (gap > max) {
			max = gap;
			max_at = t - start;
		}
		for (i = 0; i < TOP; i++) {
			if (gap > top[i]) {
				for (j = TOP - 1; j > i; j--)
					top[j] = top[j - 1];
				top[i] = gap;
				break;
			}
		}
	}
	printf("samples=%lld max_gap_us=%lld max_at_ms=%lld over_1ms=%lld over_10ms=%lld top=", samples, max / 1000,
	       max_at / 1000000, over1, over10);
	for (i = 0; i < TOP; i++)
		printf("%s%lld", i ? "," : "", top[i] / 1000);
	printf("\n");
	return 0;
}

static int run(char **argv)
{
	long long t0 = now_ns();
	int status = 0;
	pid_t pid = fork();

	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		execvp(argv[0], argv);
		perror("execvp");
		_exit(127);
	}
	waitpid(pid, &status, 0);
	printf("elapsed_us=%lld status=%d\n", (now_ns() - t0) / 1000, WIFEXITED(status) ? WEXITSTATUS(status) : 128);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "probe"))
		return probe(atof(argv[2]), argc >= 4 ? atoi(argv[3]) : -1);
	if (argc >= 3 && !strcmp(argv[1], "exec"))
		return run(argv + 2);
	fprintf(stderr, "usage: stallprobe probe SECONDS [CPU] | stallprobe exec CMD [ARG...]\n");
	return 2;
}

/*
 * mthreads N [name] — test workload for vsplice's task walk.
 *
 * Starts N extra threads that sleep forever (so the process has N+1 tasks),
 * optionally renames every thread to `name` (the comm the guest reports),
 * prints "mthreads <pid> ready" once all threads exist, then sleeps until
 * killed. Built with `gcc -static -pthread` into the initramfs as /bin/mthreads.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static const char *thread_name;

static void *sleeper(void *arg)
{
	(void)arg;
	if (thread_name)
		prctl(PR_SET_NAME, thread_name, 0, 0, 0);
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	long n;
	pthread_attr_t attr;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: mthreads N [name]\n");
		return 2;
	}
	n = strtol(argv[1], NULL, 10);
	if (n < 0 || n > 100000) {
		fprintf(stderr, "mthreads: bad thread count '%s'\n", argv[1]);
		return 2;
	}
	if (argc == 3) {
		thread_name = argv[2];
		prctl(PR_SET_NAME, thread_name, 0, 0, 0);
	}
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	for (long i = 0; i < n; i++) {
		pthread_t t;
		int err = pthread_create(&t, &attr, sleeper, NULL);

		if (err) {
			fprintf(stderr, "mthreads: thread %ld: %s\n", i, strerror(err));
			return 1;
		}
	}
	printf("mthreads %d ready\n", (int)getpid());
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}

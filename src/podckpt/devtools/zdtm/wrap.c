/*
 * zdtm-wrap: run one CRIU zdtm test as a container's application.
 *
 * A zdtm test daemonizes: its first process forks the test proper, waits until it is ready,
 * writes the pidfile and exits. In a container that child would be reparented to PID 1 (the
 * podckpt agent) and fall out of the application's tree. This wrapper is the application's
 * root instead: a child subreaper, so the daemonized test is reparented to it, and it exits
 * with the test's own exit status once every descendant is gone. The same wrapper runs under
 * the agent and under raw CRIU, so both dump and restore exactly the same tree.
 *
 *   zdtm-wrap TEST ARGS...
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	pid_t starter;
	int status, code = 0, started = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: zdtm-wrap TEST ARGS...\n");
		return 2;
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) {
		perror("zdtm-wrap: PR_SET_CHILD_SUBREAPER");
		return 2;
	}
	starter = fork();
	if (starter < 0) {
		perror("zdtm-wrap: fork");
		return 2;
	}
	if (starter == 0) {
		execv(argv[1], argv + 1);
		perror("zdtm-wrap: exec");
		_exit(127);
	}
	for (;;) {
		pid_t pid = waitpid(-1, &status, 0);
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			break; /* ECHILD: every descendant is gone */
		}
		if (pid == starter) {
			started = 1;
			if (!WIFEXITED(status) || WEXITSTATUS(status)) {
				fprintf(stderr, "zdtm-wrap: the test did not start (status %#x)\n", status);
				code = 3;
			}
			continue;
		}
		/* The daemonized test (or an orphan of it): the last one to go decides. */
		if (WIFEXITED(status))
			code = code ? code : WEXITSTATUS(status);
		else if (WIFSIGNALED(status))
			code = code ? code : 128 + WTERMSIG(status);
	}
	return started ? code : 2;
}

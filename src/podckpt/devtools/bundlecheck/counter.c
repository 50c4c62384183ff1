/*
 * The test application of the bundle tests: counts forever, 20 times a second.
 *
 * Why this shape: it must build as a static binary (root without libc), against glibc and
 * against musl from one source, and its progress must be visible from outside without an open
 * file that CRIU would have to carry (a file held open that grows fails the restore): each
 * tick it rewrites COUNT_FILE (open, write, close, rename). The count lives only in memory, so
 * a count that continues after restore proves the memory came back.
 *
 * With "tcp" it also holds a loopback TCP listener and one established connection through
 * which it sends a byte per tick, to measure what CRIU needs for sockets. With "tcp-peer PORT"
 * it instead connects to a peer outside its own tree (127.0.0.1:PORT, which echoes). A
 * connection that breaks (as --tcp-close makes it on restore) is reported once and dropped;
 * counting goes on.
 *
 * For start-time benchmarks: with $COUNTER_STARTED set it first writes its CLOCK_MONOTONIC
 * start time (ns) there, and `counter --stamp-exec FILE PROG ARGS...` writes the time to FILE
 * and execs PROG (it stands in front of the agent to timestamp the container's start).
 *
 * usage: counter COUNT_FILE [tcp | tcp-peer PORT] | counter --stamp-exec FILE PROG ARGS...
 */
#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int tcp_pair(int fds[2])
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &len))
		return -1;
	fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&a, sizeof a))
		return -1;
	fds[1] = accept(l, NULL, NULL);
	return fds[1] < 0 ? -1 : 0;
}

static void stamp(const char *path)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	FILE *f = fopen(path, "w");
	if (f) {
		fprintf(f, "%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
		fclose(f);
	}
}

int main(int argc, char **argv)
{
	if (argc > 3 && !strcmp(argv[1], "--stamp-exec")) {
		stamp(argv[2]);
		execv(argv[3], argv + 3);
		perror("counter: exec");
		return 127;
	}
	if (getenv("COUNTER_STARTED"))
		stamp(getenv("COUNTER_STARTED"));
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: counter COUNT_FILE [tcp | tcp-peer PORT]\n");
		return 2;
	}
	int tcp = argc >= 3 && !strncmp(argv[2], "tcp", 3), fds[2] = {-1, -1};
	signal(SIGPIPE, SIG_IGN); /* a closed connection is an error code, not death */
	if (tcp && argc == 4) {
		struct sockaddr_in a;
		memset(&a, 0, sizeof a);
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a.sin_port = htons((unsigned short)atoi(argv[3]));
		fds[0] = fds[1] = socket(AF_INET, SOCK_STREAM, 0);
		if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&a, sizeof a)) {
			perror("counter: connect to peer");
			return 1;
		}
	} else if (tcp && tcp_pair(fds)) {
		perror("counter: loopback TCP");
		return 1;
	}
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
	struct timespec tick = {0, 50 * 1000 * 1000};
	for (unsigned long n = 1;; n++) {
		FILE *f = fopen(tmp, "w");
		if (f) {
			fprintf(f, "%lu\n", n);
			fclose(f);
			rename(tmp, argv[1]);
		}
		char c = 'x';
		if (tcp && (write(fds[0], &c, 1) != 1 || read(fds[1], &c, 1) != 1)) {
			perror("counter: TCP connection lost, counting on");
			tcp = 0;
		}
		nanosleep(&tick, NULL);
	}
}

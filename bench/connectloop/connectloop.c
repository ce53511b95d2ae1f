/*
 * connectloop: the connect loop the interception benchmarks time. A plain
 * libc program, so libipvirt.so intercepts it when preloaded and the eBPF
 * interceptor sees it like any other process.
 *
 *   connectloop loop N HOST PORT [OUT]
 *       one warm-up connect (the first call, which may ask ipvirtd), then N
 *       times socket + connect + close, timed together; prints
 *       "loop NS_PER_OP SOURCE" (SOURCE: the address the last connect left
 *       from, so a run can prove the interceptor was on the path)
 *   connectloop first K HOST PORT [OUT]
 *       spawns K fresh copies of itself (inheriting the environment, so
 *       LD_PRELOAD too), each timing only its own first connect; prints
 *       "first NS NS ..." — the cost of a process's first call, which for
 *       libipvirt.so includes its one round trip to ipvirtd
 *   connectloop once HOST PORT
 *       one timed connect; prints "NS SOURCE"
 *
 * OUT, when given, receives the line atomically (written then renamed), for
 * callers that start the loop where its stdout is not theirs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct sockaddr_in dst;

/* conn connects once; returns the connect time and fills src. */
static long long conn(char *src, size_t n)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("connectloop: socket");
		exit(1);
	}
	long long t0 = now_ns();
	if (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0) {
		perror("connectloop: connect");
		exit(1);
	}
	long long took = now_ns() - t0;
	if (src) {
		struct sockaddr_in me;
		socklen_t len = sizeof me;
		getsockname(fd, (struct sockaddr *)&me, &len);
		inet_ntop(AF_INET, &me.sin_addr, src, n);
	}
	/* Reset instead of TIME_WAIT: a long loop from one source address must
	 * not run out of ephemeral ports, whatever the interceptor. */
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	close(fd);
	return took;
}

static void emit(const char *out, const char *line)
{
	if (!out) {
		fputs(line, stdout);
		return;
	}
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", out);
	FILE *f = fopen(tmp, "w");
	if (!f || fputs(line, f) < 0 || fclose(f) != 0 || rename(tmp, out) != 0) {
		perror("connectloop: write result");
		exit(1);
	}
}

static long long once_child(char *self, const char *host, const char *port)
{
	int p[2];
	if (pipe(p) != 0) {
		perror("connectloop: pipe");
		exit(1);
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	posix_spawn_file_actions_addclose(&fa, p[0]);
	char *argv[] = {self, "once", (char *)host, (char *)port, NULL};
	pid_t pid;
	if (posix_spawn(&pid, self, &fa, NULL, argv, environ) != 0) {
		perror("connectloop: spawn");
		exit(1);
	}
	close(p[1]);
	char buf[128] = {0};
	ssize_t n = read(p[0], buf, sizeof buf - 1);
	close(p[0]);
	int st;
	waitpid(pid, &st, 0);
	if (n <= 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "connectloop: a child failed\n");
		exit(1);
	}
	return atoll(buf);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fputs("usage: connectloop loop N HOST PORT [OUT] | first K HOST PORT [OUT] | once HOST PORT\n", stderr);
		return 2;
	}
	int once = !strcmp(argv[1], "once");
	const char *host = argv[once ? 2 : 3], *port = argv[once ? 3 : 4];
	dst.sin_family = AF_INET;
	dst.sin_port = htons(atoi(port));
	if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) {
		fprintf(stderr, "connectloop: bad host %s\n", host);
		return 2;
	}
	char src[INET_ADDRSTRLEN] = "-";
	if (once) {
		long long ns = conn(src, sizeof src);
		printf("%lld %s\n", ns, src);
		return 0;
	}
	long n = atol(argv[2]);
	const char *out = argc > 5 ? argv[5] : NULL;
	if (n <= 0) {
		fprintf(stderr, "connectloop: bad count %s\n", argv[2]);
		return 2;
	}
	if (!strcmp(argv[1], "loop")) {
		conn(NULL, 0); /* the first call, outside the timing */
		long long t0 = now_ns();
		for (long i = 0; i < n - 1; i++)
			conn(NULL, 0);
		conn(src, sizeof src);
		char line[128];
		snprintf(line, sizeof line, "loop %lld %s\n", (now_ns() - t0) / n, src);
		emit(out, line);
		return 0;
	}
	if (!strcmp(argv[1], "first")) {
		size_t cap = 32 + (size_t)n * 24, len = 0;
		char *line = malloc(cap);
		char self[4096];
		ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
		if (!line || sl <= 0) {
			perror("connectloop");
			return 1;
		}
		self[sl] = 0;
		len += snprintf(line, cap, "first");
		for (long i = 0; i < n; i++)
			len += snprintf(line + len, cap - len, " %lld", once_child(self, host, port));
		snprintf(line + len, cap - len, "\n");
		emit(out, line);
		return 0;
	}
	fprintf(stderr, "connectloop: unknown mode %s\n", argv[1]);
	return 2;
}

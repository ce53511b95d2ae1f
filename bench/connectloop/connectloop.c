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
 *   connectloop firsts K HOST PORT OUT LIB SOCKET...
 *       spawns K fresh copies of itself per SOCKET, each timing only its
 *       own first connect ("once"), with LD_PRELOAD=LIB and
 *       IPVIRT_SOCKET=SOCKET, or with neither when SOCKET is "-": the cost
 *       of a process's first call, which for libipvirt.so includes its one
 *       round trip to the daemon. The SOCKETs take turns (copy i of turn t
 *       runs SOCKET (i + t) mod their number, so that none always follows
 *       the same one), so the variants of one run share the machine's
 *       every moment instead of a batch each; writes "firsts" and then
 *       "V:NS" per copy, V the SOCKET's index
 *   connectloop loopbind N HOST PORT SRC [OUT]
 *       as loop, but each socket is bound to SRC first, the way a program
 *       that picks its own source does it: IP_BIND_ADDRESS_NO_PORT, bind
 *       to SRC port 0, connect (all inside the timing); prints
 *       "loopbind NS_PER_OP SOURCE". The kernel's own floor under any
 *       interceptor that binds: no interception, just the two extra calls
 *   connectloop udploop N HOST PORT [OUT]
 *       as loop, for UDP: N times socket(SOCK_DGRAM) + sendto (one byte,
 *       to HOST:PORT, on the unconnected socket) + close, timed together;
 *       prints "udploop NS_PER_OP SOURCE" (the address the last socket was
 *       bound to when it sent)
 *   connectloop sendloop N HOST PORT [OUT]
 *       one UDP socket, one warm-up sendto, then N more sendto (one byte,
 *       unconnected) timed; prints "sendloop NS_PER_OP SOURCE" (NS_PER_OP
 *       to a tenth): a send on a socket bound already
 *   connectloop think N HOST PORT MEAN_US SEED OUT
 *       a session's realistic use: N times, sleep an exponentially
 *       distributed think time (mean MEAN_US µs, drand48 seeded with SEED,
 *       so a run can be replayed), then socket + connect + close, timing
 *       connect alone; writes "think N" and then one line per connect,
 *       "NS SOURCE", in order (the first is the process's first call)
 *   connectloop once HOST PORT
 *       one timed connect; prints "NS SOURCE"
 *
 * OUT, when given, receives the line atomically (written then renamed), for
 * callers that start the loop where its stdout is not theirs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
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
/* bindsrc, when its family is set (loopbind), is bound before connect. */
static struct sockaddr_in bindsrc;

/* conn connects once; returns the connect time and fills src. */
static long long conn(char *src, size_t n)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("connectloop: socket");
		exit(1);
	}
	if (bindsrc.sin_family == AF_INET) {
		int one = 1;
		if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) != 0 ||
		    bind(fd, (struct sockaddr *)&bindsrc, sizeof bindsrc) != 0) {
			perror("connectloop: bind");
			exit(1);
		}
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

/* send1 sends one byte from a fresh unconnected UDP socket, the sendto
 * counterpart of conn; fills src, when given, with the socket's source. */
static void send1(char *src, size_t n)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("connectloop: socket");
		exit(1);
	}
	if (sendto(fd, "x", 1, 0, (struct sockaddr *)&dst, sizeof dst) != 1) {
		perror("connectloop: sendto");
		exit(1);
	}
	if (src) {
		struct sockaddr_in me;
		socklen_t len = sizeof me;
		getsockname(fd, (struct sockaddr *)&me, &len);
		inet_ntop(AF_INET, &me.sin_addr, src, n);
	}
	close(fd);
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

/* variant_env is environ without LD_PRELOAD and IPVIRT_SOCKET, then with
 * both when sock is not "-". */
static char **variant_env(const char *lib, const char *sock)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **env = calloc(n + 3, sizeof *env);
	if (!env) {
		perror("connectloop");
		exit(1);
	}
	size_t j = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "LD_PRELOAD=", 11) && strncmp(environ[i], "IPVIRT_SOCKET=", 14))
			env[j++] = environ[i];
	if (strcmp(sock, "-")) {
		if (asprintf(&env[j++], "LD_PRELOAD=%s", lib) < 0 || asprintf(&env[j++], "IPVIRT_SOCKET=%s", sock) < 0) {
			perror("connectloop");
			exit(1);
		}
	}
	return env;
}

/* once_child runs "connectloop once" with env and returns its time. */
static long long once_child(char *self, const char *host, const char *port, char **env)
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
	if (posix_spawn(&pid, self, &fa, NULL, argv, env) != 0) {
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

/* think runs the think mode: see the comment at the top. */
static int think(long n, double mean_us, long seed, const char *out)
{
	long long *took = malloc(n * sizeof *took);
	char (*srcs)[INET_ADDRSTRLEN] = malloc(n * sizeof *srcs);
	size_t cap = 32 + (size_t)n * (24 + INET_ADDRSTRLEN), len = 0;
	char *line = malloc(cap);
	if (!took || !srcs || !line) {
		perror("connectloop");
		return 1;
	}
	srand48(seed);
	for (long i = 0; i < n; i++) {
		/* Inverse transform: 1 - drand48() is in (0, 1], so the log is finite. */
		double us = -mean_us * log(1 - drand48());
		struct timespec ts = {.tv_sec = (time_t)(us / 1e6), .tv_nsec = (long)fmod(us * 1e3, 1e9)};
		while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
			;
		took[i] = conn(srcs[i], sizeof srcs[i]);
	}
	len += snprintf(line, cap, "think %ld\n", n);
	for (long i = 0; i < n; i++)
		len += snprintf(line + len, cap - len, "%lld %s\n", took[i], srcs[i]);
	emit(out, line);
	return 0;
}

static int usage(void)
{
	fputs("usage: connectloop loop N HOST PORT [OUT] | loopbind N HOST PORT SRC [OUT] |\n"
	      "       udploop N HOST PORT [OUT] | sendloop N HOST PORT [OUT] |\n"
	      "       firsts K HOST PORT OUT LIB SOCKET... |\n"
	      "       think N HOST PORT MEAN_US SEED OUT | once HOST PORT\n",
	      stderr);
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return usage();
	const char *mode = argv[1];
	int once = !strcmp(mode, "once");
	const char *host = argv[once ? 2 : 3], *port = argv[once ? 3 : 4];
	if (!once && argc < 5)
		return usage();
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
	if (n <= 0) {
		fprintf(stderr, "connectloop: bad count %s\n", argv[2]);
		return 2;
	}
	/* Arguments after PORT: the mode's own, then OUT. */
	int own = !strcmp(mode, "loopbind") ? 1 : !strcmp(mode, "think") ? 2 : 0;
	if (!strcmp(mode, "firsts")) {
		if (argc < 8)
			return usage();
		int nv = argc - 7;
		char **envs[16];
		if (nv > 16) {
			fputs("connectloop: at most 16 sockets\n", stderr);
			return 2;
		}
		for (int v = 0; v < nv; v++)
			envs[v] = variant_env(argv[6], argv[7 + v]);
		char self[4096];
		ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
		size_t cap = 32 + (size_t)n * nv * 28, len = 0;
		char *line = malloc(cap);
		if (!line || sl <= 0) {
			perror("connectloop");
			return 1;
		}
		self[sl] = 0;
		len += snprintf(line, cap, "firsts");
		for (long t = 0; t < n; t++)
			for (int i = 0; i < nv; i++) {
				int v = (int)((i + t) % nv);
				len += snprintf(line + len, cap - len, " %d:%lld", v, once_child(self, host, port, envs[v]));
			}
		snprintf(line + len, cap - len, "\n");
		emit(argv[5], line);
		return 0;
	}
	if (argc < 5 + own)
		return usage();
	const char *out = argc > 5 + own ? argv[5 + own] : NULL;
	if (!strcmp(mode, "think")) {
		double mean = atof(argv[5]);
		if (!out || mean < 0) {
			fprintf(stderr, "connectloop: think needs MEAN_US >= 0 and OUT\n");
			return 2;
		}
		return think(n, mean, atol(argv[6]), out);
	}
	if (!strcmp(mode, "loopbind")) {
		bindsrc.sin_family = AF_INET;
		if (inet_pton(AF_INET, argv[5], &bindsrc.sin_addr) != 1) {
			fprintf(stderr, "connectloop: bad source %s\n", argv[5]);
			return 2;
		}
	}
	if (!strcmp(mode, "loop") || !strcmp(mode, "loopbind")) {
		conn(NULL, 0); /* the first call, outside the timing */
		long long t0 = now_ns();
		for (long i = 0; i < n - 1; i++)
			conn(NULL, 0);
		conn(src, sizeof src);
		char line[128];
		snprintf(line, sizeof line, "%s %lld %s\n", mode, (now_ns() - t0) / n, src);
		emit(out, line);
		return 0;
	}
	if (!strcmp(mode, "udploop")) {
		send1(NULL, 0); /* the first call, outside the timing */
		long long t0 = now_ns();
		for (long i = 0; i < n - 1; i++)
			send1(NULL, 0);
		send1(src, sizeof src);
		char line[128];
		snprintf(line, sizeof line, "udploop %lld %s\n", (now_ns() - t0) / n, src);
		emit(out, line);
		return 0;
	}
	if (!strcmp(mode, "sendloop")) {
		int fd = socket(AF_INET, SOCK_DGRAM, 0);
		if (fd < 0) {
			perror("connectloop: socket");
			return 1;
		}
		long long t0 = 0;
		for (long i = -1; i < n; i++) { /* -1: the warm-up, outside the timing */
			if (i == 0)
				t0 = now_ns();
			if (sendto(fd, "x", 1, 0, (struct sockaddr *)&dst, sizeof dst) != 1) {
				perror("connectloop: sendto");
				return 1;
			}
		}
		long long took = now_ns() - t0;
		struct sockaddr_in me;
		socklen_t len = sizeof me;
		getsockname(fd, (struct sockaddr *)&me, &len);
		inet_ntop(AF_INET, &me.sin_addr, src, sizeof src);
		close(fd);
		char line[128];
		snprintf(line, sizeof line, "sendloop %.1f %s\n", (double)took / n, src);
		emit(out, line);
		return 0;
	}
	fprintf(stderr, "connectloop: unknown mode %s\n", mode);
	return 2;
}

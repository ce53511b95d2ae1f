/*
 * ipvirt-dbclient: the simulator's database client. An ordinary libc
 * program with no knowledge of ipvirt, so that libipvirt.so (or the eBPF
 * interceptor) has something unmodified to work on.
 *
 * usage: ipvirt-dbclient [--bind ADDR] [--hold] [--out FILE] HOST PORT
 *
 * Connects to the simulated database server, reads its verdict line and
 * writes one result line (to FILE, atomically, else stdout):
 *
 *   source=ADDR:PORT verdict=accepted|refused|denied|bind-failed|error
 *   connect_ns=N errno=NAME
 *
 * "denied" is a connect() that failed with EACCES (ipvirt's answer when a
 * session may not use the network); connect_ns times connect() alone.
 * --bind binds the socket to ADDR first (port 0), as a program choosing its
 * own source would; --hold keeps an accepted connection open until the
 * process is killed, so that the server sees clients at the same time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *out_path;

static void report(const char *source, const char *verdict, long long ns, int err)
{
	char line[256];
	int n = snprintf(line, sizeof line, "source=%s verdict=%s connect_ns=%lld errno=%s\n",
			 source, verdict, ns, err ? strerrorname_np(err) : "0");
	if (!out_path) {
		fputs(line, stdout);
		fflush(stdout);
		return;
	}
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
	FILE *f = fopen(tmp, "w");
	if (!f || fwrite(line, 1, n, f) != (size_t)n || fclose(f) != 0 || rename(tmp, out_path) != 0) {
		perror("ipvirt-dbclient: write result");
		exit(3);
	}
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void usage(void)
{
	fputs("usage: ipvirt-dbclient [--bind ADDR] [--hold] [--out FILE] HOST PORT\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	/* A client belongs to its session leader: when the simulator is killed
	 * the leader dies, and a holding client must not outlive it. */
	pid_t parent = getppid();
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		return 1;

	const char *bind_addr = NULL;
	int hold = 0, i = 1;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (!strcmp(argv[i], "--hold"))
			hold = 1;
		else if (!strcmp(argv[i], "--bind") && i + 1 < argc)
			bind_addr = argv[++i];
		else if (!strcmp(argv[i], "--out") && i + 1 < argc)
			out_path = argv[++i];
		else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			usage();
		else
			usage();
	}
	if (argc - i != 2)
		usage();

	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[i + 1]))};
	if (inet_pton(AF_INET, argv[i], &dst.sin_addr) != 1) {
		fprintf(stderr, "ipvirt-dbclient: bad host %s\n", argv[i]);
		return 2;
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) {
		report("-", "error", 0, errno);
		return 1;
	}
	if (bind_addr) {
		struct sockaddr_in src = {.sin_family = AF_INET};
		if (inet_pton(AF_INET, bind_addr, &src.sin_addr) != 1) {
			fprintf(stderr, "ipvirt-dbclient: bad --bind %s\n", bind_addr);
			return 2;
		}
		if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0) {
			report("-", "bind-failed", 0, errno);
			return 1;
		}
	}
	long long t0 = now_ns();
	int rc = connect(fd, (struct sockaddr *)&dst, sizeof dst);
	long long took = now_ns() - t0;
	if (rc != 0) {
		int err = errno;
		report("-", err == EACCES || err == EPERM ? "denied" : "error", took, err);
		return 1;
	}
	struct sockaddr_in me;
	socklen_t len = sizeof me;
	char source[64] = "-";
	if (getsockname(fd, (struct sockaddr *)&me, &len) == 0) {
		char ip[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &me.sin_addr, ip, sizeof ip);
		snprintf(source, sizeof source, "%s:%u", ip, ntohs(me.sin_port));
	}
	char buf[256];
	ssize_t n = 0, got;
	while (n < (ssize_t)sizeof buf - 1 && (got = read(fd, buf + n, sizeof buf - 1 - n)) > 0) {
		n += got;
		if (memchr(buf, '\n', n))
			break;
	}
	buf[n > 0 ? n : 0] = 0;
	const char *verdict = !strncmp(buf, "OK", 2) ? "accepted" : !strncmp(buf, "REFUSED", 7) ? "refused" : "error";
	report(source, verdict, took, 0);
	if (hold && verdict[0] == 'a')
		for (;;)
			pause();
	return verdict[0] == 'a' ? 0 : 1;
}

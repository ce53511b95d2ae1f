/* nosys.so: the kernel left out. Preloaded behind a preload under test
 * (LD_PRELOAD="lib.so nosys.so"), it answers socket(), connect(), bind(),
 * setsockopt(), sendto(), getsockname() and close() for IP sockets without
 * a system call, so that a loop under it times, or valgrind counts, the
 * preload's own work and libc's, free of what the kernel costs and of the
 * machine's noise. Everything else (the library's question to its daemon,
 * over a Unix socket) goes to the kernel.
 *
 * An IP socket is the descriptor FAKE, one at a time (the loops close each
 * before making the next); getsockname() reports the last address bound
 * to it, so that a loop still shows whether the preload bound it.
 * NOSYS_SWEEP=KIB makes each close() of it read KIB KiB of memory,
 * sweeping the caches as a real connect's work in the kernel does, and
 * time what runs between two sweeps (the loop's next call, made on cold
 * caches); at exit it writes "nosys: between NS CALLS" to standard error,
 * the total of those times and how many there were.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FAKE 1000

static struct sockaddr_storage bound;
static socklen_t bound_len;
static volatile unsigned char *sweep;
static size_t sweep_len;
static long long between_ns, between_n, swept_at;

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((destructor)) static void fini(void)
{
	if (!sweep_len)
		return;
	char line[64];
	int n = snprintf(line, sizeof line, "nosys: between %lld %lld\n", between_ns, between_n);
	(void)!write(2, line, (size_t)n);
}

__attribute__((constructor)) static void init(void)
{
	const char *s = getenv("NOSYS_SWEEP");
	if (s && atol(s) > 0) {
		sweep_len = (size_t)atol(s) << 10;
		sweep = malloc(sweep_len);
		if (!sweep)
			sweep_len = 0;
		for (size_t i = 0; i < sweep_len; i += 64)
			sweep[i] = 1;
	}
}

int socket(int domain, int type, int protocol)
{
	if (domain != AF_INET && domain != AF_INET6)
		return (int)syscall(SYS_socket, domain, type, protocol);
	bound_len = 0;
	return FAKE;
}

int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return fd == FAKE ? 0 : (int)syscall(SYS_connect, fd, sa, len);
}

int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (fd != FAKE)
		return (int)syscall(SYS_bind, fd, sa, len);
	if (len > sizeof bound)
		len = sizeof bound;
	memcpy(&bound, sa, len);
	bound_len = len;
	return 0;
}

int setsockopt(int fd, int level, int name, const void *v, socklen_t len)
{
	return fd == FAKE ? 0 : (int)syscall(SYS_setsockopt, fd, level, name, v, len);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len)
{
	return fd == FAKE ? (ssize_t)n : syscall(SYS_sendto, fd, buf, n, flags, sa, len);
}

int getsockname(int fd, struct sockaddr *sa, socklen_t *len)
{
	if (fd != FAKE)
		return (int)syscall(SYS_getsockname, fd, sa, len);
	socklen_t n = bound_len < *len ? bound_len : *len;
	memset(sa, 0, *len);
	memcpy(sa, &bound, n);
	*len = bound_len;
	return 0;
}

int close(int fd)
{
	if (fd != FAKE)
		return (int)syscall(SYS_close, fd);
	if (!sweep_len)
		return 0;
	long long t = now_ns();
	if (swept_at) {
		between_ns += t - swept_at;
		between_n++;
	}
	unsigned s = 0;
	for (size_t i = 0; i < sweep_len; i += 64)
		s += sweep[i];
	swept_at = now_ns();
	return (int)(s & 0); /* 0, after the reads */
}

/* forcebind.so: the floor under any LD_PRELOAD interceptor that binds, in
 * the style of force_bind and bindhack: connect() to an AF_INET address
 * sets IP_BIND_ADDRESS_NO_PORT, binds to $FORCEBIND_ADDR (read once, at
 * load) and calls the real connect; sendto() to an AF_INET address binds
 * (without the option: a UDP socket's port is taken at the bind anyway)
 * and calls the real sendto. The bind is made every time: on a socket
 * bound already it fails (EINVAL), which is ignored, so a program that
 * sends many times from one socket pays it each time (the loops the
 * benchmarks time use a fresh socket per call, where both make one bind).
 * No daemon, no cache, no checks: what libipvirt.so costs beyond this is
 * the price of its rules.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static struct sockaddr_in src = {.sin_family = AF_INET};

__attribute__((constructor)) static void init(void)
{
	real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
	real_sendto = (ssize_t (*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "sendto");
	const char *a = getenv("FORCEBIND_ADDR");
	if (!a || inet_pton(AF_INET, a, &src.sin_addr) != 1)
		src.sin_family = AF_UNSPEC; /* nothing to force: the bench sees the plain source and fails */
}

int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (sa && sa->sa_family == AF_INET && src.sin_family == AF_INET) {
		int one = 1;
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		bind(fd, (const struct sockaddr *)&src, sizeof src);
	}
	return real_connect(fd, sa, len);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len)
{
	if (sa && sa->sa_family == AF_INET && src.sin_family == AF_INET)
		bind(fd, (const struct sockaddr *)&src, sizeof src);
	return real_sendto(fd, buf, n, flags, sa, len);
}

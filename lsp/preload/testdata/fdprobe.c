/* Descriptor probe in C: the library's hot path, traced, and the ways a
 * descriptor number changes hands. Same output as sockprobe.c: one line
 * "OP RESULT" per operation, RESULT being "IP PORT" (the socket's local
 * address) or "errno N".
 *
 * The hot operations bracket their work with close(-1), a call that strace
 * shows and that does nothing, so a test can cut the trace to exactly the
 * calls one connect, send or bind makes:
 *
 *   hottcp HOST PORT     socket, connect, close
 *   hotudp HOST PORT     socket, two sendto without connect, close
 *   hotbind PORT         socket, bind to 0.0.0.0:PORT (then prints the
 *                        address and closes, outside the brackets)
 *
 * Descriptor reuse and inheritance:
 *
 *   reuse                a TCP or UDP socket's number freed each way a
 *                        program can (close, after an open() took it and
 *                        was closed; a raw close system call; fclose of
 *                        fdopen; close_range; closefrom; dup2 and dup3
 *                        onto it), then taken by a raw or ping socket,
 *                        made by socket() or by a raw system call: it
 *                        connects to 127.0.0.1 ("reuse-open", ...,
 *                        "reuse-icmp"; errno 13 where ping sockets are not
 *                        allowed)
 *   dup2 HOST PORT       a raw socket dup2()ed onto a TCP socket's number,
 *                        connect to 127.0.0.1 ("dup2-raw"); a TCP socket
 *                        dup2()ed to number 100, connect ("dup2-tcp")
 *   inherit HOST PORT    an unbound TCP socket and one the program bound to
 *                        127.0.0.5 port 0 with IP_BIND_ADDRESS_NO_PORT, kept
 *                        across exec(): the new image connects both
 *                        ("inherited", "inherited-bound")
 *   progbound HOST PORT  IP_BIND_ADDRESS_NO_PORT, bind to 127.0.0.5:0, then
 *                        connect: left alone
 *   wildcard HOST PORT   IP_BIND_ADDRESS_NO_PORT, bind to 0.0.0.0:0 (which
 *                        binds nothing), 2 s pause (the answer may change),
 *                        then connect
 *   einval HOST PORT     a UDP socket bound by a raw bind system call to
 *                        0.0.0.0:0 (the kernel picks the port), errno =
 *                        EDOM, sendto: prints the address and errno after
 *                        it ("... errno-after N")
 *   disconnect HOST PORT a UDP socket sends to 192.0.2.1 (the kernel binds
 *                        it to 0.0.0.0), then to HOST ("disconnect-bound"),
 *                        is disconnected with AF_UNSPEC (which unbinds it),
 *                        and sends to HOST again ("disconnect-fresh")
 *   v6first HOST PORT    a dual-stack UDP socket sends to [::1]:9 (the
 *                        kernel binds it to [::]), then to ::ffff:HOST
 *                        ("v6first-ipv6", "v6first-mapped": 0 or errno N)
 *   netns                (first, as root) a network namespace of its own
 *                        with loopback up and ping sockets allowed
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct sockaddr_in dest(const char *host, const char *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
		fprintf(stderr, "fdprobe: bad address %s\n", host);
		exit(2);
	}
	return a;
}

static void die(const char *what)
{
	fprintf(stderr, "fdprobe: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* mark brackets a traced section: a call strace shows, and nothing else. */
static void mark(void)
{
	close(-1);
}

/* report prints "OP IP PORT" for fd's local address, or "OP errno N" when
 * rc (the operation's result) is negative. */
static void report(const char *op, int fd, int rc)
{
	if (rc < 0) {
		printf("%s errno %d\n", op, errno);
		return;
	}
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	char ip[INET_ADDRSTRLEN] = "?";
	if (getsockname(fd, (struct sockaddr *)&a, &l) < 0) {
		printf("%s errno %d\n", op, errno);
		return;
	}
	inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
	printf("%s %s %d\n", op, ip, ntohs(a.sin_port));
}

static void hottcp(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port);
	mark();
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
	int e = errno;
	close(fd);
	mark();
	printf("hottcp %s\n", rc < 0 ? strerror(e) : "ok");
}

static void hotudp(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port);
	mark();
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	ssize_t r1 = sendto(fd, "one", 3, 0, (struct sockaddr *)&a, sizeof a);
	ssize_t r2 = sendto(fd, "two", 3, 0, (struct sockaddr *)&a, sizeof a);
	int e = errno;
	close(fd);
	mark();
	printf("hotudp %s\n", r1 < 0 || r2 < 0 ? strerror(e) : "ok");
}

static void hotbind(const char *port)
{
	struct sockaddr_in a = dest("0.0.0.0", port);
	mark();
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
	mark();
	report("hotbind", fd, rc);
	close(fd);
}


/* reused checks that a socket made after a TCP socket's number was freed
 * got that number, so the test exercises reuse and not a fresh number. */
static void reused(const char *op, int fd, int want)
{
	if (fd != want) {
		fprintf(stderr, "fdprobe: %s: got descriptor %d, want the freed %d\n", op, fd, want);
		exit(2);
	}
}

/* Ways a program frees a number: each libc function the library wraps,
 * and a raw close system call it does not see. */
static void by_open(int fd)
{
	close(fd);
	int f = open("/dev/null", O_RDONLY);
	reused("open", f, fd);
	close(f);
}
static void by_close(int fd)
{
	close(fd);
}
static void by_syscall(int fd)
{
	syscall(SYS_close, fd);
}
static void by_fclose(int fd)
{
	FILE *f = fdopen(fd, "r+");
	if (!f)
		die("fdopen");
	fclose(f);
}
static void by_close_range(int fd)
{
	close_range((unsigned int)fd, (unsigned int)fd, 0);
}
static void by_closefrom(int fd)
{
	closefrom(fd);
}
/* by_dup2 and by_dup3 replace the socket by /dev/null, whose number the
 * raw close then frees: the entry must have gone with the socket. */
static void by_dup2(int fd)
{
	int n = open("/dev/null", O_RDONLY);
	if (dup2(n, fd) != fd)
		die("dup2");
	close(n);
	syscall(SYS_close, fd);
}
static void by_dup3(int fd)
{
	int n = open("/dev/null", O_RDONLY);
	if (dup3(n, fd, 0) != fd)
		die("dup3");
	close(n);
	syscall(SYS_close, fd);
}

/* Ways the next holder is made: socket(), which the library sees, and a
 * raw system call, which it does not (like dup, F_DUPFD or SCM_RIGHTS). */
static int raw_socket(int domain, int type, int protocol)
{
	return (int)syscall(SYS_socket, domain, type, protocol);
}

static const struct {
	const char *op;
	int was;              /* the freed socket's type */
	void (*free_it)(int);
	int (*make)(int, int, int);
	int type, protocol;   /* the next holder's */
} reuses[] = {
	{"reuse-open", SOCK_STREAM, by_open, socket, SOCK_RAW, IPPROTO_TCP},
	{"reuse-close", SOCK_STREAM, by_close, raw_socket, SOCK_RAW, IPPROTO_TCP},
	{"reuse-syscall", SOCK_STREAM, by_syscall, socket, SOCK_RAW, IPPROTO_TCP},
	{"reuse-fclose", SOCK_STREAM, by_fclose, raw_socket, SOCK_RAW, IPPROTO_TCP},
	{"reuse-close_range", SOCK_DGRAM, by_close_range, raw_socket, SOCK_RAW, IPPROTO_UDP},
	{"reuse-closefrom", SOCK_DGRAM, by_closefrom, raw_socket, SOCK_RAW, IPPROTO_UDP},
	{"reuse-dup2", SOCK_STREAM, by_dup2, raw_socket, SOCK_RAW, IPPROTO_TCP},
	{"reuse-dup3", SOCK_STREAM, by_dup3, raw_socket, SOCK_RAW, IPPROTO_TCP},
	{"reuse-icmp", SOCK_DGRAM, by_open, socket, SOCK_DGRAM, IPPROTO_ICMP},
	{"reuse-icmp-close", SOCK_DGRAM, by_close, raw_socket, SOCK_DGRAM, IPPROTO_ICMP},
};

/* reuse frees a TCP or UDP socket's number each way, has a raw or ping
 * socket take it, and sends from it to 127.0.0.1 (ping) or connects it:
 * the library must leave it alone. */
static void reuse(void)
{
	struct sockaddr_in loopback = dest("127.0.0.1", "0");
	for (size_t i = 0; i < sizeof reuses / sizeof reuses[0]; i++) {
		int t = socket(AF_INET, reuses[i].was, 0);
		reuses[i].free_it(t);
		int r = reuses[i].make(AF_INET, reuses[i].type, reuses[i].protocol);
		if (r < 0) { /* raw sockets need CAP_NET_RAW; ping sockets, ping_group_range */
			report(reuses[i].op, r, -1);
			continue;
		}
		reused(reuses[i].op, r, t);
		int rc = 0;
		if (reuses[i].protocol == IPPROTO_ICMP) {
			struct icmphdr echo = {.type = ICMP_ECHO};
			rc = (int)sendto(r, &echo, sizeof echo, 0, (const struct sockaddr *)&loopback, sizeof loopback);
		}
		if (rc >= 0)
			rc = connect(r, (const struct sockaddr *)&loopback, sizeof loopback);
		report(reuses[i].op, r, rc);
		close(r);
	}
}

static void dup2s(const char *host, const char *port)
{
	struct sockaddr_in loopback = dest("127.0.0.1", "0");
	int t = socket(AF_INET, SOCK_STREAM, 0);
	int r = socket(AF_INET, SOCK_RAW, IPPROTO_TCP);
	if (r < 0) {
		report("dup2-raw", r, -1);
	} else {
		if (dup2(r, t) != t)
			die("dup2");
		report("dup2-raw", t, connect(t, (const struct sockaddr *)&loopback, sizeof loopback));
		close(r);
	}
	close(t);

	struct sockaddr_in a = dest(host, port);
	t = socket(AF_INET, SOCK_STREAM, 0);
	if (dup2(t, 100) != 100)
		die("dup2");
	close(t);
	report("dup2-tcp", 100, connect(100, (struct sockaddr *)&a, sizeof a));
}

/* inherit makes the two sockets and executes this program again on them,
 * with the same environment (the library stays preloaded). */
static void inherit(const char *host, const char *port)
{
	int fresh = socket(AF_INET, SOCK_STREAM, 0);
	int bound = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	struct sockaddr_in b = dest("127.0.0.5", "0");
	if (setsockopt(bound, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0 ||
	    bind(bound, (struct sockaddr *)&b, sizeof b) < 0)
		die("bind 127.0.0.5");
	char f[16], bd[16];
	snprintf(f, sizeof f, "%d", fresh);
	snprintf(bd, sizeof bd, "%d", bound);
	fflush(stdout);
	execl("/proc/self/exe", "fdprobe", "inherited", f, bd, host, port, (char *)NULL);
	die("exec");
}

static void inherited(int fresh, int bound, const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port);
	report("inherited", fresh, connect(fresh, (struct sockaddr *)&a, sizeof a));
	report("inherited-bound", bound, connect(bound, (struct sockaddr *)&a, sizeof a));
}

static void progbound(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port), b = dest("127.0.0.5", "0");
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&b, sizeof b) < 0)
		die("bind 127.0.0.5");
	report("progbound", fd, connect(fd, (struct sockaddr *)&a, sizeof a));
}

static void wildcard(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port), b = dest("0.0.0.0", "0");
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&b, sizeof b) < 0)
		die("bind 0.0.0.0:0");
	sleep(2);
	report("wildcard", fd, connect(fd, (struct sockaddr *)&a, sizeof a));
}

static void einval(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port), any = dest("0.0.0.0", "0");
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (syscall(SYS_bind, fd, &any, sizeof any) < 0)
		die("bind 0.0.0.0:0");
	errno = EDOM;
	ssize_t n = sendto(fd, "x", 1, 0, (struct sockaddr *)&a, sizeof a);
	int after = errno;
	report("einval", fd, n < 0 ? -1 : 0);
	printf("einval errno-after %d\n", after);
}

static void disconnect(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port), far = dest("192.0.2.1", "9");
	struct sockaddr unspec = {.sa_family = AF_UNSPEC};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	sendto(fd, "x", 1, 0, (struct sockaddr *)&far, sizeof far); /* may fail: unroutable */
	report("disconnect-bound", fd, (int)sendto(fd, "x", 1, 0, (struct sockaddr *)&a, sizeof a));
	if (connect(fd, &unspec, sizeof unspec) < 0)
		die("connect AF_UNSPEC");
	report("disconnect-fresh", fd, (int)sendto(fd, "x", 1, 0, (struct sockaddr *)&a, sizeof a));
}

static void v6first(const char *host, const char *port)
{
	struct sockaddr_in6 lo6 = {.sin6_family = AF_INET6, .sin6_port = htons(9), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	struct sockaddr_in6 mapped = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)atoi(port))};
	char m[64];
	snprintf(m, sizeof m, "::ffff:%s", host);
	if (inet_pton(AF_INET6, m, &mapped.sin6_addr) != 1) {
		fprintf(stderr, "fdprobe: bad address %s\n", host);
		exit(2);
	}
	int fd = socket(AF_INET6, SOCK_DGRAM, 0), off = 0;
	if (fd < 0 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0)
		die("dual-stack socket");
	ssize_t r = sendto(fd, "x", 1, 0, (struct sockaddr *)&lo6, sizeof lo6);
	printf("v6first-ipv6 %d\n", r < 0 ? errno : 0);
	r = sendto(fd, "x", 1, 0, (struct sockaddr *)&mapped, sizeof mapped);
	printf("v6first-mapped %d\n", r < 0 ? errno : 0);
}

/* netns: a private network namespace, where ping sockets can be allowed
 * without changing the machine's setting. */
static void netns(void)
{
	if (unshare(CLONE_NEWNET) < 0)
		die("unshare");
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		die("SIOCGIFFLAGS");
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		die("SIOCSIFFLAGS");
	close(fd);
	FILE *f = fopen("/proc/sys/net/ipv4/ping_group_range", "w");
	if (!f || fputs("0 2147483647\n", f) < 0 || fclose(f) != 0)
		die("ping_group_range");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 1; i < argc;) {
		const char *op = argv[i];
		int need = 2;
		if (strcmp(op, "reuse") == 0 || strcmp(op, "netns") == 0)
			need = 0;
		else if (strcmp(op, "hotbind") == 0)
			need = 1;
		else if (strcmp(op, "inherited") == 0)
			need = 4;
		if (i + need >= argc) {
			fprintf(stderr, "fdprobe: %s needs %d arguments\n", op, need);
			return 2;
		}
		char **a = argv + i + 1;
		if (strcmp(op, "hottcp") == 0)
			hottcp(a[0], a[1]);
		else if (strcmp(op, "hotudp") == 0)
			hotudp(a[0], a[1]);
		else if (strcmp(op, "hotbind") == 0)
			hotbind(a[0]);
		else if (strcmp(op, "reuse") == 0)
			reuse();
		else if (strcmp(op, "dup2") == 0)
			dup2s(a[0], a[1]);
		else if (strcmp(op, "inherit") == 0)
			inherit(a[0], a[1]);
		else if (strcmp(op, "inherited") == 0)
			inherited(atoi(a[0]), atoi(a[1]), a[2], a[3]);
		else if (strcmp(op, "progbound") == 0)
			progbound(a[0], a[1]);
		else if (strcmp(op, "wildcard") == 0)
			wildcard(a[0], a[1]);
		else if (strcmp(op, "einval") == 0)
			einval(a[0], a[1]);
		else if (strcmp(op, "disconnect") == 0)
			disconnect(a[0], a[1]);
		else if (strcmp(op, "v6first") == 0)
			v6first(a[0], a[1]);
		else if (strcmp(op, "netns") == 0)
			netns();
		else {
			fprintf(stderr, "fdprobe: unknown operation %s\n", op);
			return 2;
		}
		i += need + 1;
	}
	return 0;
}

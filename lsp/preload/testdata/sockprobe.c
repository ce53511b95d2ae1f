/* Socket probe in C, for what Python cannot show: errno across intercepted
 * calls, sendmmsg, many threads connecting at once, and families the
 * library must not touch. Same output as probe.py: one line "OP RESULT" per
 * operation, RESULT being "IP PORT" or "errno N".
 *
 *   connect HOST PORT        TCP connect
 *   udpconnect HOST PORT     UDP connect (sends nothing)
 *   errno HOST PORT          errno = EDOM, then a TCP connect: prints the
 *                            result and errno after it ("... errno-after N")
 *   sendmmsg HOST PORT       two UDP datagrams in one unconnected sendmmsg
 *   threads N HOST PORT      N threads released at once by a barrier, each
 *                            connecting; prints N lines "thread IP PORT"
 *   others UNIXPATH          AF_UNIX connect, netlink bind, raw and ICMP
 *                            sockets, IPv6 to ::1: none may ask the daemon
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct sockaddr_in dest(const char *host, const char *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
		fprintf(stderr, "sockprobe: bad address %s\n", host);
		exit(2);
	}
	return a;
}

static void local(const char *op, int fd, char *line, size_t n)
{
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	char ip[INET_ADDRSTRLEN] = "?";
	getsockname(fd, (struct sockaddr *)&a, &l);
	inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
	snprintf(line, n, "%s %s %d", op, ip, ntohs(a.sin_port));
}

static void one(const char *op, int type, const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port);
	int fd = socket(AF_INET, type, 0);
	char line[128];
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
		snprintf(line, sizeof line, "%s errno %d", op, errno);
	else
		local(op, fd, line, sizeof line);
	puts(line);
}

static void errno_kept(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	char line[128];
	errno = EDOM;
	int r = connect(fd, (struct sockaddr *)&a, sizeof a);
	int after = errno;
	if (r < 0)
		snprintf(line, sizeof line, "errno errno %d", after);
	else
		local("errno", fd, line, sizeof line);
	printf("%s errno-after %d\n", line, after);
}

static void mmsg(const char *host, const char *port)
{
	struct sockaddr_in a = dest(host, port);
	char payload[] = "probe";
	struct iovec iov = {payload, 5};
	struct mmsghdr v[2];
	memset(v, 0, sizeof v);
	for (int i = 0; i < 2; i++) {
		v[i].msg_hdr.msg_name = &a;
		v[i].msg_hdr.msg_namelen = sizeof a;
		v[i].msg_hdr.msg_iov = &iov;
		v[i].msg_hdr.msg_iovlen = 1;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	char line[128];
	if (sendmmsg(fd, v, 2, 0) != 2)
		snprintf(line, sizeof line, "sendmmsg errno %d", errno);
	else
		local("sendmmsg", fd, line, sizeof line);
	puts(line);
}

static pthread_barrier_t barrier;
static struct sockaddr_in thread_dest;

static void *thread_main(void *arg)
{
	char *line = arg;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	pthread_barrier_wait(&barrier);
	if (connect(fd, (struct sockaddr *)&thread_dest, sizeof thread_dest) < 0)
		snprintf(line, 128, "thread errno %d", errno);
	else
		local("thread", fd, line, 128);
	return NULL; /* fd kept open until exit, so the server sees it */
}

static void threads(int n, const char *host, const char *port)
{
	pthread_t *t = calloc((size_t)n, sizeof *t);
	char(*lines)[128] = calloc((size_t)n, 128);
	thread_dest = dest(host, port);
	pthread_barrier_init(&barrier, NULL, (unsigned)n);
	for (int i = 0; i < n; i++)
		if (pthread_create(&t[i], NULL, thread_main, lines[i]) != 0) {
			perror("pthread_create");
			exit(2);
		}
	for (int i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		puts(lines[i]);
	}
}

static void others(const char *path)
{
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	printf("unix %d\n", connect(fd, (struct sockaddr *)&un, sizeof un) == 0 ? 0 : errno);

	struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
	fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	printf("netlink %d\n", bind(fd, (struct sockaddr *)&nl, sizeof nl) == 0 ? 0 : errno);

	struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	fd = socket(AF_INET, SOCK_RAW, IPPROTO_TCP); /* needs CAP_NET_RAW */
	printf("raw %d\n", fd < 0 ? errno : connect(fd, (struct sockaddr *)&lo, sizeof lo) == 0 ? 0 : errno);
	fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP); /* ping socket, if allowed */
	printf("icmp %d\n", fd < 0 ? errno : connect(fd, (struct sockaddr *)&lo, sizeof lo) == 0 ? 0 : errno);

	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons(9), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	fd = socket(AF_INET6, SOCK_DGRAM, 0);
	printf("ipv6 %d\n", fd < 0 ? errno : connect(fd, (struct sockaddr *)&v6, sizeof v6) == 0 ? 0 : errno);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 1; i < argc;) {
		const char *op = argv[i];
		int need = strcmp(op, "others") == 0 ? 1 : strcmp(op, "threads") == 0 ? 3 : 2;
		if (i + need >= argc) {
			fprintf(stderr, "sockprobe: %s needs %d arguments\n", op, need);
			return 2;
		}
		char **a = argv + i + 1;
		if (strcmp(op, "connect") == 0)
			one(op, SOCK_STREAM, a[0], a[1]);
		else if (strcmp(op, "udpconnect") == 0)
			one(op, SOCK_DGRAM, a[0], a[1]);
		else if (strcmp(op, "errno") == 0)
			errno_kept(a[0], a[1]);
		else if (strcmp(op, "sendmmsg") == 0)
			mmsg(a[0], a[1]);
		else if (strcmp(op, "threads") == 0)
			threads(atoi(a[0]), a[1], a[2]);
		else if (strcmp(op, "others") == 0)
			others(a[0]);
		else {
			fprintf(stderr, "sockprobe: unknown operation %s\n", op);
			return 2;
		}
		i += need + 1;
	}
	return 0;
}

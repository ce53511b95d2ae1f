/* noopd: the floor under libipvirt.so's first call.
 *
 *   noopd SOCKET REPLY_HEX
 *
 * Listens on the Unix socket SOCKET and answers each connection's first
 * request with the fixed bytes REPLY_HEX (an ANSWER frame the benchmark
 * encodes: the same VIP ipvirtd gives, so the client does the same work
 * after the reply), then closes it. No /proc, no policy, no Go runtime: one
 * thread, blocking accept, read, write. What a fresh process pays for its
 * first connect against this server is what any out-of-process round trip
 * costs on the machine; ipvirtd's figure is read against it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fputs("usage: noopd SOCKET REPLY_HEX\n", stderr);
		return 2;
	}
	size_t hl = strlen(argv[2]);
	unsigned char reply[512];
	if (hl == 0 || hl % 2 || hl / 2 > sizeof reply) {
		fprintf(stderr, "noopd: reply %s: want 1-%zu bytes in lower-case hex\n", argv[2], sizeof reply);
		return 2;
	}
	for (size_t i = 0; i < hl / 2; i++) {
		int a = hexval(argv[2][2 * i]), b = hexval(argv[2][2 * i + 1]);
		if (a < 0 || b < 0) {
			fprintf(stderr, "noopd: reply %s: not lower-case hex\n", argv[2]);
			return 2;
		}
		reply[i] = (unsigned char)(a << 4 | b);
	}
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (strlen(argv[1]) >= sizeof sun.sun_path) {
		fprintf(stderr, "noopd: socket path %s too long\n", argv[1]);
		return 2;
	}
	strcpy(sun.sun_path, argv[1]);
	unlink(argv[1]);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&sun, sizeof sun) != 0 || listen(l, 128) != 0) {
		fprintf(stderr, "noopd: listen on %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	chmod(argv[1], 0666);
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "noopd: accept: %s\n", strerror(errno));
			return 1;
		}
		unsigned char req[12];
		size_t got = 0;
		while (got < sizeof req) {
			ssize_t r = read(c, req + got, sizeof req - got);
			if (r <= 0)
				break;
			got += (size_t)r;
		}
		if (got == sizeof req)
			(void)!write(c, reply, hl / 2);
		close(c);
	}
}

/* One QUERY round trip to ipvirtd (backend/wire/PROTOCOL.md, version 1).
 *
 * The socket is non-blocking from the start and every wait is a poll()
 * bounded by one deadline, so a daemon that is down, wedged or slow costs a
 * caller at most the timeout. The answer is checked field by field: anything
 * a version-1 daemon would not send makes the daemon "unusable", never a
 * guess at an address. */
#define _GNU_SOURCE
#include "ipvirt.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define HEADER_SIZE 12
#define ANSWER_FIXED 32
#define PROTO_VERSION 1
#define OP_QUERY 1
#define RESP_ANSWER 1
#define RESP_ERROR 3
#define RESP_PENDING 4
#define FLAG_ACCEPT_PENDING 1
/* The connection's last request: the daemon closes it once it has answered,
 * instead of waiting to be woken by this side's close. */
#define FLAG_LAST 2
/* An ANSWER is 32 bytes and a reason of at most 65,535; later versions may
 * append fields, so allow some slack, but never the 16 MiB a JSON reply may
 * use: an ANSWER that large is not one. */
#define ANSWER_MAX (ANSWER_FIXED + 65535 + 4096)

/* The descriptor of a query in flight, so that a fork() child (which gets a
 * copy but no thread to finish the query) can close it. */
IPV_HIDDEN atomic_int ipv_query_fd = -1;

static void fail(char *err, size_t errlen, const char *what, int e)
{
	struct ipv_buf b = {err, 0, errlen};
	ipv_puts(&b, what);
	if (e) {
		ipv_puts(&b, ": ");
		ipv_puterr(&b, e);
	}
}

/* wait_fd polls fd for ev until deadline (ms, monotonic). */
static int wait_fd(int fd, short ev, uint64_t deadline)
{
	for (;;) {
		uint64_t now = ipv_mono_ms();
		if (now >= deadline) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd p = {.fd = fd, .events = ev};
		int r = poll(&p, 1, (int)(deadline - now));
		if (r > 0)
			return 0; /* readable, writable, or an error the next call reports */
		if (r == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
}

/* read_full reads exactly n bytes. Returns 0, -1 with errno, or -2 when the
 * daemon closed the connection first. */
static int read_full(int fd, unsigned char *buf, size_t n, uint64_t deadline)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = recv(fd, buf + got, n - got, 0);
		if (r > 0) {
			got += (size_t)r;
		} else if (r == 0) {
			return -2;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (wait_fd(fd, POLLIN, deadline) < 0)
				return -1;
		} else if (errno != EINTR) {
			return -1;
		}
	}
	return 0;
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static in_addr_t addr_at(const unsigned char *p)
{
	in_addr_t a;
	memcpy(&a, p, 4); /* already network order */
	return a;
}

/* Multicast (224/4) and class E with the limited broadcast (240/4) are
 * never a host's own unicast address. */
static int unicast(in_addr_t a)
{
	return (ntohl(a) >> 28) < 14;
}

int ipv_parse_header(const unsigned char *h, uint32_t *payload_len, char *err, size_t errlen)
{
	struct ipv_buf b = {err, 0, errlen};
	if (memcmp(h, "IPVT", 4) != 0) {
		ipv_puts(&b, "bad magic in the daemon's reply (not the ipvirt protocol)");
		return -1;
	}
	if (h[4] != PROTO_VERSION) {
		ipv_puts(&b, "daemon speaks protocol version ");
		ipv_putu(&b, h[4]);
		ipv_puts(&b, ", this library speaks 1");
		return -1;
	}
	*payload_len = be32(h + 8);
	if (h[5] == RESP_ERROR)
		return 1; /* the caller reads the message */
	if (h[5] == RESP_PENDING) {
		if (*payload_len != 4) {
			ipv_puts(&b, "PENDING payload of ");
			ipv_putu(&b, *payload_len);
			ipv_puts(&b, " bytes (want 4)");
			return -1;
		}
		return 2; /* the caller reads the announced wait */
	}
	if (h[5] != RESP_ANSWER) {
		ipv_puts(&b, "daemon replied with frame type ");
		ipv_putu(&b, h[5]);
		ipv_puts(&b, " to a QUERY, want ANSWER (1)");
		return -1;
	}
	if (*payload_len < ANSWER_FIXED || *payload_len > ANSWER_MAX) {
		ipv_puts(&b, "ANSWER payload of ");
		ipv_putu(&b, *payload_len);
		ipv_puts(&b, " bytes (want 32 to 69663)");
		return -1;
	}
	return 0;
}

int ipv_parse_answer(const unsigned char *p, uint32_t payload_len, struct ipv_reply *out, char *err, size_t errlen)
{
	struct ipv_buf b = {err, 0, errlen};
	unsigned kind = p[0], prefix = p[1];
	uint32_t reason_len = (uint32_t)p[2] << 8 | p[3];
	in_addr_t vip = addr_at(p + 4), mip = addr_at(p + 8);

	/* Checked here too, not only by ipv_parse_header: the reason check
	 * below subtracts ANSWER_FIXED, which would wrap around. */
	if (payload_len < ANSWER_FIXED) {
		ipv_puts(&b, "ANSWER payload of ");
		ipv_putu(&b, payload_len);
		ipv_puts(&b, " bytes (want at least 32)");
		return -1;
	}
	if (kind < IPV_VIP || kind > IPV_DENIED) {
		ipv_puts(&b, "ANSWER kind ");
		ipv_putu(&b, kind);
		ipv_puts(&b, " unknown");
		return -1;
	}
	if (prefix > 32 || (kind != IPV_VIP && (prefix != 0 || vip != 0))) {
		ipv_puts(&b, "ANSWER prefix length ");
		ipv_putu(&b, prefix);
		ipv_puts(&b, kind == IPV_VIP ? " > 32" : " or VIP set on an answer that is not a VIP");
		return -1;
	}
	if (kind == IPV_VIP && (vip == 0 || !unicast(vip))) {
		ipv_puts(&b, "ANSWER VIP ");
		ipv_putip(&b, vip);
		ipv_puts(&b, " is not a unicast address");
		return -1;
	}
	if (mip != 0 && !unicast(mip)) {
		ipv_puts(&b, "ANSWER machine IP ");
		ipv_putip(&b, mip);
		ipv_puts(&b, " is not a unicast address");
		return -1;
	}
	if (p[16] & 0x80) {
		/* The expiry is Unix seconds below 2^63 (backend/wire refuses
		 * the rest too): no version-1 daemon sends this. */
		ipv_puts(&b, "ANSWER expiry past 2^63-1 seconds");
		return -1;
	}
	if (reason_len > payload_len - ANSWER_FIXED) {
		ipv_puts(&b, "ANSWER reason of ");
		ipv_putu(&b, reason_len);
		ipv_puts(&b, " bytes overruns the payload");
		return -1;
	}
	out->kind = (int)kind;
	out->prefix = prefix;
	out->vip = vip;
	out->mip = mip;
	out->ttl = be32(p + 12);
	out->reason[0] = 0;
	return 0;
}

static int dial(int fd, const char *path, uint64_t deadline, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof sun.sun_path) {
		fail(err, errlen, "socket path empty or too long", 0);
		return -1;
	}
	memcpy(sun.sun_path, path, n + 1);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	for (;;) {
		if (ipv_real_connect(fd, (struct sockaddr *)&sun, len) == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			/* A Unix listener with a full backlog: no async connect
			 * exists for AF_UNIX, so try again shortly. */
			uint64_t now = ipv_mono_ms();
			if (now >= deadline) {
				fail(err, errlen, "connect", ETIMEDOUT);
				return -1;
			}
			poll(NULL, 0, deadline - now < 5 ? (int)(deadline - now) : 5);
			continue;
		}
		if (errno == EINPROGRESS) {
			int soerr = 0;
			socklen_t sl = sizeof soerr;
			if (wait_fd(fd, POLLOUT, deadline) < 0) {
				fail(err, errlen, "connect", errno);
				return -1;
			}
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
				soerr = errno;
			if (soerr) {
				fail(err, errlen, "connect", soerr);
				return -1;
			}
			return 0;
		}
		fail(err, errlen, "connect", errno);
		return -1;
	}
}

/* roundtrip does the exchange on a connected socket. */
static int roundtrip(int fd, uint64_t deadline, int pending_ms, struct ipv_reply *out, char *err, size_t errlen)
{
	unsigned char query[HEADER_SIZE] = {'I', 'P', 'V', 'T', PROTO_VERSION, OP_QUERY, 0, FLAG_LAST, 0, 0, 0, 0};
	if (pending_ms > 0)
		query[7] |= FLAG_ACCEPT_PENDING;
	/* PENDING never buys more than pending_ms from the moment it arrives. */
	int pendings = 0;
	size_t sent = 0;
	while (sent < sizeof query) {
		ssize_t r = send(fd, query + sent, sizeof query - sent, MSG_NOSIGNAL);
		if (r >= 0) {
			sent += (size_t)r;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (wait_fd(fd, POLLOUT, deadline) < 0) {
				fail(err, errlen, "send", errno);
				return -1;
			}
		} else if (errno != EINTR) {
			fail(err, errlen, "send", errno);
			return -1;
		}
	}

	unsigned char h[HEADER_SIZE], fixed[ANSWER_FIXED];
	uint32_t plen;
	int kind, r;
	for (;;) {
		r = read_full(fd, h, sizeof h, deadline);
		if (r < 0) {
			fail(err, errlen, r == -2 ? "daemon closed the connection without a reply" : "waiting for the reply", r == -2 ? 0 : errno);
			return -1;
		}
		kind = ipv_parse_header(h, &plen, err, errlen);
		if (kind != 2)
			break;
		/* PENDING: the daemon is alive and acquiring a lease (a DHCP
		 * exchange); wait what it announced, within pending_ms. One is
		 * expected; a daemon that keeps sending them is broken. */
		unsigned char w[4];
		if (pending_ms <= 0 || ++pendings > 1) {
			fail(err, errlen, pending_ms <= 0 ? "daemon sent PENDING though it was not offered" : "daemon sent PENDING twice", 0);
			return -1;
		}
		if (read_full(fd, w, sizeof w, deadline) < 0) {
			fail(err, errlen, "reading PENDING", errno);
			return -1;
		}
		uint64_t wait = (uint64_t)be32(w) + 1000; /* slack for the answer's trip */
		if (wait > (uint64_t)pending_ms)
			wait = (uint64_t)pending_ms;
		uint64_t until = ipv_mono_ms() + wait;
		if (until > deadline)
			deadline = until;
	}
	if (kind < 0)
		return -1;
	if (kind == 1) {
		/* ERROR frame: 2-byte code, then a message worth showing. */
		unsigned char msg[160];
		uint32_t want = plen < sizeof msg ? plen : sizeof msg;
		struct ipv_buf b = {err, 0, errlen};
		if (plen < 2 || plen > ANSWER_MAX || read_full(fd, msg, want, deadline) < 0) {
			ipv_puts(&b, "daemon replied with a malformed ERROR frame");
			return -1;
		}
		ipv_puts(&b, "daemon refused the query: error ");
		ipv_putu(&b, (unsigned long)msg[0] << 8 | msg[1]);
		ipv_puts(&b, ": ");
		for (uint32_t i = 2; i < want && b.len + 1 < b.cap; i++)
			b.p[b.len++] = (msg[i] >= 0x20 && msg[i] < 0x7f) ? (char)msg[i] : '?';
		b.p[b.len] = 0;
		return -1;
	}
	r = read_full(fd, fixed, sizeof fixed, deadline);
	if (r < 0) {
		fail(err, errlen, r == -2 ? "daemon closed the connection in the middle of an ANSWER" : "reading the ANSWER", r == -2 ? 0 : errno);
		return -1;
	}
	if (ipv_parse_answer(fixed, plen, out, err, errlen) < 0)
		return -1;
	/* The rest: the reason (kept, truncated, for the denied message) and
	 * fields of later versions. A truncated frame is a broken daemon. */
	uint32_t reason_len = (uint32_t)fixed[2] << 8 | fixed[3];
	uint32_t left = plen - ANSWER_FIXED, at = 0;
	unsigned char chunk[512];
	while (left > 0) {
		uint32_t n = left < sizeof chunk ? left : sizeof chunk;
		r = read_full(fd, chunk, n, deadline);
		if (r < 0) {
			fail(err, errlen, r == -2 ? "daemon closed the connection in the middle of an ANSWER" : "reading the ANSWER", r == -2 ? 0 : errno);
			return -1;
		}
		for (uint32_t i = 0; i < n && at < reason_len; i++, at++)
			if (at + 1 < sizeof out->reason)
				out->reason[at] = (chunk[i] >= 0x20 && chunk[i] != 0x7f) ? (char)chunk[i] : '?';
		left -= n;
	}
	out->reason[reason_len < sizeof out->reason ? reason_len : sizeof out->reason - 1] = 0;
	return 0;
}

int ipv_query(const char *path, int timeout_ms, int pending_ms, struct ipv_reply *out, char *err, size_t errlen)
{
	uint64_t deadline = ipv_mono_ms() + (uint64_t)timeout_ms;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		fail(err, errlen, "socket", errno);
		return -1;
	}
	atomic_store(&ipv_query_fd, fd);
	int r = dial(fd, path, deadline, err, errlen);
	if (r == 0)
		r = roundtrip(fd, deadline, pending_ms, out, err, errlen);
	atomic_store(&ipv_query_fd, -1);
	close(fd);
	return r;
}

/* Internal interface of libipvirt.so, the LD_PRELOAD interceptor.
 *
 * Three parts: intercept.c (the exported bind/connect/send* wrappers and
 * their rules), answer.c (the per-process cached answer, fail-open policy and
 * the one stderr line), query.c (one round trip of the ipvirt protocol).
 * Everything here is hidden; only the five wrappers are exported. */
#ifndef IPVIRT_H
#define IPVIRT_H

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define IPV_HIDDEN __attribute__((visibility("hidden")))

/* Answer kinds, as on the wire (PROTOCOL.md, "The ANSWER payload"). */
enum { IPV_VIP = 1, IPV_MIP = 2, IPV_DENIED = 3 };

/* An answer as the wrappers use it. Published answers are immutable: a new
 * decision is a new struct, so readers never see half of one. */
struct ipv_answer {
	int kind;
	in_addr_t vip;      /* network order; 0 unless IPV_VIP */
	in_addr_t mip;      /* network order; 0 when unknown */
	/* Which destinations the answer applies to: loopback ones (the VIP is
	 * itself a loopback address, the simulator's topology) or the others. */
	int loopback_scope;
};

/* The answer for this process, asking ipvirtd when none is cached or the
 * cached one is past its TTL. Never NULL. Changes errno. */
IPV_HIDDEN const struct ipv_answer *ipv_current(void);

/* What query.c hands back: the decoded fixed part of an ANSWER. */
struct ipv_reply {
	int kind;
	unsigned prefix;
	in_addr_t vip, mip;  /* network order */
	uint32_t ttl;
	char reason[256];    /* NUL-terminated, truncated */
};

/* One QUERY round trip to the daemon at path, within timeout_ms; a daemon
 * that answers PENDING (it is acquiring a lease) buys up to pending_ms more
 * (0: PENDING is not offered). Returns 0 and fills *out, or -1 with a
 * one-line reason in err. */
IPV_HIDDEN int ipv_query(const char *path, int timeout_ms, int pending_ms, struct ipv_reply *out, char *err, size_t errlen);

/* ipv_parse_header validates a reply's 12-byte header: -1 (reason in err),
 * 0 for an ANSWER of a plausible length, 1 for an ERROR, 2 for a PENDING.
 * ipv_parse_answer validates the 32-byte fixed part of an ANSWER whose
 * payload is payload_len bytes: 0, or -1 with a reason in err. Split from
 * ipv_query so that the rules are in one place (and fuzzed from Go:
 * lsp/preload/internal/cquery). */
IPV_HIDDEN int ipv_parse_header(const unsigned char *h, uint32_t *payload_len, char *err, size_t errlen);
IPV_HIDDEN int ipv_parse_answer(const unsigned char *p, uint32_t payload_len, struct ipv_reply *out, char *err, size_t errlen);

/* The real libc functions, resolved with dlsym(RTLD_NEXT) (raw syscalls if
 * dlsym finds nothing, so the library never calls itself). */
IPV_HIDDEN int ipv_real_connect(int fd, const struct sockaddr *sa, socklen_t len);

/* Monotonic clock in milliseconds (CLOCK_MONOTONIC, vDSO: no syscall). */
IPV_HIDDEN uint64_t ipv_mono_ms(void);
/* ipv_note_stderr remembers which file fd 2 is, at load. */
IPV_HIDDEN void ipv_note_stderr(void);

/* Small async-signal-safe string building, for messages. */
struct ipv_buf {
	char *p;
	size_t len, cap;
};
IPV_HIDDEN void ipv_puts(struct ipv_buf *b, const char *s);
IPV_HIDDEN void ipv_putu(struct ipv_buf *b, unsigned long v);
IPV_HIDDEN void ipv_puterr(struct ipv_buf *b, int err);
IPV_HIDDEN void ipv_putip(struct ipv_buf *b, in_addr_t a);

#endif

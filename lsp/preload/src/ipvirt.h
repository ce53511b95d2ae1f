/* Internal interface of libipvirt.so, the LD_PRELOAD interceptor.
 *
 * Four parts: intercept.c (the exported bind/connect/send* wrappers and
 * their rules), fdtable.c (what the library knows of each descriptor, and
 * the socket/close/dup wrappers that keep it), answer.c (the per-process
 * cached answer, fail-open policy and the one stderr line), query.c (one
 * round trip of the ipvirt protocol). Everything here is hidden; only the
 * wrappers are exported. */
#ifndef IPVIRT_H
#define IPVIRT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#define IPV_HIDDEN __attribute__((visibility("hidden")))
#define IPV_EXPORT __attribute__((visibility("default")))
/* The functions of the hot path, which the linker then puts side by side
 * (.text.hot): a call touches as few lines and pages of code as it can. */
#define IPV_HOT __attribute__((hot))

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

/* The real functions of the hot wrappers (see REAL_FN below). */
typedef int (*socket_fn)(int, int, int);
typedef int (*close_fn)(int);
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);

/* ipv_hot (intercept.c) is everything the hot path reads but the
 * descriptor table, in one cache line: a connect's own work in the kernel
 * sweeps the caches, and a call then pays for each line it touches far
 * more than for its instructions. */
struct ipv_hot {
	_Atomic(socket_fn) socket;
	_Atomic(close_fn) close;
	_Atomic(bind_fn) bind;
	_Atomic(connect_fn) connect;
	_Atomic(sendto_fn) sendto;
	/* ipv_now_s() before which the cached answer holds; 0 before the first. */
	_Atomic unsigned long until;
	/* The cached answer as the hot path needs it: ipv_hot_word(). */
	_Atomic uint64_t answer;
	/* One more than the highest descriptor ever given an entry, so that
	 * forgetting a range (close_range, closefrom) stops there. */
	atomic_int fds_top;
} __attribute__((aligned(64)));
IPV_HIDDEN extern struct ipv_hot ipv_hot;

/* The hot word of an answer: the scope (1 loopback, 0 not) of the
 * destinations for which a VIP answer binds to the VIP, IPV_HOT_NEVER for
 * a MIP answer, which never binds, IPV_HOT_ASK for anything the hot path
 * leaves to prepare() (DENIED, and no answer within its TTL); and the VIP,
 * network order. One word, so that it is read whole. */
enum { IPV_HOT_NEVER = -1, IPV_HOT_ASK = -2 };
static inline uint64_t ipv_hot_word(int scope, in_addr_t vip)
{
	return (uint64_t)(uint32_t)scope << 32 | vip;
}
static inline int ipv_hot_scope(uint64_t w)
{
	return (int32_t)(uint32_t)(w >> 32);
}

/* The cached answer itself (answer.c), for the general way. The writer
 * stores it and the hot word before the expiry, and readers load the
 * expiry first, so a reader that sees a fresh expiry sees the answer it
 * belongs to (or a newer one). */
IPV_HIDDEN extern _Atomic(const struct ipv_answer *) ipv_cache;

/* The clock of the TTL, in whole seconds: CLOCK_MONOTONIC_COARSE, which
 * the vDSO reads from its data page without the TSC (a quarter of
 * CLOCK_MONOTONIC's cost) and without a system call even where the clock
 * source is not one the vDSO can read. Its tick of granularity is nothing
 * beside a TTL counted in seconds. */
static inline unsigned long ipv_now_s(void)
{
	struct timespec ts = {0, 0};
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (unsigned long)ts.tv_sec;
}

/* ipv_cached is the cached answer if it is within its TTL, else NULL (then
 * ipv_current asks). No lock, no system call, no errno. */
static inline const struct ipv_answer *ipv_cached(void)
{
	unsigned long now = ipv_now_s();
	unsigned long until = atomic_load_explicit(&ipv_hot.until, memory_order_acquire);
	const struct ipv_answer *a = atomic_load_explicit(&ipv_cache, memory_order_acquire);
	return now < until ? a : NULL;
}

/* ipv_hot_cached is the hot word of the cached answer if it is within its
 * TTL, else one whose scope is IPV_HOT_ASK: the hot path's look at the
 * answer, on the hot line alone. */
static inline uint64_t ipv_hot_cached(void)
{
	unsigned long now = ipv_now_s();
	unsigned long until = atomic_load_explicit(&ipv_hot.until, memory_order_acquire);
	uint64_t w = atomic_load_explicit(&ipv_hot.answer, memory_order_acquire);
	return now < until ? w : ipv_hot_word(IPV_HOT_ASK, 0);
}

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
 * dlsym finds nothing, so the library never calls itself). Each file that
 * wraps functions has a static resolve() looking its own up, which its
 * constructor calls. Until then each pointer holds a stub (REAL_FN) that
 * calls resolve() and then the function found, for a wrapper that runs
 * first (another library's constructor): the pointer is never NULL, so a
 * wrapper calls through it with no test. */
IPV_HIDDEN int ipv_real_connect(int fd, const struct sockaddr *sa, socklen_t len);

#define RESOLVE(var, name, fallback)                                         \
	do {                                                                 \
		void *p = dlsym(RTLD_NEXT, name);                            \
		atomic_store_explicit(&var, p ? (__typeof__(fallback) *)p : fallback, memory_order_release); \
	} while (0)

#define REAL(var) atomic_load_explicit(&var, memory_order_acquire)

/* REAL_FN(name, ret, params, args) defines real_NAME, of type NAME_fn,
 * starting at its stub first_NAME. The file defines resolve() and the
 * typedef before it. HOT_FN does the same for ipv_hot.NAME, with the stub
 * ipv_first_NAME, declared here for ipv_hot's initializer. */
#define REAL_FN(name, ret, params, args)                                 \
	static ret first_##name params;                                  \
	static _Atomic(name##_fn) real_##name = first_##name;            \
	static ret first_##name params                                   \
	{                                                                \
		resolve();                                               \
		return REAL(real_##name) args;                           \
	}
#define HOT_FN(name, ret, params, args)                                  \
	ret ipv_first_##name params                                      \
	{                                                                \
		resolve();                                               \
		return REAL(ipv_hot.name) args;                          \
	}
IPV_HIDDEN int ipv_first_socket(int domain, int type, int protocol);
IPV_HIDDEN int ipv_first_close(int fd);
IPV_HIDDEN int ipv_first_bind(int fd, const struct sockaddr *sa, socklen_t len);
IPV_HIDDEN int ipv_first_connect(int fd, const struct sockaddr *sa, socklen_t len);
IPV_HIDDEN ssize_t ipv_first_sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len);

/* The descriptor table (fdtable.c): one byte per descriptor below IPV_FDS,
 * what the library learnt of it when the program made it with socket(), so
 * that connect() and send*() need not ask the kernel. A descriptor the
 * table does not know (0: made some other way, inherited, closed since, or
 * past the table) is asked about with system calls, as every call was
 * before the table. Entries are read and written with relaxed atomics:
 * threads race on one descriptor only when the program itself does. */
#define IPV_FDS 65536
enum {
	IPV_FD_UNKNOWN = 0,
	IPV_FD_TCP = 1,   /* AF_INET or AF_INET6, SOCK_STREAM, IPPROTO_TCP */
	IPV_FD_UDP = 2,   /* AF_INET or AF_INET6, SOCK_DGRAM, IPPROTO_UDP */
	IPV_FD_OTHER = 3, /* any other IP socket (raw, ICMP, SCTP, MPTCP, ...): never touched */
	IPV_FD_CLASS = 3,
	IPV_FD_INET6 = 4,   /* an AF_INET6 socket */
	IPV_FD_DECIDED = 8, /* bound (by the library, the program or the kernel): left alone */
};

IPV_HIDDEN extern _Atomic unsigned char ipv_fds[IPV_FDS];

static inline unsigned ipv_fd_get(int fd)
{
	if (fd < 0 || fd >= IPV_FDS)
		return IPV_FD_UNKNOWN;
	return atomic_load_explicit(&ipv_fds[fd], memory_order_relaxed);
}

/* ipv_fd_raise_top makes room for fd in the ranges forgotten. */
static inline void ipv_fd_raise_top(int fd)
{
	int top = atomic_load_explicit(&ipv_hot.fds_top, memory_order_relaxed);
	while (top <= fd && !atomic_compare_exchange_weak_explicit(&ipv_hot.fds_top, &top, fd + 1, memory_order_relaxed,
								   memory_order_relaxed))
		;
}

/* ipv_fd_set records what fd is now: socket() made it. */
static inline void ipv_fd_set(int fd, unsigned e)
{
	if (fd < 0 || fd >= IPV_FDS)
		return;
	if (e != IPV_FD_UNKNOWN)
		ipv_fd_raise_top(fd);
	/* A store of 0 over 0 would still dirty the page: most descriptors
	 * of most programs never have an entry. */
	if (e != IPV_FD_UNKNOWN || atomic_load_explicit(&ipv_fds[fd], memory_order_relaxed) != IPV_FD_UNKNOWN)
		atomic_store_explicit(&ipv_fds[fd], (unsigned char)e, memory_order_relaxed);
}

/* ipv_fd_decide marks the TCP or UDP entry e of fd, which the caller read
 * from the table, as bound (e | IPV_FD_DECIDED), unless the entry changed
 * meanwhile, as ipv_fd_update does. The entry was made, and ipv_hot.fds_top
 * raised past fd, before the caller read it, and the top never comes down:
 * there is nothing to raise. */
static inline void ipv_fd_decide(int fd, unsigned e)
{
	unsigned char o = (unsigned char)e;
	atomic_compare_exchange_strong_explicit(&ipv_fds[fd], &o, (unsigned char)(e | IPV_FD_DECIDED),
						memory_order_relaxed, memory_order_relaxed);
}

/* ipv_fd_update replaces the entry old by e, unless the entry changed
 * meanwhile (another thread closed the descriptor, or made it again): a
 * late update must not bring back an entry that close() removed. */
static inline void ipv_fd_update(int fd, unsigned old, unsigned e)
{
	if (fd < 0 || fd >= IPV_FDS)
		return;
	ipv_fd_raise_top(fd);
	unsigned char o = (unsigned char)old;
	atomic_compare_exchange_strong_explicit(&ipv_fds[fd], &o, (unsigned char)e, memory_order_relaxed,
						memory_order_relaxed);
}

static inline void ipv_fd_forget(int fd)
{
	ipv_fd_set(fd, IPV_FD_UNKNOWN);
}

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

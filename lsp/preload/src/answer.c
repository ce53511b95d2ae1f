/* The per-process answer: asked once, cached for the TTL the daemon gave,
 * shared by threads and inherited by fork() children.
 *
 * Hot path (ipv_cached and ipv_hot_cached, ipvirt.h): two atomic loads
 * and a coarse vDSO clock read, no lock, no syscall, no allocation, so it
 * is async-signal-safe. Published answers are immutable
 * and interned (a process sees a handful of distinct answers in its life),
 * so a reader holding an old pointer never sees it change under it, and
 * nothing is freed. The expiry lives beside the pointer; the writer stores
 * the answer before the expiry and readers load them in the other order, so
 * a reader that sees a fresh expiry sees the answer it belongs to.
 *
 * Slow path (no answer yet, or expired): one thread asks the daemon under a
 * mutex, the others wait for it and take its answer. */
#define _GNU_SOURCE
#include "ipvirt.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/ipvirt/ipvirt.sock"
#define DEFAULT_TIMEOUT_MS 200
/* How long a caller waits once the daemon said PENDING (it is acquiring a
 * DHCP lease): the daemon's own lease_wait is 20 s by default. */
#define DEFAULT_PENDING_MS 30000
/* A cap on the TTL, so an absurd value cannot pin an answer for years. */
#define MAX_TTL 86400
/* After a failed query the fallback is kept this long, doubling up to the
 * maximum, so a program does not pay the timeout on every call while the
 * daemon is down. */
#define BACKOFF_MIN 5
#define BACKOFF_MAX 60

extern atomic_int ipv_query_fd;

IPV_HIDDEN _Atomic(const struct ipv_answer *) ipv_cache;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
/* Set while this thread is inside a query: a signal handler that calls
 * connect() then must not wait for the mutex its own thread holds. */
static __thread int t_querying;

/* Settings and state below are guarded by g_mu. */
static int g_configured;
static char g_socket[4096];
static int g_timeout_ms, g_pending_ms, g_fail_closed, g_quiet;
static unsigned long g_backoff;
static int g_scope_known, g_scope_loopback; /* of the last VIP this process saw */
static atomic_int g_said;                    /* the one stderr line is out */

static struct ipv_answer g_slots[32];
static unsigned g_nslots;
static const struct ipv_answer g_passthrough = {.kind = IPV_MIP};

uint64_t ipv_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int loopback(in_addr_t a)
{
	return (ntohl(a) >> 24) == 127;
}

/* configure reads the environment once, at the first query rather than in
 * the constructor. secure_getenv: a setuid program is not steered by the
 * invoking user's variables. */
/* env_ms reads a decimal number of milliseconds in [lo, hi], or def. */
static int env_ms(const char *name, int def, long lo, long hi)
{
	const char *t = secure_getenv(name);
	if (!t || !*t)
		return def;
	long v = 0;
	const char *c = t;
	while (*c >= '0' && *c <= '9' && v <= hi)
		v = v * 10 + (*c++ - '0');
	return (*c == 0 && v >= lo && v <= hi) ? (int)v : def;
}

static void configure(void)
{
	if (g_configured)
		return;
	g_configured = 1;
	const char *s = secure_getenv("IPVIRT_SOCKET");
	if (!s || !*s)
		s = DEFAULT_SOCKET;
	size_t n = strlen(s);
	if (n >= sizeof g_socket)
		n = sizeof g_socket - 1; /* the query reports it as too long */
	memcpy(g_socket, s, n);
	g_socket[n] = 0;

	g_timeout_ms = env_ms("IPVIRT_TIMEOUT_MS", DEFAULT_TIMEOUT_MS, 1, 60000);
	g_pending_ms = env_ms("IPVIRT_PENDING_MS", DEFAULT_PENDING_MS, 0, 600000);
	const char *f = secure_getenv("IPVIRT_FAIL");
	g_fail_closed = f && strcmp(f, "closed") == 0;
	const char *q = secure_getenv("IPVIRT_QUIET");
	g_quiet = q && *q && strcmp(q, "0") != 0;
}

/* What fd 2 was when the library was loaded. A program may close its
 * standard error and open a data file that takes descriptor 2; the
 * library's line then goes nowhere rather than into the program's data. */
static dev_t g_stderr_dev;
static ino_t g_stderr_ino;
static int g_stderr_ok;

void ipv_note_stderr(void)
{
	struct stat st;
	int saved = errno;
	if (fstat(STDERR_FILENO, &st) == 0) {
		g_stderr_dev = st.st_dev;
		g_stderr_ino = st.st_ino;
		g_stderr_ok = 1;
	}
	errno = saved;
}

/* stderr_is_original reports whether fd 2 is still the file it was at load. */
static int stderr_is_original(void)
{
	struct stat st;
	return g_stderr_ok && fstat(STDERR_FILENO, &st) == 0 && st.st_dev == g_stderr_dev && st.st_ino == g_stderr_ino;
}

/* write_stderr writes without raising SIGPIPE when stderr is a closed pipe:
 * SIGPIPE is blocked around the write and a SIGPIPE the write caused is
 * consumed before the old mask returns. */
static void write_stderr(const char *s, size_t n)
{
	sigset_t pipe_set, old, pending;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigemptyset(&pending);
	sigpending(&pending);
	int was_pending = sigismember(&pending, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	ssize_t r;
	do
		r = write(STDERR_FILENO, s, n);
	while (r < 0 && errno == EINTR);
	if (r < 0 && errno == EPIPE && !was_pending) {
		struct timespec zero = {0, 0};
		sigtimedwait(&pipe_set, NULL, &zero);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* say writes the process's one ipvirt line, unless IPVIRT_QUIET is set. */
static void say(const char *line, size_t n)
{
	if (g_quiet || atomic_exchange(&g_said, 1))
		return;
	int saved = errno;
	if (stderr_is_original())
		write_stderr(line, n);
	errno = saved;
}

/* intern returns the published copy of a: an existing equal one, or a new
 * slot. Slots are never reused, so readers may keep any pointer forever. */
static const struct ipv_answer *intern(const struct ipv_answer *a)
{
	for (unsigned i = 0; i < g_nslots; i++)
		if (memcmp(&g_slots[i], a, sizeof *a) == 0)
			return &g_slots[i];
	if (g_nslots < sizeof g_slots / sizeof g_slots[0]) {
		g_slots[g_nslots] = *a;
		return &g_slots[g_nslots++];
	}
	/* More distinct answers than slots in one process life: allocate, and
	 * never free (a reader may still hold it). */
	struct ipv_answer *p = malloc(sizeof *p);
	if (!p)
		return &g_passthrough;
	*p = *a;
	return p;
}

static void atfork_child(void)
{
	/* The child has one thread: whoever held the mutex in the parent is
	 * not here to release it, and a query in flight has no one to finish
	 * it. The cached answer itself is inherited and stays valid. */
	pthread_mutex_init(&g_mu, NULL);
	int fd = atomic_exchange(&ipv_query_fd, -1);
	if (fd >= 0)
		close(fd);
	t_querying = 0;
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

/* ask queries the daemon and publishes the outcome. Called with g_mu held. */
static const struct ipv_answer *ask(void)
{
	struct ipv_reply r;
	char err[200] = "", line[512];
	struct ipv_buf msg = {line, 0, sizeof line};
	struct ipv_answer n = {0};
	unsigned long ttl;

	configure();
	t_querying = 1;
	int rc = ipv_query(g_socket, g_timeout_ms, g_pending_ms, &r, err, sizeof err);
	t_querying = 0;
	if (rc == 0) {
		g_backoff = 0;
		n.kind = r.kind;
		n.vip = r.vip;
		n.mip = r.mip;
		if (r.kind == IPV_VIP) {
			n.loopback_scope = loopback(r.vip);
			g_scope_known = 1;
			g_scope_loopback = n.loopback_scope;
		} else if (r.kind == IPV_DENIED) {
			/* No VIP to tell the topology; the machine IP does. */
			n.loopback_scope = r.mip ? loopback(r.mip) : (g_scope_known && g_scope_loopback);
			ipv_puts(&msg, "ipvirt: ipvirtd refuses this process the machine IP (");
			ipv_puts(&msg, r.reason[0] ? r.reason : "denied");
			ipv_puts(&msg, "); such calls fail with EACCES\n");
			say(line, msg.len);
		}
		ttl = r.ttl > MAX_TTL ? MAX_TTL : r.ttl;
	} else {
		g_backoff = g_backoff ? g_backoff * 2 : BACKOFF_MIN;
		if (g_backoff > BACKOFF_MAX)
			g_backoff = BACKOFF_MAX;
		ttl = g_backoff;
		n.kind = g_fail_closed ? IPV_DENIED : IPV_MIP;
		n.loopback_scope = g_scope_known && g_scope_loopback;
		ipv_puts(&msg, "ipvirt: ipvirtd at ");
		ipv_puts(&msg, g_socket);
		ipv_puts(&msg, " unusable (");
		ipv_puts(&msg, err);
		ipv_puts(&msg, g_fail_closed ? "); refusing calls that would use the machine IP (IPVIRT_FAIL=closed)"
					     : "); using the machine IP");
		ipv_puts(&msg, ", next try in ");
		ipv_putu(&msg, ttl);
		ipv_puts(&msg, " s\n");
		say(line, msg.len);
	}
	const struct ipv_answer *p = intern(&n);
	int scope = n.kind == IPV_VIP ? n.loopback_scope : n.kind == IPV_MIP ? IPV_HOT_NEVER : IPV_HOT_ASK;
	unsigned long now = ipv_now_s();
	atomic_store_explicit(&ipv_cache, p, memory_order_release);
	atomic_store_explicit(&ipv_hot.answer, ipv_hot_word(scope, n.vip), memory_order_release);
	atomic_store_explicit(&ipv_hot.until, now + ttl, memory_order_release);
	return p;
}

static const struct ipv_answer *refresh(void)
{
	if (t_querying)
		return &g_passthrough;
	int cancel;
	/* poll() in the query is a cancellation point; a thread cancelled
	 * there would leave the mutex locked for everyone. */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
	pthread_mutex_lock(&g_mu);
	pthread_once(&g_atfork_once, register_atfork);
	const struct ipv_answer *a = ipv_cached();
	if (!a)
		a = ask(); /* else another thread asked while this one waited */
	pthread_mutex_unlock(&g_mu);
	pthread_setcancelstate(cancel, NULL);
	return a;
}

const struct ipv_answer *ipv_current(void)
{
	const struct ipv_answer *a = ipv_cached();
	return a ? a : refresh();
}

/* String building for messages: no stdio, no allocation. */

void ipv_puts(struct ipv_buf *b, const char *s)
{
	while (*s && b->len + 1 < b->cap)
		b->p[b->len++] = *s++;
	if (b->cap)
		b->p[b->len] = 0;
}

void ipv_putu(struct ipv_buf *b, unsigned long v)
{
	char d[24];
	int i = sizeof d - 1;
	d[i] = 0;
	do
		d[--i] = (char)('0' + v % 10);
	while ((v /= 10) && i > 0);
	ipv_puts(b, d + i);
}

void ipv_putip(struct ipv_buf *b, in_addr_t a)
{
	uint32_t h = ntohl(a);
	for (int i = 3; i >= 0; i--) {
		ipv_putu(b, (h >> (i * 8)) & 0xff);
		if (i)
			ipv_puts(b, ".");
	}
}

void ipv_puterr(struct ipv_buf *b, int err)
{
	/* strerror() is neither async-signal-safe nor free of locale work;
	 * the errors a query meets are few. */
	static const struct {
		int e;
		const char *s;
	} names[] = {
		{ENOENT, "no such file"},       {ECONNREFUSED, "connection refused"},
		{EACCES, "permission denied"},  {EPERM, "operation not permitted"},
		{ETIMEDOUT, "timed out"},       {ECONNRESET, "connection reset"},
		{EPIPE, "broken pipe"},         {ENOTDIR, "not a directory"},
		{EMFILE, "too many open files"}, {ENFILE, "too many open files in system"},
		{EAFNOSUPPORT, "address family not supported"}, {ENOMEM, "out of memory"},
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (names[i].e == err) {
			ipv_puts(b, names[i].s);
			return;
		}
	ipv_puts(b, "errno ");
	ipv_putu(b, (unsigned long)err);
}

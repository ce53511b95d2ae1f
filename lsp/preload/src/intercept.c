/* The exported wrappers: bind(), connect(), sendto(), sendmsg(), sendmmsg().
 *
 * Each looks at its address argument first, which costs nothing: anything
 * but IPv4, or IPv6 carrying a v4-mapped address, goes straight to libc
 * without a syscall or a question to the daemon. Then the socket must be
 * TCP or UDP, which the descriptor table (fdtable.c) knows for sockets the
 * program made with socket(), and only then is the cached answer
 * consulted. What is left is the bind the rule asks for, and that call's
 * own result tells whether the socket was bound already (EINVAL), so the
 * hot path is the bind alone (with IP_BIND_ADDRESS_NO_PORT for TCP), and
 * a socket bound once needs nothing more. errno is saved on entry and
 * restored before the real call, so the library's own work never shows
 * in it.
 *
 * The commonest calls take a short way (fast_prepare and the wrappers
 * that jump to it): an AF_INET TCP or UDP socket's connect() or first
 * addressed send to an AF_INET destination costs, beyond the floor's
 * setsockopt and bind, a byte of the table, a coarse clock read and two
 * loads for the cached answer, and a compare-and-swap; a send on a socket
 * bound already costs the byte. Everything else goes the general way,
 * prepare(), which the short one hands over to whenever it is not sure. */
#define _GNU_SOURCE
#include "ipvirt.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef int (*sendmmsg_fn)(int, struct mmsghdr *, unsigned int, int);

/* Fallbacks when dlsym finds no next definition: the raw system calls. */
static int sys_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	return (int)syscall(SYS_bind, fd, sa, len);
}
static int sys_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return (int)syscall(SYS_connect, fd, sa, len);
}
static ssize_t sys_sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len)
{
	return syscall(SYS_sendto, fd, buf, n, flags, sa, len);
}
static ssize_t sys_sendmsg(int fd, const struct msghdr *m, int flags)
{
	return syscall(SYS_sendmsg, fd, m, flags);
}
static int sys_sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags)
{
	return (int)syscall(SYS_sendmmsg, fd, v, n, flags);
}

static void resolve(void);
HOT_FN(bind, int, (int fd, const struct sockaddr *sa, socklen_t len), (fd, sa, len))
HOT_FN(connect, int, (int fd, const struct sockaddr *sa, socklen_t len), (fd, sa, len))
HOT_FN(sendto, ssize_t, (int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len),
       (fd, buf, n, flags, sa, len))
REAL_FN(sendmsg, ssize_t, (int fd, const struct msghdr *m, int flags), (fd, m, flags))
REAL_FN(sendmmsg, int, (int fd, struct mmsghdr *v, unsigned int n, int flags), (fd, v, n, flags))

IPV_HIDDEN struct ipv_hot ipv_hot = {
	.socket = ipv_first_socket,
	.close = ipv_first_close,
	.bind = ipv_first_bind,
	.connect = ipv_first_connect,
	.sendto = ipv_first_sendto,
};

/* resolve looks the real functions up. The constructor does it, and so does
 * any wrapper that runs before it (another library's constructor), through
 * the stubs. It is the only work done at load time. */
static void resolve(void)
{
	int saved = errno;
	RESOLVE(ipv_hot.bind, "bind", sys_bind);
	RESOLVE(ipv_hot.connect, "connect", sys_connect);
	RESOLVE(ipv_hot.sendto, "sendto", sys_sendto);
	RESOLVE(real_sendmsg, "sendmsg", sys_sendmsg);
	RESOLVE(real_sendmmsg, "sendmmsg", sys_sendmmsg);
	errno = saved;
}

__attribute__((constructor)) static void ipvirt_init(void)
{
	resolve();
	ipv_note_stderr();
}

int ipv_real_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return REAL(ipv_hot.connect)(fd, sa, len);
}

static int loopback(in_addr_t a)
{
	return (ntohl(a) >> 24) == 127;
}

/* v4_of extracts the IPv4 address of sa: AF_INET, or AF_INET6 holding a
 * v4-mapped address. *any6 is set for the IPv6 wildcard (::), which on a
 * dual-stack socket covers IPv4 too. Returns 0 for anything else. */
static int v4_of(const struct sockaddr *sa, socklen_t len, in_addr_t *out, int *any6)
{
	*any6 = 0;
	if (!sa || len < (socklen_t)sizeof(sa_family_t))
		return 0;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		*out = ((const struct sockaddr_in *)sa)->sin_addr.s_addr;
		return 1;
	}
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a)) {
			memcpy(out, &a->s6_addr[12], 4);
			return 1;
		}
		if (IN6_IS_ADDR_UNSPECIFIED(a)) {
			*out = 0;
			*any6 = 1;
			return 1;
		}
	}
	return 0;
}

static int v6only(int fd)
{
	int on = 1;
	socklen_t l = sizeof on;
	return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &l) < 0 || on;
}

/* unbound reports whether the kernel shows fd's local address as the
 * wildcard with no port; *fam is set to the socket's family. A socket
 * whose address cannot be read counts as bound: it is left alone. */
static int unbound(int fd, int *fam)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	*fam = AF_UNSPEC;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return 0;
	*fam = ss.ss_family;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)&ss;
		return s->sin_addr.s_addr == 0 && s->sin_port == 0;
	}
	if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&ss;
		return IN6_IS_ADDR_UNSPECIFIED(&s->sin6_addr) && s->sin6_port == 0;
	}
	return 0;
}

/* learn asks the kernel about a descriptor the table does not know (one
 * the program did not make with socket(), or one past the table): its
 * type, protocol and local address, the three calls every call cost before
 * the table, and records the answer. Returns the entry, IPV_FD_OTHER for
 * anything the rules leave alone. */
static unsigned learn(int fd)
{
	int type, proto, fam;
	socklen_t l = sizeof type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0)
		return IPV_FD_OTHER; /* not a socket, or not open: nothing to record */
	l = sizeof proto;
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) < 0)
		return IPV_FD_OTHER;
	unsigned e;
	if (type == SOCK_STREAM && proto == IPPROTO_TCP)
		e = IPV_FD_TCP;
	else if (type == SOCK_DGRAM && proto == IPPROTO_UDP)
		e = IPV_FD_UDP;
	else
		e = IPV_FD_OTHER;
	if (e != IPV_FD_OTHER) {
		if (!unbound(fd, &fam))
			e |= IPV_FD_DECIDED;
		if (fam == AF_INET6)
			e |= IPV_FD_INET6;
		else if (fam != AF_INET)
			return IPV_FD_OTHER;
	}
	ipv_fd_update(fd, IPV_FD_UNKNOWN, e);
	return e;
}

/* entry is fd's table entry, asking the kernel when the table has none. */
static unsigned entry(int fd)
{
	unsigned e = ipv_fd_get(fd);
	return e != IPV_FD_UNKNOWN ? e : learn(fd);
}

/* socktype is the socket type of a TCP or UDP entry, else 0. */
static int socktype(unsigned e)
{
	switch (e & IPV_FD_CLASS) {
	case IPV_FD_TCP:
		return SOCK_STREAM;
	case IPV_FD_UDP:
		return SOCK_DGRAM;
	}
	return 0;
}

/* decided marks a TCP or UDP entry e of fd as bound: nothing more to do. */
static void decided(int fd, unsigned e)
{
	if (socktype(e) && !(e & IPV_FD_DECIDED))
		ipv_fd_update(fd, e, e | IPV_FD_DECIDED);
}

/* bind_vip binds a socket of family fam that the rules apply to to the
 * VIP, port 0. TCP asks for IP_BIND_ADDRESS_NO_PORT, so the port is picked
 * at connect() from the full 4-tuple space instead of being reserved now
 * (a busy client would otherwise run out of ephemeral ports).
 *
 * Whether the socket is bound already is not asked first: the bind says
 * so, failing with EINVAL, and such a socket is left alone, as the
 * program (or the kernel, at an earlier call) bound it. The one bind that
 * leaves no port behind for that test, the program's own with
 * IP_BIND_ADDRESS_NO_PORT and port 0, went through bind() below, which
 * marked the socket decided. On AF_INET6, EINVAL also means IPV6_V6ONLY
 * (the call then fails anyway: a v6-only socket cannot reach IPv4), which
 * the program may still turn off: that socket is not marked.
 * Returns 0 to go on with the real call, or -1 with bind's errno. */
static int bind_vip(int fd, int fam, int type, unsigned e, in_addr_t vip)
{
	int r;
	if (type == SOCK_STREAM) {
		int one = 1;
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
	}
	if (fam == AF_INET) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = vip};
		r = REAL(ipv_hot.bind)(fd, (struct sockaddr *)&a, sizeof a);
	} else {
		struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
		a6.sin6_addr.s6_addr[10] = 0xff;
		a6.sin6_addr.s6_addr[11] = 0xff;
		memcpy(&a6.sin6_addr.s6_addr[12], &vip, 4);
		r = REAL(ipv_hot.bind)(fd, (struct sockaddr *)&a6, sizeof a6);
	}
	if (r < 0 && errno != EINVAL)
		return -1;
	if (r < 0 && fam == AF_INET6 && v6only(fd))
		return 0;
	decided(fd, e);
	return 0;
}

/* refuse applies a DENIED answer: an unbound socket that can reach IPv4
 * fails with EACCES. Not the hot path, so the kernel is asked, as before
 * the table: a socket bound already (by the kernel at an earlier call to a
 * destination out of scope, say) is left alone. */
static int refuse(int fd)
{
	int fam;
	if (!unbound(fd, &fam) || (fam == AF_INET6 && v6only(fd)))
		return 0;
	errno = EACCES;
	return -1;
}

/* prepare applies the outgoing rule before connect() or an addressed send
 * to the IPv4 destination dst: an unbound TCP/UDP socket is bound to the
 * VIP when the destination is in the VIP's scope. Returns 0 to go on with
 * the real call, or -1 with errno (EACCES when denied, bind's errno). */
static int prepare(int fd, int dst_family, in_addr_t dst)
{
	unsigned e = entry(fd);
	int type = socktype(e);
	if (!type || (e & IPV_FD_DECIDED))
		return 0;
	int fam = e & IPV_FD_INET6 ? AF_INET6 : AF_INET;
	if (fam == AF_INET && dst_family != AF_INET)
		return 0;
	/* TCP6 refuses AF_INET destinations; UDP6 takes them. */
	if (fam == AF_INET6 && dst_family == AF_INET && type != SOCK_DGRAM)
		return 0;
	/* connect() to 0.0.0.0 reaches this host over loopback. */
	int dst_loop = dst == 0 || loopback(dst);
	const struct ipv_answer *a = ipv_current();
	if (a->kind == IPV_MIP || dst_loop != a->loopback_scope)
		return 0;
	if (a->kind == IPV_DENIED)
		return refuse(fd);
	return bind_vip(fd, fam, type, e, a->vip);
}

/* The hot path: connect() or an addressed send from an AF_INET TCP or UDP
 * socket the table knows, to an AF_INET destination. It is prepare()
 * unrolled for that case, with everything else left to prepare(): what it
 * adds to the call it wraps is a byte of the table, a coarse clock read,
 * two loads of the cached answer and, once per socket, the bind and a
 * compare-and-swap of the byte.
 *
 * fast_pass says whether the entry lets the call go straight to libc, as
 * prepare() would: a socket bound already (DECIDED), or one the rules
 * never touch (OTHER). */
static inline int fast_pass(unsigned e)
{
	return e != IPV_FD_UNKNOWN && ((e & IPV_FD_DECIDED) || (e & IPV_FD_CLASS) == IPV_FD_OTHER);
}

/* fast_v4 says whether sa is an AF_INET address prepare() would look at. */
static inline int fast_v4(const struct sockaddr *sa, socklen_t len)
{
	return sa && len >= (socklen_t)sizeof(struct sockaddr_in) && sa->sa_family == AF_INET;
}

enum { FAST_SLOW = 1 }; /* fast_prepare: not the hot case, ask prepare() */

/* fast_prepare is prepare() for an AF_INET socket whose entry e is
 * IPV_FD_TCP or IPV_FD_UDP (unbound as far as the table knows) and the
 * AF_INET destination sa, on a cached answer: 0 to go on with the real
 * call, -1 with bind's errno, or FAST_SLOW for anything but a VIP or MIP
 * answer within its TTL (no answer yet, expired, DENIED), which prepare()
 * then handles from the start. errno is as on entry whenever it returns 0,
 * as prepare()'s callers leave it. */
static inline __attribute__((always_inline)) int fast_prepare(int fd, unsigned e, const struct sockaddr *sa)
{
	uint64_t w = ipv_hot_cached();
	int scope = ipv_hot_scope(w);
	/* connect() to 0.0.0.0 reaches this host over loopback. */
	in_addr_t dst = ((const struct sockaddr_in *)sa)->sin_addr.s_addr;
	int dst_loop = dst == 0 || loopback(dst);
	/* A VIP answer whose scope this is binds; a MIP answer, or a VIP
	 * answer for the other scope, leaves the call alone; DENIED, or no
	 * answer within its TTL, asks prepare(). */
	if (scope != dst_loop)
		return scope == IPV_HOT_ASK ? FAST_SLOW : 0;
	int *err = &errno, saved = *err;
	if (e == IPV_FD_TCP) {
		static const int one = 1;
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
	}
	struct sockaddr_in b = {.sin_family = AF_INET, .sin_addr.s_addr = (in_addr_t)w};
	if (REAL(ipv_hot.bind)(fd, (const struct sockaddr *)&b, sizeof b) < 0 && *err != EINVAL)
		return -1;
	/* Bound now, by this bind or (EINVAL) before it: see bind_vip. */
	ipv_fd_decide(fd, e);
	*err = saved;
	return 0;
}

/* passed notes a call the rules did not look at (an IPv6 destination, an
 * IP_PKTINFO send, no address): once it succeeded, the kernel has bound
 * the socket, which later calls then leave alone without looking at the
 * answer, as they did when they asked the kernel. */
static void passed(int fd, int ok)
{
	if (ok)
		decided(fd, ipv_fd_get(fd));
}

/* connect_slow is connect() for all but the hot case. */
static __attribute__((noinline)) int connect_slow(connect_fn real, int fd, const struct sockaddr *sa, socklen_t len)
{
	int saved = errno, any6;
	in_addr_t dst;
	if (!v4_of(sa, len, &dst, &any6) || any6) {
		int r = real(fd, sa, len);
		/* AF_UNSPEC dissolves an association, and unbinds what the
		 * kernel bound for it: ask the kernel next time. */
		if (sa && len >= (socklen_t)sizeof(sa_family_t) && sa->sa_family == AF_UNSPEC)
			ipv_fd_forget(fd);
		else
			passed(fd, r == 0);
		return r;
	}
	if (prepare(fd, sa->sa_family, dst) < 0)
		return -1;
	errno = saved;
	return real(fd, sa, len);
}

/* connect_hot is connect() on an AF_INET socket whose entry e is
 * IPV_FD_TCP or IPV_FD_UDP, to an AF_INET address. */
IPV_HOT static __attribute__((noinline)) int connect_hot(connect_fn real, int fd, const struct sockaddr *sa,
							 socklen_t len, unsigned e)
{
	int r = fast_prepare(fd, e, sa);
	if (__builtin_expect(r == 0, 1))
		return real(fd, sa, len);
	if (r < 0)
		return -1;
	return connect_slow(real, fd, sa, len);
}

/* The wrappers themselves only pick the way, and jump: no frame, no
 * register saved, for a call the rules leave alone. */
IPV_HOT IPV_EXPORT int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	connect_fn real = REAL(ipv_hot.connect);
	if (__builtin_expect(fast_v4(sa, len), 1)) {
		unsigned e = ipv_fd_get(fd);
		if (__builtin_expect(e == IPV_FD_TCP || e == IPV_FD_UDP, 1))
			return connect_hot(real, fd, sa, len, e);
		if (fast_pass(e))
			return real(fd, sa, len);
	}
	return connect_slow(real, fd, sa, len);
}

/* sendto_slow is sendto() for all but the hot case. */
static __attribute__((noinline)) ssize_t sendto_slow(sendto_fn real, int fd, const void *buf, size_t n, int flags,
						     const struct sockaddr *sa, socklen_t len)
{
	int saved = errno, any6;
	in_addr_t dst;
	if (!v4_of(sa, len, &dst, &any6) || any6) {
		ssize_t r = real(fd, buf, n, flags, sa, len);
		passed(fd, r >= 0);
		return r;
	}
	if (prepare(fd, sa->sa_family, dst) < 0)
		return -1;
	errno = saved;
	return real(fd, buf, n, flags, sa, len);
}

/* sendto_prep is sendto() on a socket the rules may have to bind. It
 * takes sendto's own arguments, so that sendto() jumps to it. */
IPV_HOT static __attribute__((noinline)) ssize_t sendto_prep(int fd, const void *buf, size_t n, int flags,
							     const struct sockaddr *sa, socklen_t len)
{
	sendto_fn real = REAL(ipv_hot.sendto);
	unsigned e = ipv_fd_get(fd);
	if (__builtin_expect(fast_v4(sa, len) && (e == IPV_FD_TCP || e == IPV_FD_UDP), 1)) {
		int r = fast_prepare(fd, e, sa);
		if (__builtin_expect(r == 0, 1))
			return real(fd, buf, n, flags, sa, len);
		if (r < 0)
			return -1;
	}
	return sendto_slow(real, fd, buf, n, flags, sa, len);
}

/* sendto on a socket bound already (the first send bound it) costs a byte
 * of the table; an AF_INET UDP socket's first addressed send is the hot
 * case of connect(). */
IPV_HOT IPV_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa,
				  socklen_t len)
{
	sendto_fn real = REAL(ipv_hot.sendto);
	if (__builtin_expect(fast_pass(ipv_fd_get(fd)), 1))
		return real(fd, buf, n, flags, sa, len);
	return sendto_prep(fd, buf, n, flags, sa, len);
}

/* chooses_source reports whether m carries IP_PKTINFO / IPV6_PKTINFO: the
 * program picks the source address itself, so it is left alone. */
static int chooses_source(const struct msghdr *m)
{
	if (!m->msg_control || m->msg_controllen < sizeof(struct cmsghdr))
		return 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)m); c; c = CMSG_NXTHDR((struct msghdr *)m, c))
		if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) ||
		    (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO))
			return 1;
	return 0;
}

/* addressed returns m's IPv4 destination, if it has one the rules apply to. */
static int addressed(const struct msghdr *m, in_addr_t *dst)
{
	int any6;
	return m && v4_of(m->msg_name, m->msg_namelen, dst, &any6) && !any6 && !chooses_source(m);
}

/* sendmsg_slow is sendmsg() on a socket the rules may have to bind. */
static __attribute__((noinline)) ssize_t sendmsg_slow(sendmsg_fn real, int fd, const struct msghdr *m, int flags)
{
	int saved = errno;
	in_addr_t dst;
	if (!addressed(m, &dst)) {
		ssize_t r = real(fd, m, flags);
		passed(fd, r >= 0);
		return r;
	}
	if (prepare(fd, ((const struct sockaddr *)m->msg_name)->sa_family, dst) < 0)
		return -1;
	errno = saved;
	return real(fd, m, flags);
}

IPV_HOT IPV_EXPORT ssize_t sendmsg(int fd, const struct msghdr *m, int flags)
{
	sendmsg_fn real = REAL(real_sendmsg);
	if (__builtin_expect(fast_pass(ipv_fd_get(fd)), 1))
		return real(fd, m, flags);
	return sendmsg_slow(real, fd, m, flags);
}

/* sendmmsg binds once, by the first addressed message: a socket has one
 * source address for all of them. */
static __attribute__((noinline)) int sendmmsg_slow(sendmmsg_fn real, int fd, struct mmsghdr *v, unsigned int n,
						   int flags)
{
	int saved = errno, looked = 0;
	in_addr_t dst;
	for (unsigned int i = 0; v && i < n; i++) {
		if (!v[i].msg_hdr.msg_name)
			continue;
		if (addressed(&v[i].msg_hdr, &dst)) {
			if (prepare(fd, ((const struct sockaddr *)v[i].msg_hdr.msg_name)->sa_family, dst) < 0)
				return -1;
			looked = 1;
		}
		break;
	}
	errno = saved;
	int r = real(fd, v, n, flags);
	if (!looked)
		passed(fd, r > 0);
	return r;
}

IPV_HOT IPV_EXPORT int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags)
{
	sendmmsg_fn real = REAL(real_sendmmsg);
	if (__builtin_expect(fast_pass(ipv_fd_get(fd)), 1))
		return real(fd, v, n, flags);
	return sendmmsg_slow(real, fd, v, n, flags);
}

/* wildcard reports whether sa is 0.0.0.0 or [::] with port 0: a bind that
 * may leave the socket as unbound as it was (IP_BIND_ADDRESS_NO_PORT). */
static int wildcard(const struct sockaddr *sa, socklen_t len)
{
	in_addr_t addr;
	int any6;
	if (!v4_of(sa, len, &addr, &any6) || addr != 0)
		return 0;
	if (sa->sa_family == AF_INET)
		return ((const struct sockaddr_in *)sa)->sin_port == 0;
	return ((const struct sockaddr_in6 *)sa)->sin6_port == 0;
}

/* program_bind makes the program's own bind, and records a socket it
 * bound as decided: the rules never rebind it. A bind to the wildcard
 * and port 0 is left for the next call to find out. */
static int program_bind(bind_fn real, int fd, const struct sockaddr *sa, socklen_t len)
{
	int r = real(fd, sa, len);
	if (r == 0 && !wildcard(sa, len))
		decided(fd, ipv_fd_get(fd));
	return r;
}

/* bind_as_vip makes the bind with the VIP in place of sa's address. */
static int bind_as_vip(bind_fn real, int fd, const struct sockaddr *sa, in_addr_t vip)
{
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in c;
		memcpy(&c, sa, sizeof c);
		c.sin_addr.s_addr = vip;
		return real(fd, (struct sockaddr *)&c, sizeof c);
	}
	struct sockaddr_in6 c6;
	memcpy(&c6, sa, sizeof c6);
	memset(c6.sin6_addr.s6_addr, 0, 10);
	c6.sin6_addr.s6_addr[10] = 0xff;
	c6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&c6.sin6_addr.s6_addr[12], &vip, 4);
	c6.sin6_scope_id = 0;
	return real(fd, (struct sockaddr *)&c6, sizeof c6);
}

/* bind() to the wildcard or to the machine IP becomes a bind to the VIP on
 * the same port; any other address is the program's choice and kept. An
 * AF_INET6 address costs one question (IPV6_V6ONLY) before the daemon's
 * answer is looked at: a v6-only server never asks the daemon. */
IPV_EXPORT int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	bind_fn real = REAL(ipv_hot.bind);
	int saved = errno, any6;
	in_addr_t addr;
	if (!v4_of(sa, len, &addr, &any6))
		return program_bind(real, fd, sa, len);
	unsigned e = entry(fd);
	if (!socktype(e) || (sa->sa_family == AF_INET6 && v6only(fd))) {
		errno = saved;
		return program_bind(real, fd, sa, len);
	}
	const struct ipv_answer *a = ipv_current();
	if (a->kind == IPV_MIP || (addr != 0 && addr != a->mip)) {
		errno = saved;
		return program_bind(real, fd, sa, len);
	}
	if (a->kind == IPV_DENIED) {
		errno = EACCES;
		return -1;
	}
	errno = saved;
	int r = bind_as_vip(real, fd, sa, a->vip);
	if (r == 0)
		decided(fd, e);
	return r;
}

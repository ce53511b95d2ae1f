/* The exported wrappers: bind(), connect(), sendto(), sendmsg(), sendmmsg().
 *
 * Each looks at its address argument first, which costs nothing: anything
 * but IPv4, or IPv6 carrying a v4-mapped address, goes straight to libc
 * without a syscall or a question to the daemon. Then the socket must be
 * TCP or UDP (two getsockopt calls), and only then is the cached answer
 * consulted. errno is saved on entry and restored before the real call, so
 * the library's own work never shows in it. */
#define _GNU_SOURCE
#include "ipvirt.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define IPV_EXPORT __attribute__((visibility("default")))

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
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

static _Atomic(bind_fn) real_bind;
static _Atomic(connect_fn) real_connect;
static _Atomic(sendto_fn) real_sendto;
static _Atomic(sendmsg_fn) real_sendmsg;
static _Atomic(sendmmsg_fn) real_sendmmsg;

#define RESOLVE(var, name, fallback)                                         \
	do {                                                                 \
		void *p = dlsym(RTLD_NEXT, name);                            \
		atomic_store_explicit(&var, p ? (__typeof__(fallback) *)p : fallback, memory_order_release); \
	} while (0)

/* resolve looks the real functions up. The constructor does it, and so does
 * any wrapper that runs before it (another library's constructor). It is
 * the only work done at load time. */
static void resolve(void)
{
	int saved = errno;
	RESOLVE(real_bind, "bind", sys_bind);
	RESOLVE(real_connect, "connect", sys_connect);
	RESOLVE(real_sendto, "sendto", sys_sendto);
	RESOLVE(real_sendmsg, "sendmsg", sys_sendmsg);
	RESOLVE(real_sendmmsg, "sendmmsg", sys_sendmmsg);
	errno = saved;
}

__attribute__((constructor)) static void ipvirt_init(void)
{
	resolve();
	ipv_note_stderr();
}

#define REAL(var)                                                             \
	({                                                                    \
		__typeof__(atomic_load(&var)) f_ = atomic_load_explicit(&var, memory_order_acquire); \
		if (!f_) {                                                    \
			resolve();                                            \
			f_ = atomic_load_explicit(&var, memory_order_acquire); \
		}                                                             \
		f_;                                                           \
	})

int ipv_real_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return REAL(real_connect)(fd, sa, len);
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

/* tcp_or_udp reports the socket's type when it is a TCP or UDP socket, else
 * 0: raw, ICMP, SCTP, MPTCP and non-sockets pass through. */
static int tcp_or_udp(int fd)
{
	int type, proto;
	socklen_t l = sizeof type;
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0)
		return 0;
	l = sizeof proto;
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) < 0)
		return 0;
	if ((type == SOCK_STREAM && proto == IPPROTO_TCP) || (type == SOCK_DGRAM && proto == IPPROTO_UDP))
		return type;
	return 0;
}

static int v6only(int fd)
{
	int on = 1;
	socklen_t l = sizeof on;
	return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &l) < 0 || on;
}

/* bind_vip binds an unbound socket of family fam to the VIP, port 0. TCP
 * asks for IP_BIND_ADDRESS_NO_PORT, so the port is picked at connect() from
 * the full 4-tuple space instead of being reserved now (a busy client would
 * otherwise run out of ephemeral ports). */
static int bind_vip(int fd, int fam, int type, in_addr_t vip)
{
	if (type == SOCK_STREAM) {
		int one = 1;
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
	}
	if (fam == AF_INET) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = vip};
		return REAL(real_bind)(fd, (struct sockaddr *)&a, sizeof a);
	}
	struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
	a6.sin6_addr.s6_addr[10] = 0xff;
	a6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&a6.sin6_addr.s6_addr[12], &vip, 4);
	return REAL(real_bind)(fd, (struct sockaddr *)&a6, sizeof a6);
}

/* prepare applies the outgoing rule before connect() or an addressed send
 * to the IPv4 destination dst: an unbound TCP/UDP socket is bound to the
 * VIP when the destination is in the VIP's scope. Returns 0 to go on with
 * the real call, or -1 with errno (EACCES when denied, bind's errno). */
static int prepare(int fd, int dst_family, in_addr_t dst)
{
	int type = tcp_or_udp(fd);
	if (!type)
		return 0;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return 0;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)&ss;
		if (dst_family != AF_INET || s->sin_addr.s_addr != 0 || s->sin_port != 0)
			return 0; /* bound already (by the program, or by us) */
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&ss;
		if (!IN6_IS_ADDR_UNSPECIFIED(&s->sin6_addr) || s->sin6_port != 0)
			return 0;
		/* TCP6 refuses AF_INET destinations; UDP6 takes them. */
		if (dst_family == AF_INET && type != SOCK_DGRAM)
			return 0;
		if (v6only(fd))
			return 0;
	} else {
		return 0;
	}
	/* connect() to 0.0.0.0 reaches this host over loopback. */
	int dst_loop = dst == 0 || loopback(dst);
	const struct ipv_answer *a = ipv_current();
	if (a->kind == IPV_MIP || dst_loop != a->loopback_scope)
		return 0;
	if (a->kind == IPV_DENIED) {
		errno = EACCES;
		return -1;
	}
	return bind_vip(fd, ss.ss_family, type, a->vip) < 0 ? -1 : 0;
}

IPV_EXPORT int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	connect_fn real = REAL(real_connect);
	int saved = errno, any6;
	in_addr_t dst;
	if (!v4_of(sa, len, &dst, &any6) || any6)
		return real(fd, sa, len);
	if (prepare(fd, sa->sa_family, dst) < 0)
		return -1;
	errno = saved;
	return real(fd, sa, len);
}

IPV_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa, socklen_t len)
{
	sendto_fn real = REAL(real_sendto);
	int saved = errno, any6;
	in_addr_t dst;
	if (!v4_of(sa, len, &dst, &any6) || any6)
		return real(fd, buf, n, flags, sa, len);
	if (prepare(fd, sa->sa_family, dst) < 0)
		return -1;
	errno = saved;
	return real(fd, buf, n, flags, sa, len);
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

IPV_EXPORT ssize_t sendmsg(int fd, const struct msghdr *m, int flags)
{
	sendmsg_fn real = REAL(real_sendmsg);
	int saved = errno;
	in_addr_t dst;
	if (!addressed(m, &dst))
		return real(fd, m, flags);
	if (prepare(fd, ((const struct sockaddr *)m->msg_name)->sa_family, dst) < 0)
		return -1;
	errno = saved;
	return real(fd, m, flags);
}

/* sendmmsg binds once, by the first addressed message: a socket has one
 * source address for all of them. */
IPV_EXPORT int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags)
{
	sendmmsg_fn real = REAL(real_sendmmsg);
	int saved = errno;
	in_addr_t dst;
	for (unsigned int i = 0; v && i < n; i++) {
		if (!v[i].msg_hdr.msg_name)
			continue;
		if (addressed(&v[i].msg_hdr, &dst) &&
		    prepare(fd, ((const struct sockaddr *)v[i].msg_hdr.msg_name)->sa_family, dst) < 0)
			return -1;
		break;
	}
	errno = saved;
	return real(fd, v, n, flags);
}

/* bind() to the wildcard or to the machine IP becomes a bind to the VIP on
 * the same port; any other address is the program's choice and kept. */
IPV_EXPORT int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	bind_fn real = REAL(real_bind);
	int saved = errno, any6;
	in_addr_t addr;
	if (!v4_of(sa, len, &addr, &any6))
		return real(fd, sa, len);
	if (!tcp_or_udp(fd) || (sa->sa_family == AF_INET6 && v6only(fd))) {
		errno = saved;
		return real(fd, sa, len);
	}
	const struct ipv_answer *a = ipv_current();
	if (a->kind == IPV_MIP || (addr != 0 && addr != a->mip)) {
		errno = saved;
		return real(fd, sa, len);
	}
	if (a->kind == IPV_DENIED) {
		errno = EACCES;
		return -1;
	}
	errno = saved;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in c;
		memcpy(&c, sa, sizeof c);
		c.sin_addr.s_addr = a->vip;
		return real(fd, (struct sockaddr *)&c, sizeof c);
	}
	struct sockaddr_in6 c6;
	memcpy(&c6, sa, sizeof c6);
	memset(c6.sin6_addr.s6_addr, 0, 10);
	c6.sin6_addr.s6_addr[10] = 0xff;
	c6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&c6.sin6_addr.s6_addr[12], &a->vip, 4);
	c6.sin6_scope_id = 0;
	return real(fd, (struct sockaddr *)&c6, sizeof c6);
}

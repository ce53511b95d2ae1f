/* The descriptor table and the wrappers that keep it: socket(), close(),
 * close_range(), closefrom(), dup2(), dup3() and fclose().
 *
 * socket() records what it made from its own arguments: an IP socket's
 * family, and whether it is TCP, UDP or anything else. connect() and
 * send*() then need not ask the kernel (getsockopt SO_TYPE and
 * SO_PROTOCOL), and a socket already dealt with is marked DECIDED so that
 * later calls on it do nothing at all (see intercept.c).
 *
 * An entry must never outlive its socket: a stale TCP entry on a number
 * now held by, say, a raw socket would have the library bind that raw
 * socket, which it would not have done before. Descriptor numbers change
 * hands only when one is freed, so every libc function that frees a
 * number the program names (close, close_range, closefrom, the target of
 * dup2 and dup3, fclose of a stream made with fdopen) forgets the entry,
 * before the real call and again after it (a thread that made the socket
 * again in between merely costs the slow path). Numbers made by anything
 * but socket() (open, accept, dup, fcntl F_DUPFD, SCM_RIGHTS, inheritance
 * across exec, where the table starts empty) land on a forgotten entry,
 * and are asked about with system calls, as every call was before the
 * table, and recorded then. The table knows nothing a freed number's next
 * holder could inherit unless the number was freed behind libc's back: by
 * a raw close system call, io_uring, or another process sharing the
 * descriptor table (clone with CLONE_FILES but not CLONE_VM); and even
 * then only a new holder made behind socket()'s back too can take the old
 * entry, since socket() overwrites it.
 *
 * What socket() cannot see: a protocol changed below it (a BPF
 * update_socket_protocol program, or an interposer loaded after this
 * library, turning TCP into MPTCP) is taken for the protocol asked for.
 *
 * What the wrappers add is async-signal-safe: a byte load or store or two. */
#define _GNU_SOURCE
#include "ipvirt.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

IPV_HIDDEN _Atomic unsigned char ipv_fds[IPV_FDS];

typedef int (*close_range_fn)(unsigned int, unsigned int, int);
typedef void (*closefrom_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
typedef int (*fclose_fn)(FILE *);

/* Fallbacks when dlsym finds no next definition: the raw system calls. */
static int sys_socket(int domain, int type, int protocol)
{
	return (int)syscall(SYS_socket, domain, type, protocol);
}
static int sys_close(int fd)
{
	return (int)syscall(SYS_close, fd);
}
static int sys_close_range(unsigned int first, unsigned int last, int flags)
{
	return (int)syscall(SYS_close_range, first, last, flags);
}
static void sys_closefrom(int lowfd)
{
	sys_close_range((unsigned int)lowfd, ~0U, 0);
}
static int sys_dup3(int oldfd, int newfd, int flags)
{
	return (int)syscall(SYS_dup3, oldfd, newfd, flags);
}
static int sys_dup2(int oldfd, int newfd)
{
	if (oldfd == newfd) /* dup3 refuses it; dup2 checks oldfd is open */
		return fcntl(oldfd, F_GETFD) < 0 ? -1 : newfd;
	return sys_dup3(oldfd, newfd, 0);
}
/* libc always has fclose (the library is linked against it); were it
 * missing, the stream's data is flushed and its descriptor closed, and the
 * FILE leaks. */
static int sys_fclose(FILE *f)
{
	int r = fflush(f);
	return sys_close(fileno(f)) < 0 || r != 0 ? EOF : 0;
}

static void resolve(void);
HOT_FN(socket, int, (int domain, int type, int protocol), (domain, type, protocol))
HOT_FN(close, int, (int fd), (fd))
REAL_FN(close_range, int, (unsigned int first, unsigned int last, int flags), (first, last, flags))
REAL_FN(dup2, int, (int oldfd, int newfd), (oldfd, newfd))
REAL_FN(dup3, int, (int oldfd, int newfd, int flags), (oldfd, newfd, flags))
REAL_FN(fclose, int, (FILE * f), (f))
/* REAL_FN's stub, for a function that returns nothing. */
static void first_closefrom(int lowfd);
static _Atomic(closefrom_fn) real_closefrom = first_closefrom;
static void first_closefrom(int lowfd)
{
	resolve();
	REAL(real_closefrom)(lowfd);
}

static void resolve(void)
{
	int saved = errno;
	RESOLVE(ipv_hot.socket, "socket", sys_socket);
	RESOLVE(ipv_hot.close, "close", sys_close);
	RESOLVE(real_close_range, "close_range", sys_close_range);
	RESOLVE(real_closefrom, "closefrom", sys_closefrom);
	RESOLVE(real_dup2, "dup2", sys_dup2);
	RESOLVE(real_dup3, "dup3", sys_dup3);
	RESOLVE(real_fclose, "fclose", sys_fclose);
	errno = saved;
}

__attribute__((constructor)) static void fdtable_init(void)
{
	resolve();
}

/* classify is what socket(domain, type, protocol) makes. Protocol 0 is the
 * type's default: TCP for SOCK_STREAM, UDP for SOCK_DGRAM (ping sockets,
 * SCTP and MPTCP are only made by naming them). Sockets of other families
 * get no entry: the library never touches them, and an entry kept for
 * them could only go stale. */
static unsigned classify(int domain, int type, int protocol)
{
	_Static_assert((int)IPV_FD_TCP == (int)SOCK_STREAM && (int)IPV_FD_UDP == (int)SOCK_DGRAM &&
			       IPV_FD_INET6 == (AF_INET6 & 8) >> 1,
		       "classify's arithmetic");
	/* AF_INET is 2 and AF_INET6 10: no other number ORed with 8 is 10. */
	if ((domain | 8) != AF_INET6)
		return IPV_FD_UNKNOWN;
	unsigned fam = (unsigned)(domain & 8) >> 1;
	type &= ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
	if ((type == SOCK_STREAM || type == SOCK_DGRAM) &&
	    (protocol == 0 || protocol == (type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP)))
		return (unsigned)type | fam; /* IPV_FD_TCP or IPV_FD_UDP */
	return IPV_FD_OTHER;
}

/* forget_range forgets [first, last], as far as entries were ever made. */
static void forget_range(unsigned int first, unsigned int last)
{
	unsigned int top = (unsigned int)atomic_load_explicit(&ipv_hot.fds_top, memory_order_relaxed);
	if (first >= top)
		return;
	if (last >= top)
		last = top - 1;
	for (unsigned int fd = first; fd <= last; fd++)
		ipv_fd_forget((int)fd);
}

/* The entry is worked out before the call, so that only it has to live
 * across it. */
IPV_HOT IPV_EXPORT int socket(int domain, int type, int protocol)
{
	socket_fn real = REAL(ipv_hot.socket);
	unsigned e = classify(domain, type, protocol);
	int fd = real(domain, type, protocol);
	if (fd >= 0)
		ipv_fd_set(fd, e);
	return fd;
}

IPV_HOT IPV_EXPORT int close(int fd)
{
	close_fn real = REAL(ipv_hot.close);
	ipv_fd_forget(fd);
	int r = real(fd);
	ipv_fd_forget(fd);
	return r;
}

IPV_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
	close_range_fn real = REAL(real_close_range);
	forget_range(first, last);
	int r = real(first, last, flags);
	forget_range(first, last);
	return r;
}

IPV_EXPORT void closefrom(int lowfd)
{
	closefrom_fn real = REAL(real_closefrom);
	unsigned int first = lowfd < 0 ? 0 : (unsigned int)lowfd;
	forget_range(first, ~0U);
	real(lowfd);
	forget_range(first, ~0U);
}

IPV_EXPORT int dup2(int oldfd, int newfd)
{
	dup2_fn real = REAL(real_dup2);
	if (oldfd == newfd) /* nothing is closed */
		return real(oldfd, newfd);
	ipv_fd_forget(newfd);
	int r = real(oldfd, newfd);
	ipv_fd_forget(newfd);
	return r;
}

IPV_EXPORT int dup3(int oldfd, int newfd, int flags)
{
	dup3_fn real = REAL(real_dup3);
	ipv_fd_forget(newfd);
	int r = real(oldfd, newfd, flags);
	ipv_fd_forget(newfd);
	return r;
}

/* fclose closes the stream's descriptor inside libc, where close() is not
 * seen; a socket can be a stream's descriptor (fdopen). */
IPV_EXPORT int fclose(FILE *f)
{
	fclose_fn real = REAL(real_fclose);
	int saved = errno;
	int fd = f ? fileno_unlocked(f) : -1; /* -1 for a stream without one */
	errno = saved;
	ipv_fd_forget(fd);
	int r = real(f);
	ipv_fd_forget(fd);
	return r;
}

//go:build cgo

/* The preload library's query code, compiled once into the Go harness.
 * query_c.h, answer_c.h and ipvirt.h are symlinks to lsp/preload/src: named
 * as headers, so that the go command hashes them (a change to the library
 * rebuilds the harness; it tracks no file outside the package) without
 * compiling them on their own. answer.c brings the string helpers query.c
 * uses; intercept.c and fdtable.c (the exported wrappers) are left out, so
 * that the test binary's own socket calls are libc's. */
#include "query_c.h"
#include "answer_c.h"

int ipv_real_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return connect(fd, sa, len);
}

/* intercept.c defines the hot line with its stubs; answer.c only writes
 * the cached answer's fields of it. */
struct ipv_hot ipv_hot;

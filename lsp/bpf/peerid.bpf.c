//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * Who connects to ipvirtd's socket, as the kernel sees it at connect().
 *
 * ipvirtd identifies a caller by its audit session. Read from
 * /proc/PID/sessionid after accept(), that is a path walk that creates the
 * procfs inodes of a process that has only just started: the largest part
 * of what a program's first connect waits for in the daemon. Here the kernel
 * notes the connecting process's session and login uid while it connects to
 * ipvirtd's socket, in its own context, keyed by its process id, with the
 * process's pidfs inode number: the daemon takes the record out when it
 * serves the connection and uses it only if that number is the one of the
 * pidfd it holds of its peer, so a record left by an earlier process that
 * had the same pid is never taken for the caller's.
 *
 * GPL because bpf_get_current_task_btf() is a GPL-only helper.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define PATH_MAX_UN 108

extern void *bpf_cast_to_kern_ctx(void *) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

struct peer {
	__u64 pidfs_ino;
	__u32 sessionid;
	__u32 loginuid;
};

/* ipvirtd's socket path, and its length without the NUL; len 0 notes
 * nothing. */
struct listener_path {
	__u32 len;
	char path[PATH_MAX_UN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listener_path);
} listener SEC(".maps");

/* Keyed by process id (in the initial pid namespace). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct peer);
} peers SEC(".maps");

SEC("cgroup/connect_unix")
int ipvirt_peer(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct listener_path *want = bpf_map_lookup_elem(&listener, &zero);
	if (!want || want->len == 0 || want->len >= PATH_MAX_UN)
		return 1;
	struct bpf_sock_addr_kern *sa = bpf_cast_to_kern_ctx(ctx);
	/* addrlen counts sun_family, the path and maybe its NUL, or the whole
	 * struct. */
	if (sa->uaddrlen < 2 + want->len)
		return 1;
	struct sockaddr_un *un = bpf_rdonly_cast(sa->uaddr, bpf_core_type_id_kernel(struct sockaddr_un));
	for (__u32 i = 0; i < PATH_MAX_UN; i++) {
		if (i == want->len) {
			if (2 + i < sa->uaddrlen && un->sun_path[i] != 0)
				return 1;
			break;
		}
		if (un->sun_path[i] != want->path[i])
			return 1;
	}
	struct task_struct *t = bpf_get_current_task_btf();
	struct peer p = {
		.pidfs_ino = t->group_leader->thread_pid->ino,
		.sessionid = t->sessionid,
		.loginuid = t->loginuid.val,
	};
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&peers, &tgid, &p, BPF_ANY);
	return 1;
}

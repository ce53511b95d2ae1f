/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The few kernel types peerid.bpf.c needs (see lsp/bpf/kernel.h for why not
 * vmlinux.h): UAPI constants copied from include/uapi/linux/bpf.h, and the
 * fields read from internal structs, CO-RE relocated at load time.
 */
#ifndef IPVIRT_PEERID_KERNEL_H
#define IPVIRT_PEERID_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;
typedef int pid_t;
typedef _Bool bool;

enum bpf_map_type {
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_LRU_HASH = 9,
};
#define BPF_ANY 0

struct bpf_sock_addr;
struct sockaddr;

/* The kernel's side of a cgroup/connect_unix program's context. */
struct bpf_sock_addr_kern {
	struct sockaddr *uaddr;
	__u32 uaddrlen;
} __attribute__((preserve_access_index));

struct sockaddr_un {
	__u16 sun_family;
	char sun_path[108];
} __attribute__((preserve_access_index));

typedef struct {
	__u32 val;
} kuid_t;

/* ino: the process's pidfs inode number (6.9 and later), what fstat() of a
 * pidfd of it gives; unique for the life of the boot. */
struct pid {
	__u64 ino;
} __attribute__((preserve_access_index));

struct task_struct {
	struct task_struct *group_leader;
	struct pid *thread_pid;
	kuid_t loginuid;
	unsigned int sessionid;
} __attribute__((preserve_access_index));

#endif

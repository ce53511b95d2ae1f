/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The few kernel types intercept.bpf.c and peerid.bpf.c need, instead of a
 * generated vmlinux.h (2.8 MB on 6.18, unreadable in review, and it pins the
 * build to one kernel's headers).
 *
 * Two kinds of definitions live here:
 *   - UAPI (struct bpf_sock_addr, struct bpf_sock, map type numbers): a
 *     stable ABI, copied verbatim from include/uapi/linux/bpf.h.
 *   - internal kernel structs (task_struct, mm_struct, file, inode,
 *     super_block): only the fields we read, marked preserve_access_index so
 *     clang emits CO-RE relocations. The loader (cilium/ebpf) rewrites every
 *     offset against the running kernel's BTF (/sys/kernel/btf/vmlinux), so
 *     field order and the missing fields here do not matter; a field that
 *     does not exist on the running kernel fails the load with a clear error.
 */
#ifndef IPVIRT_KERNEL_H
#define IPVIRT_KERNEL_H

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
#define true 1
#define false 0

/* UAPI map types and update flags (include/uapi/linux/bpf.h). */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_QUEUE = 22,
	BPF_MAP_TYPE_SK_STORAGE = 24,
	BPF_MAP_TYPE_RINGBUF = 27,
};
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_F_NO_PREALLOC (1U << 0)
/* sk_storage: an accepted socket inherits its listener's storage. */
#define BPF_F_CLONE (1U << 9)
#define BPF_SK_STORAGE_GET_F_CREATE (1ULL << 0)
#define ETH_P_IP 0x0800
#define IPPROTO_TCP 6
/* UAPI: the TCP states struct bpf_sock's state reports. */
enum {
	BPF_TCP_ESTABLISHED = 1,
	BPF_TCP_SYN_SENT,
	BPF_TCP_SYN_RECV,
	BPF_TCP_FIN_WAIT1,
	BPF_TCP_FIN_WAIT2,
	BPF_TCP_TIME_WAIT,
	BPF_TCP_CLOSE,
	BPF_TCP_CLOSE_WAIT,
	BPF_TCP_LAST_ACK,
	BPF_TCP_LISTEN,
	BPF_TCP_CLOSING,
	BPF_TCP_NEW_SYN_RECV,
};

/* UAPI: the context of cgroup/{connect,sendmsg,bind}{4,6}. */
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
	__be16 dst_port;
	__u16 :16;
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;
	__u32 user_ip6[4];
	__u32 user_port;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	union {
		struct bpf_sock *sk;
		__u64 :64;
	};
};

/* UAPI: the context of cgroup_skb/{ingress,egress}. data starts at the
 * network header. */
struct bpf_flow_keys;
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
	__u32 napi_id;
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port;
	__u32 local_port;
	__u32 data_meta;
	union {
		struct bpf_flow_keys *flow_keys;
		__u64 :64;
	};
	__u64 tstamp;
	__u32 wire_len;
	__u32 gso_segs;
	union {
		struct bpf_sock *sk;
		__u64 :64;
	};
	__u32 gso_size;
	__u8 tstamp_type;
	__u32 :24;
	__u64 hwtstamp;
};

/* UAPI socket addresses handed to bpf_bind(). */
#define AF_INET 2
#define AF_INET6 10
struct sockaddr;
struct sockaddr_in {
	__u16 sin_family;
	__be16 sin_port;
	__be32 sin_addr;
	__u8 sin_zero[8];
};
struct sockaddr_in6 {
	__u16 sin6_family;
	__be16 sin6_port;
	__be32 sin6_flowinfo;
	__be32 sin6_addr[4];
	__u32 sin6_scope_id;
};

/* Internal kernel structs, CO-RE relocated at load time. */
typedef struct {
	__u32 val;
} kuid_t;

struct super_block {
	__u32 s_dev; /* dev_t: MAJOR << 20 | MINOR, not stat's encoding */
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct file *exe_file;
} __attribute__((preserve_access_index));

/* ino: the process's pidfs inode number (6.9 and later), what fstat() of a
 * pidfd of it gives; unique for the life of the boot. */
struct pid {
	__u64 ino;
} __attribute__((preserve_access_index));

struct task_struct {
	pid_t tgid;
	struct mm_struct *mm;
	kuid_t loginuid;
	unsigned int sessionid;
	struct task_struct *group_leader;
	struct pid *thread_pid;
} __attribute__((preserve_access_index));

/* The kernel's side of a cgroup/connect_unix program's context, and the
 * address it holds (peerid.bpf.c). */
struct bpf_sock_addr_kern {
	struct sockaddr *uaddr;
	__u32 uaddrlen;
} __attribute__((preserve_access_index));

struct sockaddr_un {
	__u16 sun_family;
	char sun_path[108];
} __attribute__((preserve_access_index));

struct linux_binprm;

#endif

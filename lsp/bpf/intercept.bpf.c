//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * ipvirt kernel interceptor: gives the sockets of a login session (or of one
 * program in it) the session's virtual IP as source address.
 *
 * The hot path only reads maps the daemon fills; it never waits for the
 * daemon. A caller outside any audit session, or without a map entry, returns
 * at the first lookup and is never changed (except by enforcement, see
 * check_src).
 *
 * GPL because bpf_get_current_task_btf() is a GPL-only helper.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Bumped when a map layout or a field's meaning changes: a daemon never
 * adopts pinned objects of another ABI (see pin.go). */
#define IPVIRT_ABI 3

#define AUDIT_SID_UNSET 0xffffffffu
#define MAX_RANGES 16

#define CFG_ENFORCE (1u << 0)
#define CFG_PER_PROGRAM (1u << 1)
#define CFG_ASSIGN (1u << 2)         /* take VIPs from the stock at first use */
#define CFG_TRUST_PAM (1u << 3)      /* only registered sessions get one */
#define CFG_MODE_PROGRAM (1u << 4)   /* per-program mode: listed programs only */
#define CFG_DENY_EXHAUSTED (1u << 5) /* an empty stock refuses the call */

/* An executable, as the kernel names it: (superblock dev, inode). */
struct exe_id {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

/* A holder: a whole session (ino = dev = 0) or one program in a session. */
struct holder {
	__u64 ino;
	__u32 dev;
	__u32 sid;
};

struct pool_range {
	__u32 start; /* host byte order, inclusive */
	__u32 end;
};

struct settings {
	__u32 abi;
	__u32 flags;
	__be32 machine_ip;
	__u32 nranges;
	struct pool_range ranges[MAX_RANGES];
};

enum event_kind {
	EV_SESSION = 1, /* a new audit session was created */
	EV_EXEC = 2,    /* a program of interest was executed */
	EV_MISS = 3,    /* first socket call of a pending session without a VIP */
	EV_DENIED = 4,  /* enforcement refused a source address */
	EV_ASSIGNED = 5, /* a holder took a VIP from the stock */
	EV_EMPTY = 6,    /* a holder found the stock empty */
};

enum hook {
	HOOK_NONE = 0,
	HOOK_CONNECT4,
	HOOK_SENDMSG4,
	HOOK_BIND4,
	HOOK_CONNECT6,
	HOOK_SENDMSG6,
	HOOK_BIND6,
	HOOK_EGRESS,  /* a packet leaving a socket */
	HOOK_INGRESS, /* a packet arriving at a socket */
};

enum counter {
	CNT_CONNECT_BOUND,  /* connect: socket bound to the VIP */
	CNT_SENDMSG_SRC,    /* unconnected sendmsg: source set to the VIP */
	CNT_BIND_REWRITTEN, /* bind to wildcard/machine IP turned into the VIP */
	CNT_DENIED,         /* enforcement refusals */
	CNT_MISS,           /* miss events emitted */
	CNT_BIND_FAILED,    /* bpf_bind() returned an error (connect went on) */
	CNT_EVENTS_LOST,    /* ring buffer full */
	CNT_ASSIGNED,       /* VIPs taken from the stock */
	CNT_STOCK_EMPTY,    /* first calls that found the stock empty */
	CNT_MAX,
};

struct event {
	__u32 kind;
	__u32 sid;
	__u32 pid;
	__u32 uid;
	__u32 loginuid;
	__be32 addr;
	__u16 port; /* host byte order */
	__u16 hook;
	__u32 owner_sid;
	__u64 exe_ino;
	__u32 exe_dev;
	__u32 pad;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);     /* audit session id */
	__type(value, __be32);  /* VIP */
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct holder);
	__type(value, __be32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} programs SEC(".maps");

/* VIP -> its holder: what enforcement protects besides the pool ranges. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __be32);
	__type(value, struct holder);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} owners SEC(".maps");

/* Executables whose exec the daemon wants to hear about. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exe_id);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} interest SEC(".maps");

/* Sessions created but not yet decided by the daemon (value: ktime ns). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} config SEC(".maps");

/* VIPs installed, persisted (as stock leases) and free: a holder's first
 * socket call takes one (CFG_ASSIGN), so no first connect waits for the
 * daemon. The daemon keeps it stocked. */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 65536);
	__type(value, __be32);
} stock SEC(".maps");

/* Login uids of administrators: their sessions never take a VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} admins SEC(".maps");

/* Sessions PAM registered (CFG_TRUST_PAM: only these take a VIP). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} registered SEC(".maps");

/* When each holder last reported an empty stock (EV_EMPTY at most once a
 * second per holder). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct holder);
	__type(value, __u64);
} empty_reported SEC(".maps");

/* Who created a socket: its session and program, the process and command
 * for the log. Packets are policed against the socket's creator, not the
 * task that happens to run when they pass (a softirq, a timer). */
struct sock_tag {
	__u32 sid;
	__u32 pid;
	__u64 ino;
	__u32 dev;
	__u32 uid;
	__u64 last_report; /* ktime of the last EV_DENIED for this socket */
	char comm[16];
};

/* A socket's tag lives in a slot of sock_slots, the one its cookie (unique,
 * never reused) names, claimed at creation and freed at release: no
 * allocation on the socket's path, where socket-local storage costs a
 * kmalloc and an RCU free per socket (a tenth of a loopback connect). A
 * socket whose slot another live socket holds gets socket-local storage
 * instead (sock_tags), and so does a listener, at its first SYN, so that
 * the sockets it accepts inherit its tag (BPF_F_CLONE). */
#define TAG_SLOTS 32768 /* a power of two */

struct tag_slot {
	__u64 cookie; /* the tagged socket's cookie; 0: free */
	struct sock_tag tag;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TAG_SLOTS);
	__type(key, __u32);
	__type(value, struct tag_slot);
} sock_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sock_tag);
} sock_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct caller {
	__u32 sid;
	__be32 vip; /* 0: no entry */
	struct holder key;
	bool refuse; /* the stock was empty and on_exhausted is deny */
};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline bool is_loopback(__be32 addr)
{
	return (bpf_ntohl(addr) >> 24) == 127;
}

static __always_inline bool is_v4mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff);
}

static __always_inline const struct settings *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline void exe_of(struct task_struct *t, struct holder *key)
{
	struct mm_struct *mm = t->mm;
	if (!mm)
		return;
	struct file *f = mm->exe_file;
	if (!f)
		return;
	struct inode *ino = f->f_inode;
	if (!ino)
		return;
	key->ino = ino->i_ino;
	key->dev = ino->i_sb->s_dev;
}

static __always_inline void emit(__u32 kind, __u32 sid, __be32 addr, __u16 port,
				 __u16 hook, __u32 owner_sid);

/* assign gives the caller, a holder without an entry, a VIP from the stock
 * if the rules give it one: in a session (not the administrator's; under
 * CFG_TRUST_PAM a registered one) and, per program, running a listed
 * executable. Two first calls of one holder on two CPUs both pop; the
 * entry is inserted only if absent, so one wins and the other pushes its
 * address back and uses the winner's. The daemon learns of it from
 * EV_ASSIGNED, or from the map if the event is lost or it was down. */
static __always_inline void assign(struct caller *c, const struct settings *cfg,
				   struct task_struct *t, __u16 hook)
{
	__u32 luid = t->loginuid.val;
	if (bpf_map_lookup_elem(&admins, &luid))
		return;
	if ((cfg->flags & CFG_TRUST_PAM) && !bpf_map_lookup_elem(&registered, &c->sid))
		return;
	struct holder k = {.sid = c->sid};
	if (cfg->flags & CFG_MODE_PROGRAM) {
		exe_of(t, &k);
		struct exe_id id = {.ino = k.ino, .dev = k.dev};
		if (!k.ino || !bpf_map_lookup_elem(&interest, &id))
			return;
	}
	__be32 vip = 0, *won;
	if (bpf_map_pop_elem(&stock, &vip) != 0 || vip == 0) {
		count(CNT_STOCK_EMPTY);
		__u64 now = bpf_ktime_get_ns(), *last = bpf_map_lookup_elem(&empty_reported, &k);
		if (!last || now - *last > 1000000000ULL) {
			bpf_map_update_elem(&empty_reported, &k, &now, BPF_ANY);
			emit(EV_EMPTY, c->sid, 0, 0, hook, AUDIT_SID_UNSET);
		}
		c->refuse = (cfg->flags & CFG_DENY_EXHAUSTED) != 0;
		return;
	}
	long err;
	if (k.ino)
		err = bpf_map_update_elem(&programs, &k, &vip, BPF_NOEXIST);
	else
		err = bpf_map_update_elem(&sessions, &c->sid, &vip, BPF_NOEXIST);
	if (err) {
		bpf_map_push_elem(&stock, &vip, 0);
		won = k.ino ? bpf_map_lookup_elem(&programs, &k) : bpf_map_lookup_elem(&sessions, &c->sid);
		if (won) {
			c->vip = *won;
			c->key = k;
		}
		return;
	}
	bpf_map_update_elem(&owners, &vip, &k, BPF_ANY);
	c->vip = vip;
	c->key = k;
	count(CNT_ASSIGNED);
	emit(EV_ASSIGNED, c->sid, vip, 0, hook, AUDIT_SID_UNSET);
}

/* resolve fills c with the calling task's session and VIP: a per-program
 * entry wins over the session's entry. A holder without one takes one from
 * the stock (assign) when hook is a socket call. */
static __always_inline void resolve(struct caller *c, const struct settings *cfg, __u16 hook)
{
	struct task_struct *t = bpf_get_current_task_btf();
	__be32 *vip;

	c->sid = t->sessionid;
	c->vip = 0;
	c->refuse = false;
	c->key.ino = 0;
	c->key.dev = 0;
	c->key.sid = c->sid;
	if (c->sid == AUDIT_SID_UNSET)
		return;
	if (cfg && (cfg->flags & (CFG_PER_PROGRAM | CFG_MODE_PROGRAM))) {
		struct holder k = {.sid = c->sid};
		exe_of(t, &k);
		if (k.ino) {
			vip = bpf_map_lookup_elem(&programs, &k);
			if (vip) {
				c->vip = *vip;
				c->key = k;
				return;
			}
		}
	}
	if (!cfg || !(cfg->flags & CFG_MODE_PROGRAM)) {
		vip = bpf_map_lookup_elem(&sessions, &c->sid);
		if (vip) {
			c->vip = *vip;
			return;
		}
	}
	if (hook != HOOK_NONE && cfg && (cfg->flags & CFG_ASSIGN))
		assign(c, cfg, t, hook);
}

static __always_inline void emit(__u32 kind, __u32 sid, __be32 addr, __u16 port,
				 __u16 hook, __u32 owner_sid)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_EVENTS_LOST);
		return;
	}
	struct task_struct *t = bpf_get_current_task_btf();
	struct holder k = {};
	exe_of(t, &k);
	e->kind = kind;
	e->sid = sid;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->loginuid = t->loginuid.val;
	e->addr = addr;
	e->port = port;
	e->hook = hook;
	e->owner_sid = owner_sid;
	e->exe_ino = k.ino;
	e->exe_dev = k.dev;
	e->pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* miss reports, once, that a session the daemon has not decided about yet
 * is already using the network: the daemon lost the race (README: window). */
static __always_inline void miss(const struct caller *c, __be32 addr, __u16 port, __u16 hook)
{
	if (c->sid == AUDIT_SID_UNSET)
		return;
	if (!bpf_map_lookup_elem(&pending, &c->sid))
		return;
	if (bpf_map_delete_elem(&pending, &c->sid) != 0)
		return; /* another CPU reported it */
	count(CNT_MISS);
	emit(EV_MISS, c->sid, addr, port, hook, AUDIT_SID_UNSET);
}

static __always_inline bool in_pool(const struct settings *cfg, __be32 addr)
{
	__u32 a = bpf_ntohl(addr);
	for (int i = 0; i < MAX_RANGES; i++) {
		if (i >= cfg->nranges)
			break;
		if (a >= cfg->ranges[i].start && a <= cfg->ranges[i].end)
			return true;
	}
	return false;
}

/* check_src returns 1 when the caller may use addr as source address, 0 to
 * refuse with EPERM. Only login sessions are policed: tasks outside any
 * audit session are system services (ipvirtd itself binds leased VIPs to
 * renew them) and unprivileged users cannot leave their session. */
static __always_inline int check_src(const struct caller *c, const struct settings *cfg,
				     __be32 addr, __u16 port, __u16 hook)
{
	if (!cfg || !(cfg->flags & CFG_ENFORCE))
		return 1;
	if (c->sid == AUDIT_SID_UNSET || addr == 0 || addr == c->vip)
		return 1;
	struct holder *owner = bpf_map_lookup_elem(&owners, &addr);
	if (!owner && !in_pool(cfg, addr))
		return 1;
	count(CNT_DENIED);
	emit(EV_DENIED, c->sid, addr, port, hook, owner ? owner->sid : AUDIT_SID_UNSET);
	return 0;
}

/* wanted reports whether a VIP should be the source towards dst: loopback
 * traffic keeps its loopback source unless the VIP itself is a loopback
 * address (the simulator's topology), and a loopback VIP cannot reach a
 * non-loopback destination anyway (the kernel refuses that route). */
static __always_inline bool wanted(__be32 vip, __be32 dst)
{
	return is_loopback(vip) == is_loopback(dst);
}

SEC("cgroup/connect4")
int ipvirt_connect4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	const struct settings *cfg;
	struct caller c;

	if (!sk || sk->src_ip4)
		return 1; /* bound by the program (or the preload library) */
	cfg = get_config();
	resolve(&c, cfg, HOOK_CONNECT4);
	if (c.refuse)
		return 0;
	if (!c.vip) {
		miss(&c, ctx->user_ip4, bpf_ntohs(ctx->user_port), HOOK_CONNECT4);
		return 1;
	}
	if (!wanted(c.vip, ctx->user_ip4))
		return 1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = c.vip};
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		count(CNT_CONNECT_BOUND);
	else
		count(CNT_BIND_FAILED);
	return 1;
}

SEC("cgroup/sendmsg4")
int ipvirt_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	const struct settings *cfg;
	struct caller c;

	if (!sk)
		return 1;
	cfg = get_config();
	resolve(&c, cfg, ctx->msg_src_ip4 || sk->src_ip4 ? HOOK_NONE : HOOK_SENDMSG4);
	if (c.refuse)
		return 0;
	if (ctx->msg_src_ip4) /* IP_PKTINFO chose a source: police it */
		return check_src(&c, cfg, ctx->msg_src_ip4, 0, HOOK_SENDMSG4);
	if (sk->src_ip4)
		return 1;
	if (!c.vip) {
		miss(&c, ctx->user_ip4, bpf_ntohs(ctx->user_port), HOOK_SENDMSG4);
		return 1;
	}
	if (!wanted(c.vip, ctx->user_ip4))
		return 1;
	ctx->msg_src_ip4 = c.vip;
	count(CNT_SENDMSG_SRC);
	return 1;
}

/* rewritable reports whether a bind to addr would be turned into the VIP
 * (the wildcard or the machine IP): only such a bind takes one from the
 * stock. */
static __always_inline bool rewritable(const struct settings *cfg, __be32 addr)
{
	return addr == 0 || (cfg && cfg->machine_ip && addr == cfg->machine_ip);
}

/* bind_rewrite returns the address a bind to addr should really use. */
static __always_inline __be32 bind_rewrite(const struct caller *c, const struct settings *cfg,
					   __be32 addr)
{
	if (!c->vip)
		return addr;
	if (addr == 0)
		return c->vip;
	if (cfg && cfg->machine_ip && addr == cfg->machine_ip &&
	    (!is_loopback(addr) || is_loopback(c->vip)))
		return c->vip;
	return addr;
}

SEC("cgroup/bind4")
int ipvirt_bind4(struct bpf_sock_addr *ctx)
{
	const struct settings *cfg = get_config();
	struct caller c;
	__be32 addr = ctx->user_ip4;

	resolve(&c, cfg, rewritable(cfg, addr) ? HOOK_BIND4 : HOOK_NONE);
	if (c.sid == AUDIT_SID_UNSET)
		return 1;
	if (c.refuse)
		return 0;
	__be32 to = bind_rewrite(&c, cfg, addr);
	if (to != addr) {
		ctx->user_ip4 = to;
		count(CNT_BIND_REWRITTEN);
		return 1;
	}
	if (!c.vip && addr == 0)
		miss(&c, addr, bpf_ntohs(ctx->user_port), HOOK_BIND4);
	return check_src(&c, cfg, addr, bpf_ntohs(ctx->user_port), HOOK_BIND4);
}

/* IPv6 hooks: only IPv4-mapped addresses (::ffff:a.b.c.d) on dual-stack
 * sockets concern a VIP; native IPv6 passes through untouched. */

SEC("cgroup/connect6")
int ipvirt_connect6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	const struct settings *cfg;
	struct caller c;

	if (!sk || !is_v4mapped(ctx->user_ip6))
		return 1;
	if (sk->src_ip6[0] | sk->src_ip6[1] | sk->src_ip6[2] | sk->src_ip6[3])
		return 1;
	__be32 dst = ctx->user_ip6[3];
	cfg = get_config();
	resolve(&c, cfg, HOOK_CONNECT6);
	if (c.refuse)
		return 0;
	if (!c.vip) {
		miss(&c, dst, bpf_ntohs(ctx->user_port), HOOK_CONNECT6);
		return 1;
	}
	if (!wanted(c.vip, dst))
		return 1;
	struct sockaddr_in6 sa;
	__builtin_memset(&sa, 0, sizeof(sa)); /* no .rodata initializer */
	sa.sin6_family = AF_INET6;
	sa.sin6_addr[2] = bpf_htonl(0xffff);
	sa.sin6_addr[3] = c.vip;
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		count(CNT_CONNECT_BOUND);
	else
		count(CNT_BIND_FAILED);
	return 1;
}

/* The kernel hands an unconnected UDPv6 send to a v4-mapped destination to
 * the IPv4 path (udp_sendmsg), which runs sendmsg4; this hook covers the
 * sends that do reach sendmsg6 with a mapped address. */
SEC("cgroup/sendmsg6")
int ipvirt_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	const struct settings *cfg;
	struct caller c;

	if (!sk || !is_v4mapped(ctx->user_ip6))
		return 1;
	cfg = get_config();
	bool chosen = ctx->msg_src_ip6[0] | ctx->msg_src_ip6[1] | ctx->msg_src_ip6[2] | ctx->msg_src_ip6[3] ||
		      sk->src_ip6[0] | sk->src_ip6[1] | sk->src_ip6[2] | sk->src_ip6[3];
	resolve(&c, cfg, chosen ? HOOK_NONE : HOOK_SENDMSG6);
	if (c.refuse)
		return 0;
	if (ctx->msg_src_ip6[0] | ctx->msg_src_ip6[1] | ctx->msg_src_ip6[2] | ctx->msg_src_ip6[3]) {
		if (!is_v4mapped(ctx->msg_src_ip6))
			return 1;
		return check_src(&c, cfg, ctx->msg_src_ip6[3], 0, HOOK_SENDMSG6);
	}
	if (sk->src_ip6[0] | sk->src_ip6[1] | sk->src_ip6[2] | sk->src_ip6[3])
		return 1;
	__be32 dst = ctx->user_ip6[3];
	if (!c.vip) {
		miss(&c, dst, bpf_ntohs(ctx->user_port), HOOK_SENDMSG6);
		return 1;
	}
	if (!wanted(c.vip, dst))
		return 1;
	ctx->msg_src_ip6[0] = 0;
	ctx->msg_src_ip6[1] = 0;
	ctx->msg_src_ip6[2] = bpf_htonl(0xffff);
	ctx->msg_src_ip6[3] = c.vip;
	count(CNT_SENDMSG_SRC);
	return 1;
}

/* bind6 rewrites and polices only mapped addresses: "::" stays "::" so a
 * dual-stack server keeps serving IPv6 (README: "IPv6 wildcard"). */
SEC("cgroup/bind6")
int ipvirt_bind6(struct bpf_sock_addr *ctx)
{
	const struct settings *cfg;
	struct caller c;

	if (!is_v4mapped(ctx->user_ip6))
		return 1;
	cfg = get_config();
	__be32 addr = ctx->user_ip6[3];
	resolve(&c, cfg, rewritable(cfg, addr) ? HOOK_BIND6 : HOOK_NONE);
	if (c.sid == AUDIT_SID_UNSET)
		return 1;
	if (c.refuse)
		return 0;
	__be32 to = bind_rewrite(&c, cfg, addr);
	if (to != addr) {
		ctx->user_ip6[3] = to;
		count(CNT_BIND_REWRITTEN);
		return 1;
	}
	return check_src(&c, cfg, addr, bpf_ntohs(ctx->user_port), HOOK_BIND6);
}

static __always_inline void fill_tag(struct sock_tag *tag, struct task_struct *t, __u32 sid)
{
	struct holder k = {};
	exe_of(t, &k);
	tag->sid = sid;
	tag->pid = bpf_get_current_pid_tgid() >> 32;
	tag->uid = (__u32)bpf_get_current_uid_gid();
	tag->ino = k.ino;
	tag->dev = k.dev;
	tag->last_report = 0;
	bpf_get_current_comm(tag->comm, sizeof(tag->comm));
}

static __always_inline struct tag_slot *slot_of(__u64 cookie)
{
	__u32 i = cookie & (TAG_SLOTS - 1);
	return bpf_map_lookup_elem(&sock_slots, &i);
}

/* sock_create tags every IPv4 and IPv6 socket a login session creates
 * (stream, datagram, ping, raw alike: they all pass here) with its creator,
 * so that the packet hooks below know whose it is. Attached, with
 * sock_release and the packet hooks, only while enforcement is on. */
SEC("cgroup/sock_create")
int ipvirt_sock_create(struct bpf_sock *sk)
{
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 sid = t->sessionid;
	if (sid == AUDIT_SID_UNSET)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct tag_slot *s = slot_of(cookie);
	if (cookie && s && __sync_val_compare_and_swap(&s->cookie, 0, cookie) == 0) {
		fill_tag(&s->tag, t, sid);
		return 1;
	}
	struct sock_tag *tag = bpf_sk_storage_get(&sock_tags, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (tag)
		fill_tag(tag, t, sid);
	return 1;
}

/* sock_release frees the slot of a socket closed by its last holder. */
SEC("cgroup/sock_release")
int ipvirt_sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct tag_slot *s = slot_of(cookie);
	if (cookie && s && s->cookie == cookie)
		__sync_val_compare_and_swap(&s->cookie, cookie, 0);
	return 1;
}

/* tag_of returns the tag of skb's socket sk (a full socket), NULL when it
 * has none. */
static __always_inline struct sock_tag *tag_of(struct __sk_buff *skb, struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct tag_slot *s = slot_of(cookie);
	if (cookie && s && s->cookie == cookie)
		return &s->tag;
	return bpf_sk_storage_get(&sock_tags, sk, 0, 0);
}

/* inherit gives a listener whose tag is in a slot socket-local storage
 * too, before the SYN it is receiving can make a socket: an accepted socket
 * is made by cloning its listener, storage included, never by
 * sock_create. */
static __always_inline void inherit(struct __sk_buff *skb, struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct tag_slot *s = slot_of(cookie);
	if (!cookie || !s || s->cookie != cookie)
		return; /* untagged, or tagged in storage already */
	if (bpf_sk_storage_get(&sock_tags, sk, 0, 0))
		return;
	struct sock_tag *tag = bpf_sk_storage_get(&sock_tags, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (tag)
		__builtin_memcpy(tag, &s->tag, sizeof(*tag));
}

/* report_packet tells the daemon of a dropped packet, at most once a second
 * per socket (a flood is counted, not logged packet by packet). */
static __always_inline void report_packet(struct sock_tag *tag, __be32 addr, __u16 hook, __u32 owner_sid)
{
	__u64 now = bpf_ktime_get_ns();
	if (tag->last_report && now - tag->last_report < 1000000000ULL)
		return;
	tag->last_report = now;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(CNT_EVENTS_LOST);
		return;
	}
	e->kind = EV_DENIED;
	e->sid = tag->sid;
	e->pid = tag->pid;
	e->uid = tag->uid;
	e->loginuid = 0;
	e->addr = addr;
	e->port = 0;
	e->hook = hook;
	e->owner_sid = owner_sid;
	e->exe_ino = tag->ino;
	e->exe_dev = tag->dev;
	e->pad = 0;
	__builtin_memcpy(e->comm, tag->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* police returns 1 when a packet of skb's socket may carry its address (the
 * source leaving, the destination arriving), 0 to drop it: a pool address
 * or a held VIP belongs only to sockets its holder created. The bind and
 * connect hooks cannot see everything that puts an address on a packet: a
 * wildcard listener accepting for another's VIP, IP_MULTICAST_IF, ping
 * sockets (their own bind path), raw sockets. Sockets of services (no
 * session) and sockets created while enforcement was off carry no tag and
 * pass.
 *
 * A TCP socket's address is fixed by its first packet: the SYN it sends
 * (SYN_SENT) or the SYN its listener accepts (LISTEN), and every later
 * packet of the connection carries the same one. Only those are policed;
 * established traffic passes without a lookup. Every other protocol is
 * policed packet by packet (a datagram socket's source and destination
 * can change with every packet). */
static __always_inline int police(struct __sk_buff *skb, __u16 hook)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1; /* a request or time-wait socket: its listener was policed */
	if (sk->protocol == IPPROTO_TCP) {
		__u32 state = sk->state;
		if (hook == HOOK_INGRESS && state == BPF_TCP_LISTEN)
			inherit(skb, sk);
		else if (hook == HOOK_INGRESS || (state != BPF_TCP_SYN_SENT && state != BPF_TCP_LISTEN))
			return 1;
	}
	__be32 addr;
	if (bpf_skb_load_bytes(skb, hook == HOOK_EGRESS ? 12 : 16, &addr, sizeof(addr)))
		return 1;
	const struct settings *cfg = get_config();
	if (!cfg || !(cfg->flags & CFG_ENFORCE))
		return 1;
	struct holder *owner = bpf_map_lookup_elem(&owners, &addr);
	if (!owner && !in_pool(cfg, addr))
		return 1;
	struct sock_tag *tag = tag_of(skb, sk);
	if (!tag || tag->sid == AUDIT_SID_UNSET)
		return 1;
	if (owner && owner->sid == tag->sid &&
	    (owner->ino == 0 || (owner->ino == tag->ino && owner->dev == tag->dev)))
		return 1;
	count(CNT_DENIED);
	report_packet(tag, addr, hook, owner ? owner->sid : AUDIT_SID_UNSET);
	return 0;
}

SEC("cgroup_skb/egress")
int ipvirt_egress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 1;
	return police(skb, HOOK_EGRESS);
}

SEC("cgroup_skb/ingress")
int ipvirt_ingress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 1;
	return police(skb, HOOK_INGRESS);
}

/* A write to /proc/self/loginuid that succeeded gave the task a new audit
 * session: tell the daemon before the session's first connect. */
SEC("fexit/audit_set_loginuid")
int BPF_PROG(ipvirt_new_session)
{
	__u64 ret = 0;
	bpf_get_func_ret(ctx, &ret);
	if ((int)ret != 0)
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 sid = t->sessionid;
	if (sid == AUDIT_SID_UNSET)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&pending, &sid, &now, BPF_ANY);
	emit(EV_SESSION, sid, 0, 0, HOOK_NONE, AUDIT_SID_UNSET);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(ipvirt_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct holder k = {};
	exe_of(p, &k);
	if (!k.ino)
		return 0;
	struct exe_id id = {.ino = k.ino, .dev = k.dev};
	if (!bpf_map_lookup_elem(&interest, &id))
		return 0;
	emit(EV_EXEC, p->sessionid, 0, 0, HOOK_NONE, AUDIT_SID_UNSET);
	return 0;
}

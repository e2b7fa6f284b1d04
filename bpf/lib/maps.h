/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * A TCP connection as both of its ends can name it, whatever NAT did to the
 * addresses in between: the client's own endpoint (unchanged by REDIRECT and
 * DNAT, which rewrite the destination) and the two initial sequence numbers,
 * which no NAT touches. Two live connections never share all of these.
 * netns is the network namespace cookie when both ends are in one namespace
 * (loopback, REDIRECT) so that two pods using the same 127.0.0.1 ports, whose
 * sequence numbers could coincide, never meet; it is 0 between pods, whose
 * IPs are unique on the node.
 */
struct sh_conn {
	__u64 netns;
	__u32 client_ip[4]; /* IPv4 as v4-mapped IPv6 */
	__u32 client_seq;   /* client ISN + 1 */
	__u32 server_seq;   /* server ISN + 1 */
	__u16 client_port;  /* host byte order */
	__u16 pad;
};

enum sh_side {
	SH_CLIENT = 0,
	SH_SERVER = 1,
};

/* Key of a socket in the sockhash: its connection and which end it is. */
struct sh_key {
	struct sh_conn conn;
	__u32 side;
};

/*
 * Per-socket state in socket storage. The peer key is fixed at pairing; tx
 * says whether this socket's sends are redirected. It starts SH_TX_PENDING
 * (clients, until their first send), is SH_TX_REDIRECT while redirecting,
 * and once it holds a reason (>= SH_TX_TCP) it never changes again: a
 * direction leaves the redirect path at most once and never comes back.
 */
enum sh_tx {
	SH_TX_PENDING = 0,
	SH_TX_REDIRECT = 1,
	SH_TX_TCP = 2,          /* first of the reasons below */
	SH_TX_NO_PEER = 2,      /* peer not paired by the first send, or gone */
	SH_TX_UNSAFE_RX = 3,    /* the receiver is not one redirect is safe for */
	SH_TX_BACKPRESSURE = 4, /* the receiver fell behind by more than the bound */
};

struct sh_sock {
	struct sh_key peer;
	__u32 tx;
};

/* State of a connection between its two ESTABLISHED callbacks. */
enum sh_conn_flags {
	SH_CONN_PAIRED = 1,         /* the server end is in the sockhash */
	SH_CONN_CLIENT_RX_SAFE = 2, /* redirecting into the client is safe */
	SH_CONN_SERVER_RX_SAFE = 4, /* redirecting into the server is safe */
	SH_CONN_AMBIGUOUS = 8,      /* two sockets claimed one key: pair nothing */
};

struct sh_pending {
	__u64 flags; /* 64-bit: clang 14 has no 32-bit atomic or for BPF */
};

#define SH_MAX_EXCLUDE_PORTS 16
#define SH_PATH_MAX 256

/* One attached pod (cgroup), keyed by its cgroup id. */
struct sh_pod {
	__u16 exclude_ports[SH_MAX_EXCLUDE_PORTS]; /* 0 = unused slot */
	/* Filled by user space for listing; BPF never reads it. */
	char path[SH_PATH_MAX];
};

struct sh_ip {
	__u32 addr[4];
};

enum sh_stat {
	SH_STAT_PAIRED_CLIENT,
	SH_STAT_PAIRED_SERVER,
	SH_STAT_REDIR_MSGS,
	SH_STAT_REDIR_BYTES,
	SH_STAT_TCP_MSGS,        /* sends of paired sockets that went through TCP */
	SH_STAT_TCP_BYTES,
	SH_STAT_TX_NO_PEER,      /* directions switched to TCP, by reason */
	SH_STAT_TX_UNSAFE_RX,
	SH_STAT_TX_BACKPRESSURE,
	SH_STAT_SKIP_DATA,       /* connections not paired, by reason */
	SH_STAT_SKIP_REMOTE,
	SH_STAT_SKIP_EXCLUDED,
	SH_STAT_SKIP_NO_POD,
	SH_STAT_SKIP_NO_CLIENT,
	SH_STAT_SKIP_AMBIGUOUS,
	SH_STAT_ERR_SOCKHASH,    /* failed map operations, by map */
	SH_STAT_ERR_STORAGE,
	SH_STAT_ERR_PENDING,
	SH_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct sh_key);
	__type(value, __u64);
} sockhop_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sh_sock);
} sockhop_state SEC(".maps");

/*
 * Client ends waiting for their server end. LRU: an entry whose server never
 * shows up (or whose client never sends) ages out instead of filling the map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sh_conn);
	__type(value, struct sh_pending);
} sockhop_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct sh_pod);
} sockhop_pods SEC(".maps");

/* IPs of this node's accelerated pods: pairing across namespaces needs both ends here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct sh_ip);
	__type(value, __u8);
} sockhop_podips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SH_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sockhop_stats SEC(".maps");

static __always_inline void sh_count(enum sh_stat stat, __u64 n)
{
	__u32 key = stat;
	__u64 *v = bpf_map_lookup_elem(&sockhop_stats, &key);

	/* Atomic although per-CPU: sk_msg runs in process context and can be
	 * preempted, or interrupted by sockops in softirq, on the same CPU. */
	if (v)
		__sync_fetch_and_add(v, n);
}

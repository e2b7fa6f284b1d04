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
 * Per-socket state in socket storage, written only by this socket's own
 * programs: the peer key is fixed at pairing, peer_sk (the peer's kernel
 * address, used only to read its sequence numbers and receive queue) is
 * learnt by the client from its pending entry, and tx says how this
 * socket's sends travel. Invariant 2 (docs/datapath.md):
 *   TCP -> REDIRECT only once the receiver has read every byte this socket
 *          ever wrote over TCP (its copied_seq equals our write_seq, read in
 *          our own send path under our socket lock) and it reads safely;
 *   REDIRECT -> TCP at any time (the receiver drains redirected data first).
 * States >= SH_TX_FINAL never change again; a socket whose sends are on TCP
 * for good leaves the sockhash (it retires, see sh_retire) once nothing is
 * or will be redirected into it, so that it sends as plain TCP.
 */
enum sh_tx {
	SH_TX_TCP = 0,          /* on TCP, may switch to redirect */
	SH_TX_REDIRECT = 1,
	SH_TX_FINAL = 8,        /* first of the states below: for good */
	SH_TX_NO_PEER = 8,      /* the peer never paired, or left */
	SH_TX_UNSAFE_RX = 9,    /* the receiver splices or waits for all */
	SH_TX_BACKPRESSURE = 10, /* the receiver fell behind by the bound */
	SH_TX_POISONED = 11,    /* the receiver splices, with redirected bytes unread */
};

struct sh_sock {
	struct sh_key peer;
	__u64 peer_sk;
	__u32 tx;
	__u16 waits; /* a client's sends while its server had not joined */
	__u16 flags; /* enum sh_sock_flags */
	__u64 pod;   /* attach cgroup id of this socket's pod (sockhop_podst) */
};

enum sh_sock_flags {
	SH_SOCK_INCOMING = 1, /* we set SH_RX_INCOMING on the peer */
	SH_SOCK_SWITCHED = 2, /* our sends switched to redirect, once at least */
};

/* How many sends a client waits for its server end to join (it normally
 * has by the first: it joins while the handshake's last ACK is processed). */
#define SH_MAX_WAITS 16

/* What the receive side has shown of a paired socket (sockhop_rx). */
enum sh_rx_flags {
	SH_RX_ALLOWED = 1,  /* the receiver policy allows redirecting into it */
	SH_RX_READ = 2,     /* read with recvmsg/read, SH_MIN_READS times */
	SH_RX_UNSAFE = 4,   /* spliced, sendfile'd or zerocopy-received from:
			     * these do not see redirected data at all */
	SH_RX_STRANDED = 8, /* ...while redirected bytes were unread */
	SH_RX_WAITALL = 16, /* read with MSG_WAITALL: sees redirected data,
			     * but may return it short */
	SH_RX_RETIRING = 32, /* its own sends are on TCP for good: it leaves the
			      * sockhash once nothing is redirected into it */
	SH_RX_RETIRED = 64,  /* left the sockhash */
	SH_RX_INCOMING = 128, /* its peer redirects into it (set by the peer) */
	SH_RX_RECVD = 256,    /* read with recvmsg/read since it was seen
			       * stranded: back on a call that sees
			       * redirected data (cleared by its next splice) */
	SH_RX_FED = 512,      /* its peer switched to redirect into it, once at least */
};

/* Reads with recvmsg/read (returning data, without MSG_WAITALL) a receiver
 * must have made before redirect switches into it. A protocol that reads a
 * header and then splices the body is then still on TCP when it splices. */
#define SH_MIN_READS 3

struct sh_rx {
	__u64 flags; /* 64-bit: clang 14 has no 32-bit atomic or for BPF */
	__u64 reads;
};

/* State of a connection between its two ESTABLISHED callbacks, until the
 * client's first send picks up the server's address. */
enum sh_conn_flags {
	SH_CONN_PAIRED = 1,    /* the server end is in the sockhash */
	SH_CONN_AMBIGUOUS = 8, /* two sockets claimed one key: pair nothing */
};

struct sh_pending {
	__u64 flags;
	__u64 client_sk;
	__u64 server_sk; /* set when the server joins */
	__u64 client_pod; /* the client's pod, counted when the server joins */
};

/* Learnt hazards of a cgroup (container): its later sockets are not paired. */
enum sh_hazard_flags {
	SH_HAZARD_SPLICE = 1,
	SH_HAZARD_WAITALL = 2,
	SH_HAZARD_ZEROCOPY = 4,
	SH_HAZARD_STRANDED = 8, /* ...while redirected bytes were unread */
	SH_HAZARD_ZCSEND = 16,  /* enables SO_ZEROCOPY (a sender's hazard) */
	SH_HAZARD_ULP = 32,     /* sets a TCP ULP (kTLS): redirected bytes bypass it */
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
	SH_STAT_TX_SWITCH,       /* directions switched from TCP to redirect */
	SH_STAT_RX_UNSAFE,       /* paired receivers seen splicing or waiting for all */
	SH_STAT_RX_STRANDED,     /* ...while redirected bytes were unread */
	SH_STAT_TX_POISONED,     /* directions kept on redirect for a stranded receiver */
	SH_STAT_SKIP_HAZARD,     /* sockets not paired: their cgroup splices or waits */
	SH_STAT_RETIRED,         /* sockets that left the sockhash to send as plain TCP */
	SH_STAT_ZC_REFUSED,      /* SO_ZEROCOPY refused on a socket in the sockhash */
	SH_STAT_SKIP_DATA,       /* connections not paired, by reason */
	SH_STAT_SKIP_REMOTE,
	SH_STAT_SKIP_EXCLUDED,
	SH_STAT_SKIP_NO_POD,
	SH_STAT_SKIP_NO_CLIENT,
	SH_STAT_SKIP_AMBIGUOUS,
	SH_STAT_SKIP_ZEROCOPY,   /* ...an end with SO_ZEROCOPY */
	SH_STAT_SKIP_SHORT,      /* ...its container's connections to that port were short-lived */
	SH_STAT_ERR_SOCKHASH,    /* failed map operations, by map */
	SH_STAT_ERR_STORAGE,
	SH_STAT_ERR_PENDING,
	SH_STAT_ERR_RX,
	SH_STAT_INCOMING_HELD,   /* sends that could not yet let their peer retire: another thread was in their socket's send or receive path */
	SH_STAT_ULP_REFUSED,     /* TCP_ULP (kTLS) refused on a socket in the sockhash */
	SH_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 262144);
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
 * Client ends waiting for their server end. Removed by the client's first
 * send after the server joined, or when the client closes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct sh_conn);
	__type(value, struct sh_pending);
} sockhop_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct sh_pod);
} sockhop_pods SEC(".maps");

/* Receive-side observations of each paired socket, keyed by its kernel
 * address: the tracepoints on the receive path see a struct sock, not our
 * socket storage. Added at pairing, removed when the socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct sh_rx);
} sockhop_rx SEC(".maps");

/* Cgroups (containers) seen reading a paired socket in a way redirected
 * data would break: their later connections stay on TCP. */
/* (value: enum sh_hazard_flags) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} sockhop_hazard SEC(".maps");

/* Cgroups (containers) whose paired sockets were read only with
 * recvmsg/read from their first byte to their close, counted; a cgroup
 * with no hazard and SH_TRUST_CLOSED of them receives redirected data on
 * its new connections from their first byte. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} sockhop_trust SEC(".maps");

#define SH_TRUST_CLOSED 1

/*
 * Short-lived connections: a paired connection that closes having
 * redirected nothing either way paid for its psocks and gained nothing.
 * Counted per client container and server port; once SH_SHORT_STREAK such
 * connections closed in a row, that container's new connections to that
 * port are not paired, but for one in SH_SHORT_SAMPLE, which learns again
 * (a sampled connection that redirects resets the streak).
 */
struct sh_short_key {
	__u64 cgroup; /* the client socket's cgroup */
	__u32 port;   /* the server's port */
	__u32 pad;
};

struct sh_short {
	__u64 wasted; /* paired connections closed in a row with nothing redirected */
	__u64 seen;   /* connections seen since the streak reached SH_SHORT_STREAK */
};

#define SH_SHORT_STREAK 16
#define SH_SHORT_SAMPLE 16

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct sh_short_key);
	__type(value, struct sh_short);
} sockhop_short SEC(".maps");

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

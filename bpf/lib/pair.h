/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Pairing: at each end's ESTABLISHED callback, name the connection (struct
 * sh_conn) and put the socket into the sockhash under (connection, side).
 * The client end always completes first (it gets the SYN-ACK before the
 * server gets the ACK), so the server end finds the client waiting in
 * sockhop_pending and only then joins: a server socket never enters the
 * sockhash without its peer.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "kernel.h"
#include "maps.h"
#include "podst.h"

#define AF_INET 2
#define AF_INET6 10

/* Deepest cgroup nesting searched for the attached pod directory. */
#define SH_MAX_CGROUP_DEPTH 16

/* Set from Go before load (see pkg/datapath). */
volatile const __u32 sh_proxy_uids[4] = {1337, 2102, 5678, 0xffffffff};
/* 1: redirect into any socket; 0: only into sockets owned by a proxy uid. */
volatile const __u8 sh_app_receivers = 0;
/* Bytes redirected into a receiver and not yet read before the sender's
 * direction switches to TCP for good; 0 = unbounded. */
volatile const __u32 sh_backlog_limit = 3 << 20;
/* The bound for small messages (< SH_SMALL_MSG): a receiver that is that
 * far behind a sender of small writes reads them more slowly redirected,
 * one message at a time, than TCP, which coalesces them. 0 = none. */
volatile const __u32 sh_small_limit = 256 << 10;
#define SH_SMALL_MSG 4096
/* 1: a direction switches to redirect only into a receiver seen reading
 * safely (the receiver guard); 0 (tests only): from its first byte. */
volatile const __u8 sh_guard = 1;

/*
 * The attached pod this socket belongs to: the nearest ancestor of the
 * socket's cgroup v2 (set when the socket was created) that has an entry in
 * sockhop_pods. ancestors[] is indexed by a variable, which the verifier only
 * allows through a probe read.
 */
static __always_inline struct sh_pod *sh_pod_of(struct sock *sk, __u64 *pod_id)
{
	struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	int level = BPF_CORE_READ(cg, level);

	for (int i = 0; i < SH_MAX_CGROUP_DEPTH; i++) {
		struct cgroup *anc = NULL;
		struct sh_pod *pod;
		__u64 id;

		if (level - i < 0)
			break;
		bpf_core_read(&anc, sizeof(anc), &cg->ancestors[level - i]);
		if (!anc)
			break;
		id = BPF_CORE_READ(anc, kn, id);
		pod = bpf_map_lookup_elem(&sockhop_pods, &id);
		if (pod) {
			*pod_id = id;
			return pod;
		}
	}
	return NULL;
}

static __always_inline int sh_port_excluded(const struct sh_pod *pod, __u16 port)
{
	for (int i = 0; i < SH_MAX_EXCLUDE_PORTS; i++) {
		if (!pod->exclude_ports[i])
			break;
		if (pod->exclude_ports[i] == port)
			return 1;
	}
	return 0;
}

/* Whether the receiver policy allows redirecting into this socket at all:
 * any socket (the default), or only those owned by a proxy uid. Either way a
 * direction switches to redirect only once the receiver has been seen
 * reading safely (docs/hazards.md). */
static __always_inline int sh_rx_allowed(struct sock *sk)
{
	__u32 uid;

	if (sh_app_receivers)
		return 1;
	uid = BPF_CORE_READ(sk, sk_uid.val);
	for (int i = 0; i < 4; i++)
		if (sh_proxy_uids[i] == uid)
			return 1;
	return 0;
}

/* A cgroup (container) seen splicing or waiting for all on a paired socket:
 * redirect could strand its reads, so its sockets are not paired. */
static __always_inline __u64 sh_cgroup_of(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/*
 * A socket with SO_ZEROCOPY (a listener's is inherited by the sockets it
 * accepts). In the sockhash its sends would go through tcp_bpf_sendmsg,
 * which copies the data: redirected, a MSG_ZEROCOPY send never completes;
 * passed to TCP it completes, but each chunk of the copy takes its own
 * completion id (docs/hazards.md). Such a socket is not paired; one in the
 * sockhash cannot enable it (sockhop_sockopt).
 */
static __always_inline int sh_zerocopy(struct sock *sk)
{
	unsigned long flags = BPF_CORE_READ((struct sock___flags *)sk, __sk_common.skc_flags);

	return (flags >> bpf_core_enum_value(enum sock_flags, SOCK_ZEROCOPY)) & 1;
}

static __always_inline int sh_hazardous(struct sock *sk)
{
	__u64 id = sh_cgroup_of(sk);

	return bpf_map_lookup_elem(&sockhop_hazard, &id) != NULL;
}

/* A cgroup whose earlier paired sockets were read safely all their life. */
static __always_inline int sh_trusted(struct sock *sk)
{
	__u64 id = sh_cgroup_of(sk);
	__u64 *n = bpf_map_lookup_elem(&sockhop_trust, &id);

	return n && *n >= SH_TRUST_CLOSED;
}

/*
 * Not worth pairing: this container's last SH_SHORT_STREAK paired
 * connections to this port closed with nothing redirected (sockhop_short).
 * One connection in SH_SHORT_SAMPLE is still paired, to learn again.
 */
static __always_inline int sh_short_lived(struct sock *sk, __u16 port)
{
	struct sh_short_key key = {.cgroup = sh_cgroup_of(sk), .port = port};
	struct sh_short *s = bpf_map_lookup_elem(&sockhop_short, &key);

	if (!s || s->wasted < SH_SHORT_STREAK)
		return 0;
	return __sync_fetch_and_add(&s->seen, 1) % SH_SHORT_SAMPLE != SH_SHORT_SAMPLE - 1;
}

/* A client's sends switched to redirect: its container's connections to
 * this port are worth pairing, whether or not this one is long-lived. */
static __always_inline void sh_short_worth(struct sock *sk)
{
	struct sh_short_key key = {.cgroup = sh_cgroup_of(sk)};
	struct sh_short *s;

	key.port = bpf_ntohs(BPF_CORE_READ((struct sock___port *)sk, __sk_common.skc_dport));
	s = bpf_map_lookup_elem(&sockhop_short, &key);
	if (s && s->wasted) {
		s->wasted = 0;
		s->seen = 0;
	}
}

/* A paired client closed: did its connection redirect anything, either
 * way? Counts the streak sh_short_lived looks at. */
static __always_inline void sh_learn_short(struct sock *sk, const struct sh_sock *state,
					   const struct sh_rx *rx, __u16 port)
{
	struct sh_short_key key = {.cgroup = sh_cgroup_of(sk), .port = port};
	struct sh_short one = {.wasted = 1}, *s;

	s = bpf_map_lookup_elem(&sockhop_short, &key);
	if ((state->flags & SH_SOCK_SWITCHED) || (rx->flags & SH_RX_FED)) {
		if (s && s->wasted) {
			s->wasted = 0;
			s->seen = 0;
		}
		return;
	}
	if (s)
		__sync_fetch_and_add(&s->wasted, 1);
	else
		bpf_map_update_elem(&sockhop_short, &key, &one, BPF_NOEXIST);
}

/* A socket's psock (it is in a sockmap), or NULL. */
static __always_inline struct sk_psock *sh_psock_of(__u64 sk)
{
	unsigned long data = (unsigned long)BPF_CORE_READ((struct sock *)sk, sk_user_data);

	if (!(data & SK_USER_DATA_PSOCK))
		return NULL;
	return (struct sk_psock *)(data & SK_USER_DATA_PTRMASK);
}

/* Bytes redirected into a socket and not yet read, from its address. */
static __always_inline __u32 sh_backlog_of_sk(__u64 sk)
{
	struct sk_psock *psock = sh_psock_of(sk);

	return psock ? BPF_CORE_READ(psock, msg_tot_len) : 0;
}

/* Start watching this socket's reads, and get a callback when it closes. */
static __always_inline int sh_track(struct bpf_sock_ops *skops, struct sock *sk)
{
	struct sh_rx rx = {};
	__u64 addr = (__u64)sk;

	if (sh_rx_allowed(sk))
		rx.flags = SH_RX_ALLOWED;
	/* A receiver of a trusted cgroup counts as seen reading safely. */
	if (sh_trusted(sk))
		rx.flags |= SH_RX_READ;
	if (bpf_map_update_elem(&sockhop_rx, &addr, &rx, BPF_ANY)) {
		sh_count(SH_STAT_ERR_RX, 1);
		return -1;
	}
	/* STATE: to forget it when it closes; RTT (on ACKs of its TCP sends):
	 * to let it retire from the sockhash (sh_retire). */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
					 BPF_SOCK_OPS_RTT_CB_FLAG);
	return 0;
}

/*
 * Load a 32-bit sock_ops context field with the one instruction form the
 * verifier accepts (ctx register + constant offset). Plain C lets clang
 * compute ctx+offset into another register first, or select between two
 * such pointers, and the verifier refuses a load through a modified ctx.
 */
#define SH_CTX_U32(ctx, field)                                                   \
	({                                                                       \
		__u32 __v;                                                       \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                            \
			     : "=r"(__v)                                         \
			     : "r"(ctx), "i"(__builtin_offsetof(struct bpf_sock_ops, field))); \
		__v;                                                             \
	})

/* The socket's addresses as 16 bytes, IPv4 as v4-mapped IPv6. */
static __always_inline void sh_addrs(struct bpf_sock_ops *skops, __u32 local[4],
				     __u32 remote[4])
{
	if (skops->family == AF_INET) {
		local[0] = 0;
		local[1] = 0;
		local[2] = bpf_htonl(0xffff);
		local[3] = SH_CTX_U32(skops, local_ip4);
		remote[0] = 0;
		remote[1] = 0;
		remote[2] = bpf_htonl(0xffff);
		remote[3] = SH_CTX_U32(skops, remote_ip4);
		return;
	}
	local[0] = SH_CTX_U32(skops, local_ip6[0]);
	local[1] = SH_CTX_U32(skops, local_ip6[1]);
	local[2] = SH_CTX_U32(skops, local_ip6[2]);
	local[3] = SH_CTX_U32(skops, local_ip6[3]);
	remote[0] = SH_CTX_U32(skops, remote_ip6[0]);
	remote[1] = SH_CTX_U32(skops, remote_ip6[1]);
	remote[2] = SH_CTX_U32(skops, remote_ip6[2]);
	remote[3] = SH_CTX_U32(skops, remote_ip6[3]);
}

static __always_inline int sh_is_pod_ip(const __u32 ip[4])
{
	struct sh_ip key = {};

	__builtin_memcpy(key.addr, ip, sizeof(key.addr));
	return bpf_map_lookup_elem(&sockhop_podips, &key) != NULL;
}

static __always_inline void sh_pair_client(struct bpf_sock_ops *skops, struct bpf_sock *bsk,
					   struct sock *sk, struct sh_key *key, __u64 pod,
					   __u16 server_port)
{
	struct sh_pending pending = {};
	struct sh_pending *old;
	struct sh_sock *state;
	__u64 addr = (__u64)sk;
	long err;

	if (sh_zerocopy(sk)) {
		sh_count(SH_STAT_SKIP_ZEROCOPY, 1);
		sh_pod_count(pod, SH_PODST_SKIP_ZEROCOPY);
		return;
	}
	if (sh_hazardous(sk)) {
		sh_count(SH_STAT_SKIP_HAZARD, 1);
		sh_pod_count(pod, SH_PODST_SKIP_HAZARD);
		return;
	}
	if (sh_short_lived(sk, server_port)) {
		sh_count(SH_STAT_SKIP_SHORT, 1);
		sh_pod_count(pod, SH_PODST_SKIP_SHORT);
		return;
	}
	pending.client_sk = addr;
	pending.client_pod = pod;
	err = bpf_map_update_elem(&sockhop_pending, &key->conn, &pending, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST */) {
		sh_count(SH_STAT_ERR_PENDING, 1);
		sh_pod_count(pod, SH_PODST_SKIP_MAP_FULL);
		return;
	}
	if (err) {
		/* Another socket named this connection first: neither pairs. */
		old = bpf_map_lookup_elem(&sockhop_pending, &key->conn);
		if (old)
			__sync_fetch_and_or(&old->flags, SH_CONN_AMBIGUOUS);
		sh_count(SH_STAT_SKIP_AMBIGUOUS, 1);
		sh_pod_count(pod, SH_PODST_SKIP_NO_PEER);
		return;
	}

	state = bpf_sk_storage_get(&sockhop_state, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!state) {
		sh_count(SH_STAT_ERR_STORAGE, 1);
		sh_pod_count(pod, SH_PODST_SKIP_MAP_FULL);
		bpf_map_delete_elem(&sockhop_pending, &key->conn);
		return;
	}
	state->peer = *key;
	state->peer.side = SH_SERVER;
	state->peer_sk = 0;
	state->waits = 0;
	state->flags = 0;
	state->tx = SH_TX_TCP;
	state->pod = pod;

	if (sh_track(skops, sk)) {
		sh_pod_count(pod, SH_PODST_SKIP_MAP_FULL);
		bpf_map_delete_elem(&sockhop_pending, &key->conn);
		return;
	}
	if (bpf_sock_hash_update(skops, &sockhop_socks, key, BPF_NOEXIST)) {
		sh_count(SH_STAT_ERR_SOCKHASH, 1);
		sh_pod_count(pod, SH_PODST_SKIP_MAP_FULL);
		bpf_map_delete_elem(&sockhop_pending, &key->conn);
		bpf_map_delete_elem(&sockhop_rx, &addr);
		return;
	}
	sh_count(SH_STAT_PAIRED_CLIENT, 1);
}

/* The server end names the connection the client named: it joins only if
 * the client is waiting, and hands the client its address. Its own tx, and
 * the client's, start on TCP (docs/datapath.md). */
static __always_inline void sh_pair_server(struct bpf_sock_ops *skops, struct bpf_sock *bsk,
					   struct sock *sk, struct sh_key *key, __u64 pod)
{
	struct sh_key client = *key;
	struct sh_pending *pending;
	struct sh_sock *state;
	struct sh_rx *crx;
	__u64 addr = (__u64)sk;
	__u64 flags, client_sk, client_pod;
	enum sh_podst_stat podst = SH_PODST_MAX;
	enum sh_stat stat = SH_STAT_MAX;

	client.side = SH_CLIENT;
	pending = bpf_map_lookup_elem(&sockhop_pending, &key->conn);
	if (!pending) {
		sh_count(SH_STAT_SKIP_NO_CLIENT, 1);
		sh_pod_count(pod, SH_PODST_SKIP_NO_PEER);
		return;
	}
	flags = pending->flags;
	client_sk = pending->client_sk;
	client_pod = pending->client_pod;
	if (flags & (SH_CONN_PAIRED | SH_CONN_AMBIGUOUS)) {
		__sync_fetch_and_or(&pending->flags, SH_CONN_AMBIGUOUS);
		bpf_map_delete_elem(&sockhop_socks, &client);
		sh_count(SH_STAT_SKIP_AMBIGUOUS, 1);
		sh_pod_count(pod, SH_PODST_SKIP_NO_PEER);
		/* A client whose first server joined counted as a direction. */
		if (!(flags & SH_CONN_PAIRED))
			sh_pod_count(client_pod, SH_PODST_SKIP_NO_PEER);
		return;
	}

	/* A connection with a hazardous end (or one with SO_ZEROCOPY), or
	 * whose receivers the policy allows in neither direction, is not
	 * worth pairing: take the client back out so that it costs nothing.
	 * It has redirected nothing (no server address yet), and nothing was
	 * redirected into it. */
	crx = bpf_map_lookup_elem(&sockhop_rx, &client_sk);
	if (sh_zerocopy(sk)) {
		stat = SH_STAT_SKIP_ZEROCOPY;
		podst = SH_PODST_SKIP_ZEROCOPY;
	} else if (sh_hazardous(sk)) {
		stat = SH_STAT_SKIP_HAZARD;
		podst = SH_PODST_SKIP_HAZARD;
	} else if (!sh_rx_allowed(sk) && !(crx && (crx->flags & SH_RX_ALLOWED))) {
		stat = SH_STAT_TX_UNSAFE_RX;
		podst = SH_PODST_SKIP_POLICY;
	}
	if (stat != SH_STAT_MAX) {
		bpf_map_delete_elem(&sockhop_socks, &client);
		bpf_map_delete_elem(&sockhop_pending, &key->conn);
		bpf_map_delete_elem(&sockhop_rx, &client_sk);
		sh_count(stat, 1);
		sh_pod_count(pod, podst);
		sh_pod_count(client_pod, podst);
		return;
	}

	state = bpf_sk_storage_get(&sockhop_state, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!state) {
		sh_count(SH_STAT_ERR_STORAGE, 1);
		sh_pod_count(pod, SH_PODST_SKIP_MAP_FULL);
		return;
	}
	state->peer = client;
	state->peer_sk = client_sk;
	state->tx = SH_TX_TCP;
	state->waits = 0;
	state->flags = 0;
	state->pod = pod;

	if (sh_track(skops, sk)) {
		sh_pod_count(pod, SH_PODST_SKIP_MAP_FULL);
		return;
	}
	if (bpf_sock_hash_update(skops, &sockhop_socks, key, BPF_NOEXIST)) {
		sh_count(SH_STAT_ERR_SOCKHASH, 1);
		sh_pod_count(pod, SH_PODST_SKIP_MAP_FULL);
		bpf_map_delete_elem(&sockhop_rx, &addr);
		return;
	}
	pending->server_sk = addr;
	__sync_fetch_and_or(&pending->flags, SH_CONN_PAIRED);
	sh_count(SH_STAT_PAIRED_SERVER, 1);
	sh_pod_paired(pod, client_pod);
}

/*
 * Its peer leaves the sockhash too, once this socket has: nothing else
 * redirects into the peer (only this socket did, and its sends are on TCP
 * for good), and it can redirect into nothing (this socket's key is gone).
 * In the sockhash all it would keep is tcp_bpf's receive path, slower than
 * plain TCP's: a bulk receiver whose sender left for TCP at the bound reads
 * the rest of the stream through it. Only once nothing redirected into it
 * is unread (leaving frees its psock's queue) and this socket's last
 * redirect is done: SH_RX_INCOMING, which this socket set on the peer's
 * entry before redirecting, is cleared only by a send of ours that did not
 * redirect, and that no other thread was sending beside. Or once our psock
 * is gone: every send of ours holds it until its redirect is queued, so
 * none is on its way (and no send of ours runs sk_msg again to clear it).
 * me: this socket. 1 when the peer is out (or cannot be taken out: closing).
 */
static __always_inline int sh_retire_peer(struct sh_sock *state, __u64 me)
{
	__u64 peer_pod = 0;
	struct sh_rx *rx;

	if (!state->peer_sk)
		return 1;
	rx = bpf_map_lookup_elem(&sockhop_rx, &state->peer_sk);
	if (!rx || (rx->flags & SH_RX_RETIRED))
		return 1;
	if (((rx->flags & SH_RX_INCOMING) || (state->flags & SH_SOCK_INCOMING)) && sh_psock_of(me))
		return 0;
	if (sh_backlog_of_sk(state->peer_sk))
		return 0; /* the next ACK tries again */
	if (bpf_map_delete_elem(&sockhop_socks, &state->peer))
		return 1; /* gone already (it left itself, or closed) */
	__sync_fetch_and_or(&rx->flags, SH_RX_RETIRED);
	sh_count(SH_STAT_RETIRED, 1);
	/* Its own pod (it may be another pod on the node) counts it. */
	if (sh_pod_of((struct sock *)state->peer_sk, &peer_pod))
		sh_pod_count(peer_pod, SH_PODST_RETIRED);
	return 1;
}

/*
 * A socket whose sends are on TCP for good (sh_final) leaves the sockhash,
 * so that its psock goes and it sends as plain TCP — but only once nothing
 * redirected into it is unread (leaving frees its psock's queue) and its
 * peer no longer redirects into it: the peer sets SH_RX_INCOMING on our
 * entry before it redirects (and backs off if it finds RETIRING there), and
 * clears it only from a send that did not redirect; both are atomics on
 * this one word. Then its peer leaves as well (sh_retire_peer). Runs on the
 * ACKs of this socket's TCP sends, under its socket lock, until both have
 * left.
 */
static __always_inline void sh_retire(struct bpf_sock_ops *skops)
{
	struct bpf_sock_ops_kern *kctx = bpf_cast_to_kern_ctx(skops);
	struct bpf_sock *bsk = skops->sk;
	struct sh_sock *state;
	struct sh_key self = {}; /* zeroed: its padding is part of the key */
	struct sh_rx *rx;
	__u64 addr;

	if (!bsk || !kctx->sk)
		return;
	addr = (__u64)kctx->sk;
	rx = bpf_map_lookup_elem(&sockhop_rx, &addr);
	if (!rx)
		return;
	if (!(rx->flags & SH_RX_RETIRING)) {
		/* Taken out by its peer (sh_retire_peer): nothing left to do
		 * on its ACKs. */
		if (rx->flags & SH_RX_RETIRED)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
		return;
	}
	state = bpf_sk_storage_get(&sockhop_state, bsk, 0, 0);
	if (!state)
		return;
	if (!(rx->flags & SH_RX_RETIRED)) {
		if (rx->flags & SH_RX_INCOMING)
			return;
		if (sh_backlog_of_sk(addr))
			return; /* redirected bytes unread: leaving would free them */
		self.conn = state->peer.conn;
		self.side = state->peer.side == SH_SERVER ? SH_CLIENT : SH_SERVER;
		if (bpf_map_delete_elem(&sockhop_socks, &self))
			return;
		__sync_fetch_and_or(&rx->flags, SH_RX_RETIRED);
		sh_count(SH_STAT_RETIRED, 1);
		sh_pod_count(state->pod, SH_PODST_RETIRED);
	}
	if (sh_retire_peer(state, addr))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
}

/* A paired socket closed: forget what was kept for it, and learn from how
 * it was read. */
static __always_inline void sh_closed(struct bpf_sock_ops *skops)
{
	struct bpf_sock_ops_kern *kctx = bpf_cast_to_kern_ctx(skops);
	struct bpf_sock *bsk = skops->sk;
	struct sh_sock *state;
	struct sh_rx *rx;
	__u64 addr, cgroup, one = 1, *n;

	if (!bsk || !kctx->sk)
		return;
	addr = (__u64)kctx->sk;
	rx = bpf_map_lookup_elem(&sockhop_rx, &addr);
	if (rx && rx->reads >= SH_MIN_READS && !(rx->flags & (SH_RX_UNSAFE | SH_RX_WAITALL)) &&
	    !sh_hazardous(kctx->sk)) {
		cgroup = sh_cgroup_of(kctx->sk);
		n = bpf_map_lookup_elem(&sockhop_trust, &cgroup);
		if (n)
			__sync_fetch_and_add(n, 1);
		else
			bpf_map_update_elem(&sockhop_trust, &cgroup, &one, BPF_NOEXIST);
	}
	state = bpf_sk_storage_get(&sockhop_state, bsk, 0, 0);
	/* The client end learns whether its connection was worth pairing. */
	if (rx && state && state->peer.side == SH_SERVER)
		sh_learn_short(kctx->sk, state, rx, bpf_ntohl(skops->remote_port));
	bpf_map_delete_elem(&sockhop_rx, &addr);
	/* A client that never learnt its server's address still has a
	 * pending entry. */
	if (state && state->peer.side == SH_SERVER && !state->peer_sk)
		bpf_map_delete_elem(&sockhop_pending, &state->peer.conn);
}

/* A socket of an attached pod that carried data before it was established. */
static __always_inline void sh_pod_skip_data(struct bpf_sock_ops *skops)
{
	struct bpf_sock_ops_kern *kctx = bpf_cast_to_kern_ctx(skops);
	__u64 pod_id = 0;

	if (kctx->sk && sh_pod_of(kctx->sk, &pod_id))
		sh_pod_count(pod_id, SH_PODST_SKIP_DATA);
}

static __always_inline void sh_established(struct bpf_sock_ops *skops, enum sh_side side)
{
	struct bpf_sock_ops_kern *kctx;
	__u32 local_ip[4], remote_ip[4];
	__u16 local_port, remote_port;
	struct sh_key key = {};
	struct sh_pod *pod;
	__u64 pod_id = 0;
	struct bpf_sock *bsk;
	struct sk_buff *skb;
	struct sock *sk;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return;
	/* Data already flowed (TCP Fast Open): too late to pair in order. */
	if (skops->data_segs_in || skops->data_segs_out) {
		sh_count(SH_STAT_SKIP_DATA, 1);
		sh_pod_skip_data(skops);
		return;
	}

	bsk = skops->sk;
	if (!bsk)
		return;
	kctx = bpf_cast_to_kern_ctx(skops);
	sk = kctx->sk;
	skb = kctx->skb;
	if (!sk || !skb)
		return;

	pod = sh_pod_of(sk, &pod_id);
	if (!pod) {
		sh_count(SH_STAT_SKIP_NO_POD, 1);
		return;
	}
	local_port = skops->local_port;
	remote_port = bpf_ntohl(skops->remote_port);
	if (sh_port_excluded(pod, local_port) || sh_port_excluded(pod, remote_port)) {
		sh_count(SH_STAT_SKIP_EXCLUDED, 1);
		sh_pod_count(pod_id, SH_PODST_SKIP_EXCLUDED);
		return;
	}

	sh_addrs(skops, local_ip, remote_ip);
	/* The interface the handshake's last packet came in on: loopback
	 * means both ends live in this network namespace (plain loopback or
	 * iptables REDIRECT); anything else is another namespace, paired only
	 * when both IPs are this node's accelerated pods. */
	if (BPF_CORE_READ(skb, skb_iif) == LOOPBACK_IFINDEX) {
		key.conn.netns = bpf_get_netns_cookie(skops);
	} else if (!sh_is_pod_ip(local_ip) || !sh_is_pod_ip(remote_ip)) {
		sh_count(SH_STAT_SKIP_REMOTE, 1);
		sh_pod_count(pod_id, SH_PODST_SKIP_REMOTE);
		return;
	}

	key.side = side;
	if (side == SH_CLIENT) {
		__builtin_memcpy(key.conn.client_ip, local_ip, sizeof(local_ip));
		key.conn.client_port = local_port;
		key.conn.client_seq = skops->snd_una;
		key.conn.server_seq = skops->rcv_nxt;
		sh_pair_client(skops, bsk, sk, &key, pod_id, remote_port);
	} else {
		__builtin_memcpy(key.conn.client_ip, remote_ip, sizeof(remote_ip));
		key.conn.client_port = remote_port;
		key.conn.client_seq = skops->rcv_nxt;
		key.conn.server_seq = skops->snd_una;
		sh_pair_server(skops, bsk, sk, &key, pod_id);
	}
}

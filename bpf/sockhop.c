// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockhop: move the bytes of TCP connections between a pod's application
 * and its sidecar (and between sidecars on one node) straight into the peer
 * socket. sockops pairs the two ends of a connection at establishment;
 * sk_msg redirects each send into the peer's receive queue, or lets it
 * through TCP. Order and exactness rules: docs/datapath.md.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "lib/kernel.h"
#include "lib/maps.h"
#include "lib/pair.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("sockops")
int sockhop_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		sh_established(skops, SH_CLIENT);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		sh_established(skops, SH_SERVER);
		break;
	}
	return 1;
}

/* Bytes already redirected into the chosen peer and not yet read. */
static __always_inline __u32 sh_peer_backlog(struct sk_msg_md *msg)
{
	struct sk_msg *kmsg = bpf_cast_to_kern_ctx(msg);
	struct sk_psock *psock;
	unsigned long data;

	data = (unsigned long)BPF_CORE_READ(kmsg, sk_redir, sk_user_data);
	if (!(data & SK_USER_DATA_PSOCK))
		return 0;
	psock = (struct sk_psock *)(data & SK_USER_DATA_PTRMASK);
	return BPF_CORE_READ(psock, msg_tot_len);
}

/* A client's first send: did its server end join, and may we redirect into it? */
static __always_inline void sh_resolve(struct sh_sock *state)
{
	struct sh_pending *pending = bpf_map_lookup_elem(&sockhop_pending, &state->peer.conn);
	__u64 flags = pending ? pending->flags : 0;

	if (!(flags & SH_CONN_PAIRED) || (flags & SH_CONN_AMBIGUOUS)) {
		state->tx = SH_TX_NO_PEER;
		sh_count(SH_STAT_TX_NO_PEER, 1);
		return;
	}
	bpf_map_delete_elem(&sockhop_pending, &state->peer.conn);
	if (!(flags & SH_CONN_SERVER_RX_SAFE)) {
		state->tx = SH_TX_UNSAFE_RX;
		return; /* counted when the server joined */
	}
	state->tx = SH_TX_REDIRECT;
}

SEC("sk_msg")
int sockhop_msg(struct sk_msg_md *msg)
{
	struct sh_sock *state;
	struct bpf_sock *sk = msg->sk;

	/* Every path returns SK_PASS: a send sockhop cannot redirect goes
	 * through TCP, never dropped. Sends on one socket are serialised by its
	 * socket lock, so state->tx has a single writer. */
	if (!sk)
		return SK_PASS;
	state = bpf_sk_storage_get(&sockhop_state, sk, 0, 0);
	if (!state)
		return SK_PASS;
	if (state->tx == SH_TX_PENDING)
		sh_resolve(state);
	if (state->tx != SH_TX_REDIRECT)
		goto tcp;

	/* Returns SK_DROP when the peer left the sockhash (closed): this
	 * direction goes through TCP from now on. */
	if (bpf_msg_redirect_hash(msg, &sockhop_socks, &state->peer, BPF_F_INGRESS) != SK_PASS) {
		state->tx = SH_TX_NO_PEER;
		sh_count(SH_STAT_TX_NO_PEER, 1);
		goto tcp;
	}
	sh_count(SH_STAT_REDIR_MSGS, 1);
	sh_count(SH_STAT_REDIR_BYTES, msg->size);

	/* Back-pressure: redirected data bypasses the receiver's TCP window.
	 * This message is committed; if the receiver is more than the bound
	 * behind, the next ones go through TCP, whose window holds the writer
	 * back. The receiver reads the redirected bytes before TCP's. */
	if (sh_backlog_limit && sh_peer_backlog(msg) > sh_backlog_limit) {
		state->tx = SH_TX_BACKPRESSURE;
		sh_count(SH_STAT_TX_BACKPRESSURE, 1);
	}
	return SK_PASS;

tcp:
	sh_count(SH_STAT_TCP_MSGS, 1);
	sh_count(SH_STAT_TCP_BYTES, msg->size);
	return SK_PASS;
}

/* Keep these enums in BTF so that bpf2go generates their Go constants. */
const enum sh_stat *sh_stat_btf __attribute__((unused));
const enum sh_tx *sh_tx_btf __attribute__((unused));

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-pod counters: what happened to the connections of each attached pod,
 * for the agent's per-pod Events and `sockhop status --pods`. Counted only
 * at per-connection events (pairing, a direction's switch to redirect, its
 * final state, retirement), never per message. User space creates a pod's
 * entry (zeroed) when it attaches the pod and deletes it at detach; BPF
 * never creates one, so a socket of a pod being detached counts nothing.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

enum sh_podst_stat {
	SH_PODST_CONNS,           /* connections paired with an end in this pod */
	SH_PODST_DIRS,            /* this pod's sockets paired: its directions */
	SH_PODST_SWITCHED,        /* directions switched from TCP to redirect */
	SH_PODST_TX_NO_PEER,      /* directions on TCP for good, by reason: the peer left */
	SH_PODST_TX_UNSAFE_RX,    /* ...the receiver guard (splices, waits for all, policy) */
	SH_PODST_TX_BACKPRESSURE, /* ...the receiver fell behind by the bound */
	SH_PODST_POISONED,        /* directions kept on redirect for a stranded receiver */
	SH_PODST_RETIRED,         /* sockets that left the sockhash to send as plain TCP */
	SH_PODST_SKIP_NO_PEER,    /* sockets not paired, by reason: no peer end joined */
	SH_PODST_SKIP_REMOTE,     /* ...the peer is not in this node's accelerated pods */
	SH_PODST_SKIP_EXCLUDED,   /* ...an excluded port */
	SH_PODST_SKIP_HAZARD,     /* ...their container was seen splicing or waiting for all */
	SH_PODST_SKIP_POLICY,     /* ...the receiver policy allows neither direction */
	SH_PODST_SKIP_DATA,       /* ...data flowed before establishment (TFO) */
	SH_PODST_SKIP_MAP_FULL,   /* ...a map refused the entry (full) */
	SH_PODST_SKIP_ZEROCOPY,   /* ...an end has SO_ZEROCOPY */
	SH_PODST_SKIP_SHORT,      /* ...its connections to that port were short-lived */
	SH_PODST_MAX,
};

struct sh_podst {
	__u64 n[SH_PODST_MAX];
};

/* Keyed by the pod's attach cgroup id, as sockhop_pods. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct sh_podst);
} sockhop_podst SEC(".maps");

static __always_inline void sh_pod_count(__u64 pod, enum sh_podst_stat stat)
{
	struct sh_podst *s;

	if (!pod)
		return;
	s = bpf_map_lookup_elem(&sockhop_podst, &pod);
	if (s)
		__sync_fetch_and_add(&s->n[stat], 1);
}

/* Both ends of a connection joined: each pod counts it once, and each of
 * its ends as a direction. */
static __always_inline void sh_pod_paired(__u64 server_pod, __u64 client_pod)
{
	sh_pod_count(server_pod, SH_PODST_CONNS);
	sh_pod_count(server_pod, SH_PODST_DIRS);
	if (client_pod != server_pod)
		sh_pod_count(client_pod, SH_PODST_CONNS);
	sh_pod_count(client_pod, SH_PODST_DIRS);
}

/* A direction went to TCP for good (sh_final). A client whose server never
 * joined has no peer address: it was never paired, its socket counts as
 * such rather than as a direction. */
static __always_inline void sh_pod_final(const struct sh_sock *state, __u32 tx)
{
	if (!state->peer_sk) {
		sh_pod_count(state->pod, SH_PODST_SKIP_NO_PEER);
		return;
	}
	switch (tx) {
	case SH_TX_NO_PEER:
		sh_pod_count(state->pod, SH_PODST_TX_NO_PEER);
		break;
	case SH_TX_UNSAFE_RX:
		sh_pod_count(state->pod, SH_PODST_TX_UNSAFE_RX);
		break;
	case SH_TX_BACKPRESSURE:
		sh_pod_count(state->pod, SH_PODST_TX_BACKPRESSURE);
		break;
	}
}

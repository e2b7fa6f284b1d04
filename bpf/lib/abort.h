/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Aborting stranded receivers. A receiver that starts to splice (or the
 * like) while redirected bytes sit unread in its psock can never read them:
 * the guard (sys_enter) records the socket here, and the agent runs the TCP
 * iterator in bpf/abort.c in the socket's network namespace, which destroys
 * it with bpf_sock_destroy (ECONNABORTED for the receiver, a reset for its
 * peer) and writes the outcome back into the entry. The agent reads the
 * outcome (for its Event) and deletes the entry. A receiver that recovered
 * (it reads with recvmsg again, or drained the bytes) is forgotten by the
 * iterator itself, and recorded again if it is stranded again.
 * docs/hazards.md.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* CO-RE flavours (the ___ suffix is ignored when matching kernel types):
 * kernel.h owns struct sock, these only add the path to the namespace. */
struct ns_common___sh {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net___sh {
	struct ns_common___sh ns;
} __attribute__((preserve_access_index));

struct sock_common___sh {
	struct {
		struct net___sh *net;
	} skc_net;
} __attribute__((preserve_access_index));

struct sock___sh {
	struct sock_common___sh __sk_common;
} __attribute__((preserve_access_index));

enum sh_strand_state {
	SH_STRAND_PENDING = 0,   /* recorded by the guard, not yet iterated */
	SH_STRAND_ABORTED = 1,   /* destroyed: both ends saw an error */
	SH_STRAND_RECOVERED = 2, /* its reader drained the redirected bytes
				  * (recvmsg again): nothing to abort */
	SH_STRAND_FAILED = 3,    /* bpf_sock_destroy returned an error (err) */
};

/* A stranded receiver, keyed by its kernel address (as sockhop_rx). */
struct sh_strand {
	__u64 netns;  /* inode of its network namespace (nsfs st_ino) */
	__u64 cgroup; /* its cgroup v2 id: the container, for the Event */
	__u64 since;  /* bpf_ktime_get_ns() when the guard saw it */
	__u64 done;   /* bpf_ktime_get_ns() when the iterator handled it */
	__u32 state;  /* enum sh_strand_state */
	__s32 err;    /* bpf_sock_destroy's error, for SH_STRAND_FAILED */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct sh_strand);
} sockhop_strand SEC(".maps");

/* Connections aborted, one counter (the agent's sockhop_guard_events_total
 * {event="aborted"}). Its own map so that sockhop_stats keeps its layout. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sockhop_aborts SEC(".maps");

/* Record a receiver the guard just saw stranded. A full map (4096 stranded
 * receivers waiting for the agent) loses the record: the connection then
 * stalls as it would without the abort, still counted as stranded. */
static __always_inline long sh_strand_record(__u64 sk, __u64 cgroup)
{
	struct sh_strand s = {};

	s.netns = BPF_CORE_READ((struct sock___sh *)sk, __sk_common.skc_net.net, ns.inum);
	s.cgroup = cgroup;
	s.since = bpf_ktime_get_ns();
	return bpf_map_update_elem(&sockhop_strand, &sk, &s, BPF_NOEXIST);
}

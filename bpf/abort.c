// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockhop's abort: a TCP iterator that destroys the stranded receivers the
 * guard recorded in sockhop_strand (bpf/lib/abort.h), and nothing else. A
 * separate object from sockhop.c: bpf_sock_destroy needs Linux 6.5, and a
 * kernel without it still loads the datapath (the maps are shared from Go).
 * iter/tcp walks the TCP sockets of the network namespace the iterator is
 * created in: the agent creates it from inside the pod's namespace.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "lib/kernel.h"
#include "lib/maps.h"
#include "lib/pair.h"
#include "lib/abort.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Defined and used, not only declared: cilium/ebpf checks a kfunc's
 * prototype against the kernel's, and a forward declaration (BTF FWD, what
 * clang emits for a struct only pointed to) never matches the kernel's
 * STRUCT ("type mismatch between Fwd and Struct: incompatible types"). */
struct sock_common {
	unsigned short skc_family;
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* tcp_abort: ECONNABORTED to the receiver's pending and next calls, a reset
 * to its peer. The iterator holds the socket lock. The record says so
 * first: the socket closes inside bpf_sock_destroy, and the close
 * tracepoint (sockhop_close) forgets a record still pending. */
static __always_inline int sh_destroy(struct sock_common *skc, struct sh_strand *s)
{
	__u32 key = 0;
	__u64 *n;
	int err;

	s->state = SH_STRAND_ABORTED;
	err = bpf_sock_destroy(skc);
	if (err) {
		s->state = SH_STRAND_FAILED;
		s->err = err;
		return 0;
	}
	n = bpf_map_lookup_elem(&sockhop_aborts, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

SEC("iter/tcp")
int sockhop_abort(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sh_strand *s;
	struct sh_rx *rx;
	__u64 sk;

	/* (Reading a field also makes clang emit struct sock_common in full,
	 * which the kfunc prototype check needs.) */
	if (!skc || (skc->skc_family != AF_INET && skc->skc_family != AF_INET6))
		return 0;
	sk = (__u64)skc;
	s = bpf_map_lookup_elem(&sockhop_strand, &sk);
	if (!s || s->state != SH_STRAND_PENDING)
		return 0;
	/* Only a socket sockhop paired and saw stranded (a socket at a
	 * reused address has a fresh sockhop_rx entry without the flag)... */
	rx = bpf_map_lookup_elem(&sockhop_rx, &sk);
	if (!rx || !(rx->flags & SH_RX_STRANDED))
		return 0; /* stale: the agent drops the entry */
	s->done = bpf_ktime_get_ns();
	/* ...and only while its reader is stuck: not one that went back to
	 * recvmsg since (it reads the redirected bytes first, in order), nor
	 * one whose redirected bytes are all read. Such a receiver is
	 * forgotten here, and recorded again if its next splice finds
	 * redirected bytes unread or bytes land behind it. (The iterator
	 * holds its socket lock, as does a redirect that queues into it.) */
	if ((rx->flags & SH_RX_RECVD) || !sh_backlog_of_sk(sk)) {
		__sync_fetch_and_and(&rx->flags, ~(__u64)(SH_RX_STRANDED | SH_RX_RECVD));
		bpf_map_delete_elem(&sockhop_strand, &sk);
		return 0;
	}
	return sh_destroy(skc, s);
}

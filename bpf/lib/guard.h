// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The receiver guard's marking, shared by the datapath's tracepoints
 * (sockhop.c) and the guard on kernel functions (fguard.c).
 */
#ifndef SOCKHOP_GUARD_H
#define SOCKHOP_GUARD_H

#define MSG_WAITALL 0x100

/* Learn a hazard of a container (cgroup). */
static __always_inline void sh_learn(__u64 cgroup, __u64 hazard)
{
	__u64 *h;

	/* This container's later sockets are not paired. */
	bpf_map_delete_elem(&sockhop_trust, &cgroup);
	h = bpf_map_lookup_elem(&sockhop_hazard, &cgroup);
	if (h)
		__sync_fetch_and_or(h, hazard);
	else
		bpf_map_update_elem(&sockhop_hazard, &cgroup, &hazard, BPF_NOEXIST);
}

/* A receiver seen splicing (or the like) has redirected bytes unread, which
 * no such call sees: record it once, for the agent to abort (bpf/abort.c). */
static __always_inline void sh_stranded(struct sh_rx *rx, __u64 sk, __u64 cgroup)
{
	if (__sync_fetch_and_or(&rx->flags, SH_RX_STRANDED) & SH_RX_STRANDED)
		return;
	sh_learn(cgroup, SH_HAZARD_STRANDED);
	/* Not recorded (the map is full): the next splice or landing tries
	 * again, and counts it then — once per recording. */
	if (sh_strand_record(sk, cgroup)) {
		__sync_fetch_and_and(&rx->flags, ~(__u64)SH_RX_STRANDED);
		return;
	}
	sh_count(SH_STAT_RX_STRANDED, 1);
}

static __always_inline void sh_unsafe(struct sh_rx *rx, __u64 sk, __u64 hazard)
{
	__u64 cgroup = sh_cgroup_of((struct sock *)sk);
	__u64 flag = hazard == SH_HAZARD_WAITALL ? SH_RX_WAITALL : SH_RX_UNSAFE;
	__u64 old;

	if (!(rx->flags & flag)) {
		old = __sync_fetch_and_or(&rx->flags, flag);
		if (!(old & (SH_RX_UNSAFE | SH_RX_WAITALL)))
			sh_count(SH_STAT_RX_UNSAFE, 1);
	}
	if (flag == SH_RX_UNSAFE) {
		/* Every splice (not only the first): one that finds
		 * redirected bytes unread cannot see them, whatever the reader
		 * did in between. Bytes that land later: sockhop_ready. */
		if (rx->flags & SH_RX_RECVD)
			__sync_fetch_and_and(&rx->flags, ~(__u64)SH_RX_RECVD);
		if (sh_backlog_of_sk(sk))
			sh_stranded(rx, sk, cgroup);
	}
	sh_learn(cgroup, hazard);
}

/* A read that redirected data would break is about to start on sk: the
 * guard (sh_unsafe) for a paired socket. */
static __always_inline void sh_guard_sk(__u64 sk, __u64 hazard)
{
	struct sh_rx *rx = bpf_map_lookup_elem(&sockhop_rx, &sk);

	if (rx)
		sh_unsafe(rx, sk, hazard);
}

#endif /* SOCKHOP_GUARD_H */

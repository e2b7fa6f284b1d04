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
#include "lib/abort.h"
#include "lib/guard.h"

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
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			sh_closed(skops);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		sh_retire(skops);
		break;
	}
	return 1;
}

#define sh_backlog_of sh_backlog_of_sk

/* ...and of the peer this message was just redirected into. */
static __always_inline __u32 sh_redir_backlog(struct sk_msg_md *msg)
{
	struct sk_msg *kmsg = bpf_cast_to_kern_ctx(msg);

	return sh_backlog_of((__u64)BPF_CORE_READ(kmsg, sk_redir));
}

/* This socket's own entry in sockhop_rx. */
static __always_inline struct sh_rx *sh_self(struct sk_msg_md *msg)
{
	struct sk_msg *kmsg = bpf_cast_to_kern_ctx(msg);
	__u64 me = (__u64)BPF_CORE_READ(kmsg, sk);

	return bpf_map_lookup_elem(&sockhop_rx, &me);
}

/*
 * Is this send the only thread in the socket's tcp_bpf paths? Each send
 * holds a reference to the socket's psock for its whole length — the
 * queueing of a redirect into the peer included, which runs after the
 * program with our socket lock released — and so does a reader in
 * tcp_bpf_recvmsg; the sockhash entry holds one more while the socket is in
 * it. SH_RX_RETIRED: it left, under this lock (or its peer took it out,
 * which the peer does only once it is out itself: nothing to protect then).
 */
static __always_inline int sh_sole_thread(struct sk_msg_md *msg)
{
	struct sk_msg *kmsg = bpf_cast_to_kern_ctx(msg);
	__u64 me = (__u64)BPF_CORE_READ(kmsg, sk);
	struct sk_psock *psock = sh_psock_of(me);
	struct sh_rx *self;
	int linked = 1;

	if (!psock)
		return 0;
	self = bpf_map_lookup_elem(&sockhop_rx, &me);
	if (self && (self->flags & SH_RX_RETIRED))
		linked = 0;
	return BPF_CORE_READ(psock, refcnt.refs.counter) <= 1 + linked;
}

/* We no longer redirect into the peer: let it retire. Only from a run that
 * did not redirect: a redirect is committed by the program but queued after
 * it returns, so the run after the last redirect is the first that may —
 * if no other thread is sending on this socket: another one's redirect may
 * still be on its way (two threads writing one socket). Then a later send
 * clears it, or the peer is taken out once this socket's psock is gone
 * (sh_retire_peer). */
static __always_inline void sh_stop_incoming(struct sk_msg_md *msg, struct sh_sock *state)
{
	struct sh_rx *peer;

	if (!(state->flags & SH_SOCK_INCOMING))
		return;
	if (!sh_sole_thread(msg)) {
		sh_count(SH_STAT_INCOMING_HELD, 1);
		return;
	}
	peer = bpf_map_lookup_elem(&sockhop_rx, &state->peer_sk);
	if (peer)
		__sync_fetch_and_and(&peer->flags, ~(__u64)SH_RX_INCOMING);
	state->flags &= ~SH_SOCK_INCOMING;
}

/* This direction is on TCP for good: say why and ask to leave the sockhash
 * (sh_retire, in sockops) — which ends redirects into this socket too. Not
 * when the reason is the receiver (it splices, or the policy excludes it):
 * the other direction, into this socket, may still be worth redirecting
 * (an upload into a sidecar). committed: this run redirected a message. */
static __always_inline void sh_final(struct sk_msg_md *msg, struct sh_sock *state, __u32 tx,
				     enum sh_stat why, int committed)
{
	struct sh_rx *self;

	state->tx = tx;
	sh_count(why, 1);
	sh_pod_final(state, tx);
	if (tx != SH_TX_UNSAFE_RX) {
		self = sh_self(msg);
		if (self)
			__sync_fetch_and_or(&self->flags, SH_RX_RETIRING);
	}
	if (!committed)
		sh_stop_incoming(msg, state);
}

/* A client learns its server's address from the pending entry, once the
 * server joined; the entry is done with then. 1 while a peer is known or
 * may still join, 0 when none will. */
static __always_inline int sh_peer_sk(struct sh_sock *state)
{
	struct sh_pending *p;
	__u64 peer;

	if (state->peer_sk)
		return 1;
	p = bpf_map_lookup_elem(&sockhop_pending, &state->peer.conn);
	if (!p || (p->flags & SH_CONN_AMBIGUOUS)) {
		if (p)
			bpf_map_delete_elem(&sockhop_pending, &state->peer.conn);
		return 0; /* the caller makes it final */
	}
	peer = p->server_sk;
	if (!peer) {
		/* Not joined yet (it may, when softirqs run late), or never
		 * (the server's cgroup is not attached). */
		if (++state->waits >= SH_MAX_WAITS) {
			bpf_map_delete_elem(&sockhop_pending, &state->peer.conn);
			/* A server that joined between the two reads. */
			if (!p->server_sk)
				return 0; /* the caller makes it final */
			state->peer_sk = p->server_sk;
			return 1;
		}
		return 1; /* not yet */
	}
	state->peer_sk = peer;
	bpf_map_delete_elem(&sockhop_pending, &state->peer.conn);
	return 1;
}

/*
 * May this direction leave TCP for redirect now? Only once the receiver has
 * read every byte this socket wrote over TCP: its copied_seq equals our
 * write_seq (invariant 2, for every datapath). We hold our socket lock, so
 * our write_seq is stable; the receiver's copied_seq only grows, so
 * equality means nothing of ours is left in its TCP queue and a redirected
 * byte is read after all of them. The receiver's fields are read through
 * its address: a stale read can only delay the switch or pick a socket that
 * left the sockhash, where the redirect fails and this direction stays on
 * TCP. The receiver guard adds: the receiver is a socket the policy allows,
 * has been seen reading with recvmsg/read without MSG_WAITALL and never with
 * splice and the like, and does not wait for more than one byte
 * (SO_RCVLOWAT: tcp_recvmsg would sleep on TCP bytes that never come).
 */
static __always_inline int sh_may_switch(struct sk_msg_md *msg, struct sh_sock *state)
{
	struct sk_msg *kmsg;
	struct sh_rx *rx;
	struct sock *me;
	__u64 peer, flags, old;
	__u32 written, read;

	if (!sh_peer_sk(state)) {
		sh_final(msg, state, SH_TX_NO_PEER, SH_STAT_TX_NO_PEER, 0);
		return 0;
	}
	peer = state->peer_sk;
	if (!peer)
		return 0; /* the server may still join */
	rx = bpf_map_lookup_elem(&sockhop_rx, &peer);
	if (!rx)
		return 0; /* closing */
	flags = rx->flags;
	if (flags & (SH_RX_RETIRING | SH_RX_RETIRED)) {
		sh_final(msg, state, SH_TX_NO_PEER, SH_STAT_TX_NO_PEER, 0);
		return 0;
	}
	if (sh_guard) {
		if (!(flags & SH_RX_ALLOWED) || (flags & (SH_RX_UNSAFE | SH_RX_WAITALL))) {
			sh_final(msg, state, SH_TX_UNSAFE_RX, SH_STAT_TX_UNSAFE_RX, 0);
			return 0;
		}
		if (!(flags & SH_RX_READ) || BPF_CORE_READ((struct sock *)peer, sk_rcvlowat) > 1)
			return 0;
	}
	kmsg = bpf_cast_to_kern_ctx(msg);
	me = BPF_CORE_READ(kmsg, sk);
	written = BPF_CORE_READ((struct tcp_sock *)me, write_seq);
	read = BPF_CORE_READ((struct tcp_sock *)peer, copied_seq);
	if (written != read || sh_backlog_of(peer))
		return 0;
	/* Tell the receiver we redirect into it, on its own word: a receiver
	 * that retires sets RETIRING on the same word, so one atomic sees the
	 * other whatever the CPU's memory model. */
	old = __sync_fetch_and_or(&rx->flags, SH_RX_INCOMING);
	if (old & (SH_RX_RETIRING | SH_RX_RETIRED)) {
		if (!(old & SH_RX_INCOMING))
			__sync_fetch_and_and(&rx->flags, ~(__u64)SH_RX_INCOMING);
		sh_final(msg, state, SH_TX_NO_PEER, SH_STAT_TX_NO_PEER, 0);
		return 0;
	}
	/* The flags were read before copied_seq: a reader that started to
	 * splice in between (its guard sets UNSAFE before the splice reads,
	 * and the read moved copied_seq) shows in this atomic's old value,
	 * which is ordered after our copied_seq read. */
	if (sh_guard && (old & (SH_RX_UNSAFE | SH_RX_WAITALL))) {
		if (!(old & SH_RX_INCOMING))
			__sync_fetch_and_and(&rx->flags, ~(__u64)SH_RX_INCOMING);
		sh_final(msg, state, SH_TX_UNSAFE_RX, SH_STAT_TX_UNSAFE_RX, 0);
		return 0;
	}
	if (!(old & SH_RX_FED))
		__sync_fetch_and_or(&rx->flags, SH_RX_FED);
	state->flags |= SH_SOCK_INCOMING | SH_SOCK_SWITCHED;
	return 1;
}

static __always_inline int sh_tcp(struct sk_msg_md *msg)
{
	sh_count(SH_STAT_TCP_MSGS, 1);
	sh_count(SH_STAT_TCP_BYTES, msg->size);
	return SK_PASS;
}

static __always_inline int sh_redirect(struct sk_msg_md *msg, struct sh_sock *state)
{
	/* Returns SK_DROP when the peer left the sockhash (closed): this
	 * direction goes through TCP from now on. */
	if (bpf_msg_redirect_hash(msg, &sockhop_socks, &state->peer, BPF_F_INGRESS) != SK_PASS) {
		sh_final(msg, state, SH_TX_NO_PEER, SH_STAT_TX_NO_PEER, 0);
		return sh_tcp(msg);
	}
	sh_count(SH_STAT_REDIR_MSGS, 1);
	sh_count(SH_STAT_REDIR_BYTES, msg->size);
	return SK_PASS;
}

/*
 * The receiver started reading in a way that does not see redirected data
 * (splice...) while bytes we redirected were still unread. Sending over TCP
 * now would let it read later bytes first; so this direction stays on
 * redirect (a receiver that goes back to recvmsg gets everything in order,
 * and once it has, the direction leaves for TCP), bounded: past the bound
 * the send fails (EACCES) instead of queueing more.
 */
static __always_inline int sh_poisoned(struct sk_msg_md *msg, struct sh_sock *state)
{
	__u32 backlog = sh_backlog_of(state->peer_sk);

	if (!backlog) {
		sh_final(msg, state, SH_TX_UNSAFE_RX, SH_STAT_TX_UNSAFE_RX, 0);
		return sh_tcp(msg);
	}
	if (sh_backlog_limit && backlog > sh_backlog_limit)
		return SK_DROP;
	return sh_redirect(msg, state);
}

SEC("sk_msg")
int sockhop_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct sh_sock *state;
	struct sh_rx *rx;

	/* Every path but a poisoned one returns SK_PASS: a send sockhop does
	 * not redirect goes through TCP, never dropped. Sends on one socket
	 * are serialised by its socket lock, so state has one writer. */
	if (!sk)
		return SK_PASS;
	state = bpf_sk_storage_get(&sockhop_state, sk, 0, 0);
	if (!state)
		return SK_PASS;

	switch (state->tx) {
	case SH_TX_TCP:
		if (!sh_may_switch(msg, state))
			return sh_tcp(msg);
		state->tx = SH_TX_REDIRECT;
		sh_count(SH_STAT_TX_SWITCH, 1);
		sh_pod_count(state->pod, SH_PODST_SWITCHED);
		if (state->peer.side == SH_SERVER) /* a client */
			sh_short_worth((struct sock *)BPF_CORE_READ((struct sk_msg *)bpf_cast_to_kern_ctx(msg), sk));
		break;
	case SH_TX_REDIRECT:
		break;
	case SH_TX_POISONED:
		return sh_poisoned(msg, state);
	default:
		/* On TCP for good since an earlier run, which may have
		 * redirected the last message into the peer. */
		sh_stop_incoming(msg, state);
		return sh_tcp(msg);
	}

	rx = bpf_map_lookup_elem(&sockhop_rx, &state->peer_sk);
	/* The receiver was seen reading with MSG_WAITALL or splicing (or
	 * the like) since. A recvmsg reader, MSG_WAITALL included, reads
	 * redirected bytes before TCP's: leave for TCP. A splicer reads only
	 * TCP's: leave only if nothing we redirected is unread, else stay
	 * (sh_poisoned). */
	if (sh_guard && rx && (rx->flags & (SH_RX_UNSAFE | SH_RX_WAITALL))) {
		if ((rx->flags & SH_RX_UNSAFE) && sh_backlog_of(state->peer_sk)) {
			state->tx = SH_TX_POISONED;
			sh_count(SH_STAT_TX_POISONED, 1);
			sh_pod_count(state->pod, SH_PODST_POISONED);
			return sh_poisoned(msg, state);
		}
		sh_final(msg, state, SH_TX_UNSAFE_RX, SH_STAT_TX_UNSAFE_RX, 0);
		return sh_tcp(msg);
	}
	if (rx && (rx->flags & SH_RX_RETIRING)) {
		/* The peer's own sends are on TCP for good and it wants to
		 * leave the sockhash: stop redirecting into it. */
		sh_final(msg, state, SH_TX_NO_PEER, SH_STAT_TX_NO_PEER, 0);
		return sh_tcp(msg);
	}

	if (sh_redirect(msg, state) != SK_PASS || state->tx != SH_TX_REDIRECT)
		return SK_PASS;
	/* Back-pressure: redirected data bypasses the receiver's TCP window.
	 * This message is committed; if the receiver is more than the bound
	 * behind, the next ones go through TCP, whose window holds the writer
	 * back, for good: this socket then leaves the sockhash to send as
	 * plain TCP (a sender that never pauses would not catch up anyway). */
	if (sh_backlog_limit) {
		__u32 limit = sh_backlog_limit;

		/* A stream of small writes that its receiver does not keep up
		 * with: TCP carries it faster (it coalesces them). */
		if (msg->size < SH_SMALL_MSG && sh_small_limit && sh_small_limit < limit)
			limit = sh_small_limit;
		if (sh_redir_backlog(msg) > limit)
			sh_final(msg, state, SH_TX_BACKPRESSURE, SH_STAT_TX_BACKPRESSURE, 1);
	}
	return SK_PASS;
}

/*
 * The receive side. A paired socket read with recvmsg/read (this tracepoint
 * follows every sock_recvmsg) becomes a receiver redirect may switch into;
 * MSG_WAITALL makes it unsafe.
 */
#define MSG_PEEK 2

SEC("tp_btf/sock_recv_length")
int sockhop_recv(unsigned long long *ctx)
{
	__u64 sk = ctx[0];
	int ret = (int)ctx[1];
	int flags = (int)ctx[2];
	struct sh_rx *rx;

	rx = bpf_map_lookup_elem(&sockhop_rx, &sk);
	if (!rx)
		return 0;
	if (flags & MSG_WAITALL) {
		sh_unsafe(rx, sk, SH_HAZARD_WAITALL);
		return 0;
	}
	if (ret <= 0 || (flags & MSG_PEEK))
		return 0;
	/* Seen stranded, now reading with a call that sees redirected data
	 * (first the redirected bytes, in order): not stuck. */
	if ((rx->flags & (SH_RX_STRANDED | SH_RX_RECVD)) == SH_RX_STRANDED)
		__sync_fetch_and_or(&rx->flags, SH_RX_RECVD);
	if (rx->flags & SH_RX_READ)
		return 0;
	if (__sync_fetch_and_add(&rx->reads, 1) + 1 >= SH_MIN_READS)
		__sync_fetch_and_or(&rx->flags, SH_RX_READ);
	return 0;
}

/*
 * Redirected bytes landed in a receiver seen splicing (or the like), which
 * it can never read. A sender that read the guard's flags just before the
 * receiver's first splice set them redirects its message after all, and it
 * lands here after that splice started with nothing unread (a sender that
 * reads them after stays on TCP). sk_psock_data_ready calls the socket's
 * sk_data_ready once the message is queued, and that fires this
 * tracepoint; for every other socket on the node it is one read of
 * sk_user_data.
 */
SEC("tp_btf/sk_data_ready")
int sockhop_ready(unsigned long long *ctx)
{
	__u64 sk = ctx[0];
	struct sh_rx *rx;

	if (!sh_backlog_of_sk(sk))
		return 0;
	rx = bpf_map_lookup_elem(&sockhop_rx, &sk);
	if (!rx || (rx->flags & (SH_RX_UNSAFE | SH_RX_STRANDED)) != SH_RX_UNSAFE)
		return 0;
	sh_stranded(rx, sk, sh_cgroup_of((struct sock *)sk));
	return 0;
}

/*
 * A socket closing: forget its receive-side entries. sockops does so at
 * TCP_CLOSE for the sockets of attached pods (after learning from it); this
 * is for a socket whose pod was detached while it was open, whose sockops
 * program no longer runs. tcp_set_state runs the sockops STATE_CB before
 * it stores the new state, which is where this tracepoint fires: an
 * attached socket's entry is gone by then, and this is one failed lookup.
 */
SEC("tp_btf/inet_sock_set_state")
int sockhop_close(unsigned long long *ctx)
{
	int newstate = (int)ctx[2];
	struct sh_strand *s;
	struct sh_sock *state;
	__u64 sk;

	if (newstate != BPF_TCP_CLOSE)
		return 0;
	/* The socket straight from the context: a pointer that went through
	 * the stack as a map key is a scalar to older verifiers (6.12), which
	 * bpf_sk_storage_get refuses. */
	state = bpf_sk_storage_get(&sockhop_state, (void *)ctx[0], 0, 0);
	sk = ctx[0];
	bpf_map_delete_elem(&sockhop_rx, &sk);
	/* A client that never learnt its server's address (as sh_closed). */
	if (state && state->peer.side == SH_SERVER && !state->peer_sk)
		bpf_map_delete_elem(&sockhop_pending, &state->peer.conn);
	/* A stranded receiver that closed before the agent aborted it
	 * (the abort marks its record before destroying it). */
	s = bpf_map_lookup_elem(&sockhop_strand, &sk);
	if (s && s->state == SH_STRAND_PENDING)
		bpf_map_delete_elem(&sockhop_strand, &sk);
	return 0;
}

/* The socket behind a descriptor of the current process, or 0. */
static __always_inline __u64 sh_sock_of_fd(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *file = NULL;
	struct socket *sock;
	struct sock *sk;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_core_read(&file, sizeof(file), &fds[fd]);
	if (!file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	/* Not a socket file if the socket does not point back. */
	if (!sk || BPF_CORE_READ(sk, sk_socket) != sock)
		return 0;
	return (__u64)sk;
}

/* A syscall is about to read the socket behind fd in a way redirected data
 * would break: the guard (sh_unsafe) for a paired socket. */
static __always_inline void sh_guard_fd(long fd, __u64 hazard)
{
	__u64 sk = sh_sock_of_fd(fd);

	if (sk)
		sh_guard_sk(sk, hazard);
}

/* x86-64 syscall numbers. */
#define SH_NR_SENDFILE 40
#define SH_NR_RECVFROM 45
#define SH_NR_RECVMSG 47
#define SH_NR_GETSOCKOPT 55
#define SH_NR_SPLICE 275
#define SH_NR_RECVMMSG 299
#define SH_IPPROTO_TCP 6
#define SH_TCP_ZEROCOPY_RECEIVE 35

/*
 * Before a syscall that reads a socket without seeing redirected data
 * (splice, sendfile from it, TCP zerocopy receive) or that waits for a full
 * buffer (MSG_WAITALL): mark a paired socket unsafe before the call reads,
 * so that its sender stops redirecting (docs/hazards.md). Runs for every
 * syscall on the node: the switch on the number is all most of them cost.
 */
SEC("tp_btf/sys_enter")
int sockhop_sysenter(unsigned long long *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long id = (long)ctx[1];
	__u64 hazard;
	long fd;

	switch (id) {
	case SH_NR_SPLICE:
		fd = (int)BPF_CORE_READ(regs, di);
		hazard = SH_HAZARD_SPLICE;
		break;
	case SH_NR_SENDFILE:
		fd = (int)BPF_CORE_READ(regs, si);
		hazard = SH_HAZARD_SPLICE;
		break;
	case SH_NR_RECVFROM:
	case SH_NR_RECVMMSG:
		if (!(BPF_CORE_READ(regs, r10) & MSG_WAITALL))
			return 0;
		fd = (int)BPF_CORE_READ(regs, di);
		hazard = SH_HAZARD_WAITALL;
		break;
	case SH_NR_RECVMSG:
		if (!(BPF_CORE_READ(regs, dx) & MSG_WAITALL))
			return 0;
		fd = (int)BPF_CORE_READ(regs, di);
		hazard = SH_HAZARD_WAITALL;
		break;
	case SH_NR_GETSOCKOPT:
		if ((int)BPF_CORE_READ(regs, si) != SH_IPPROTO_TCP ||
		    (int)BPF_CORE_READ(regs, dx) != SH_TCP_ZEROCOPY_RECEIVE)
			return 0;
		fd = (int)BPF_CORE_READ(regs, di);
		hazard = SH_HAZARD_ZEROCOPY;
		break;
	default:
		return 0;
	}
	sh_guard_fd(fd, hazard);
	return 0;
}

/*
 * The same guard as classic per-syscall tracepoints, one program per
 * syscall: where the agent can read their ids (tracefs), a syscall that is
 * not one of these costs only the kernel's syscall tracing entry, not a
 * BPF run (docs/benchmarks.md, "Node-wide cost"). The arguments follow the
 * events' format: after the common fields and __syscall_nr, six longs.
 */
struct sh_syscall_args {
	__u64 common;
	__s32 nr;
	__s32 pad;
	__u64 args[6];
};

SEC("tracepoint/syscalls/sys_enter_splice")
int sockhop_tsplice(struct sh_syscall_args *ctx)
{
	sh_guard_fd((int)ctx->args[0], SH_HAZARD_SPLICE);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendfile64")
int sockhop_tsendf(struct sh_syscall_args *ctx)
{
	sh_guard_fd((int)ctx->args[1], SH_HAZARD_SPLICE);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int sockhop_trfrom(struct sh_syscall_args *ctx)
{
	if (ctx->args[3] & MSG_WAITALL)
		sh_guard_fd((int)ctx->args[0], SH_HAZARD_WAITALL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int sockhop_trmsg(struct sh_syscall_args *ctx)
{
	if (ctx->args[2] & MSG_WAITALL)
		sh_guard_fd((int)ctx->args[0], SH_HAZARD_WAITALL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmmsg")
int sockhop_trmmsg(struct sh_syscall_args *ctx)
{
	if (ctx->args[3] & MSG_WAITALL)
		sh_guard_fd((int)ctx->args[0], SH_HAZARD_WAITALL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getsockopt")
int sockhop_tgetopt(struct sh_syscall_args *ctx)
{
	/* int level, int optname: the kernel reads the low 32 bits only. */
	if ((int)ctx->args[1] == SH_IPPROTO_TCP && (int)ctx->args[2] == SH_TCP_ZEROCOPY_RECEIVE)
		sh_guard_fd((int)ctx->args[0], SH_HAZARD_ZEROCOPY);
	return 0;
}

#define SH_IORING_OP_SPLICE 30
#define SH_SPLICE_F_FD_IN_FIXED (1U << 31)

/*
 * The same guard for a splice submitted through io_uring (IORING_OP_SPLICE),
 * which no syscall tracepoint sees: this tracepoint fires once the request
 * is prepared and before it is issued, in the submitter's context (its file
 * table holds the source descriptor). A raw tracepoint, so that the object
 * loads where io_uring is not built in (it then has nothing to attach to).
 * A source given as a fixed file (SPLICE_F_FD_IN_FIXED) is not resolved.
 */
SEC("raw_tp/io_uring_submit_req")
int sockhop_uring(unsigned long long *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx[0];
	struct io_splice *sp;

	if (!bpf_core_type_exists(struct io_kiocb) || !bpf_core_type_exists(struct io_splice))
		return 0;
	if (BPF_CORE_READ(req, opcode) != SH_IORING_OP_SPLICE)
		return 0;
	sp = (struct io_splice *)((void *)req + bpf_core_field_offset(struct io_kiocb, cmd));
	if (BPF_CORE_READ(sp, flags) & SH_SPLICE_F_FD_IN_FIXED)
		return 0;
	sh_guard_fd(BPF_CORE_READ(sp, splice_fd_in), SH_HAZARD_SPLICE);
	return 0;
}

#define SH_SOL_SOCKET 1
#define SH_SO_ZEROCOPY 60
#define SH_SOL_TCP 6
#define SH_TCP_ULP 31
#define SH_EOPNOTSUPP 95

/*
 * Two setsockopts on a socket in the sockhash are refused with EOPNOTSUPP,
 * as for a socket that cannot do what they ask; a program is expected to
 * do without (OpenSSL, nginx and HAProxy do, as on a kernel without them).
 * Its container is learnt: its later sockets are not paired, and are
 * allowed both.
 *
 * SO_ZEROCOPY: a sender is expected to fall back to plain sends (a
 * MSG_ZEROCOPY send without SO_ZEROCOPY is a plain send, with no completion
 * to wait for). Its sends go through tcp_bpf_sendmsg, which copies them:
 * redirected, a zerocopy send would never complete, and passed to TCP each
 * chunk of the copy takes its own completion id, so that the ids would run
 * ahead of the sender's count (docs/hazards.md). A socket that has
 * SO_ZEROCOPY when it is established is not paired (sh_zerocopy).
 *
 * TCP_ULP (kTLS, "tls"; a ULP can only be set on an established socket):
 * kTLS decrypts records from TCP's queue, and tls_sw_recvmsg returns what
 * is redirected into the socket's psock as it is, as plaintext; its sends
 * run the sk_msg program on the plaintext, before encryption. Debian's
 * 6.12 accepts TCP_ULP on a socket in a sockmap and then refuses its keys
 * (TLS_RX, TLS_TX: EINVAL), so that kTLS is lost for every connection
 * sockhop pairs; refused here, at the ULP, as on a kernel without kTLS,
 * the container is learnt and its later connections keep kTLS. A kernel
 * that took the keys would mix the two (docs/hazards.md, "kTLS").
 *
 * Runs before the kernel's setsockopt, for the sockets of attached pods (a
 * cgroup link per pod).
 */
SEC("cgroup/setsockopt")
int sockhop_sockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sockopt_kern *kctx;
	int *val = ctx->optval;
	__u64 hazard;
	struct sock *sk;

	if (!sh_guard)
		return 1;
	if (ctx->level == SH_SOL_SOCKET && ctx->optname == SH_SO_ZEROCOPY) {
		if ((void *)(val + 1) > ctx->optval_end || *val == 0)
			return 1; /* disabling it (or a malformed value, the kernel's to refuse) */
		hazard = SH_HAZARD_ZCSEND;
	} else if (ctx->level == SH_SOL_TCP && ctx->optname == SH_TCP_ULP) {
		hazard = SH_HAZARD_ULP;
	} else {
		return 1;
	}
	/* The kernel's socket: ctx->sk allows no field arithmetic. */
	kctx = bpf_cast_to_kern_ctx(ctx);
	sk = kctx->sk;
	if (!sk)
		return 1;
	/* In a sockmap (ours or not): tcp_bpf's send path. */
	if (!sh_psock_of((__u64)sk))
		return 1;
	sh_learn(sh_cgroup_of(sk), hazard);
	sh_count(hazard == SH_HAZARD_ULP ? SH_STAT_ULP_REFUSED : SH_STAT_ZC_REFUSED, 1);
	bpf_set_retval(-SH_EOPNOTSUPP);
	return 0;
}

/* Keep these enums in BTF so that bpf2go generates their Go constants. */
const enum sh_stat *sh_stat_btf __attribute__((unused));
const enum sh_tx *sh_tx_btf __attribute__((unused));
const enum sh_rx_flags *sh_rx_btf __attribute__((unused));
const enum sh_hazard_flags *sh_hazard_btf __attribute__((unused));
const enum sh_strand_state *sh_strand_btf __attribute__((unused));
const enum sh_podst_stat *sh_podst_btf __attribute__((unused));

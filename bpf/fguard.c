// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The syscall guard on the kernel functions that read a TCP socket in a way
 * redirected data would break, where the kernel runs fentry programs (BPF
 * trampolines). The same marking as the syscall tracepoints in sockhop.c
 * (sh_guard_sk), with a difference in cost: a syscall tracepoint puts every
 * syscall of every process on the node on the kernel's traced entry path,
 * where these run only when such a function is called. They also see what
 * no syscall tracepoint does: a splice submitted through io_uring with a
 * fixed file, a 32-bit caller's syscalls, any caller inside the kernel.
 *
 * A separate object from sockhop.c: where trampolines are refused (some
 * kernels and hypervisors), loading one fails, and the datapath must still
 * load; the guard is then the syscall tracepoints (the maps are shared from
 * Go).
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

#define SH_SOL_TCP 6
#define SH_TCP_ZEROCOPY_RECEIVE 35

/*
 * tcp_splice_read(struct socket *sock, loff_t *ppos, struct pipe_inode_info
 * *pipe, size_t len, unsigned int flags): every splice from a TCP socket,
 * IPv4 or IPv6 — splice(2), sendfile(2) from it (do_splice_direct), and
 * io_uring's IORING_OP_SPLICE, fixed file or not — before it reads.
 */
SEC("fentry/tcp_splice_read")
int sockhop_fsplice(unsigned long long *ctx)
{
	struct socket *sock = (struct socket *)ctx[0];

	sh_guard_sk((__u64)BPF_CORE_READ(sock, sk), SH_HAZARD_SPLICE);
	return 0;
}

/*
 * tcp_bpf_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int
 * flags, int *addr_len): the recvmsg of a socket in a sockmap (only those),
 * from any caller — recvfrom, recvmsg, recvmmsg, io_uring — before it
 * reads. MSG_WAITALL: the receiver may read a redirected message short.
 */
static __always_inline int sh_frecv(unsigned long long *ctx)
{
	if ((int)ctx[3] & MSG_WAITALL)
		sh_guard_sk(ctx[0], SH_HAZARD_WAITALL);
	return 0;
}

SEC("fentry/tcp_bpf_recvmsg")
int sockhop_frecv(unsigned long long *ctx)
{
	return sh_frecv(ctx);
}

/* The same for a socket that a stream parser (sk_skb) of another map also
 * holds: tcp_bpf gives it this recvmsg instead. */
SEC("fentry/tcp_bpf_recvmsg_parser")
int sockhop_frecvp(unsigned long long *ctx)
{
	return sh_frecv(ctx);
}

/*
 * tcp_getsockopt(struct sock *sk, int level, int optname, char __user
 * *optval, int __user *optlen): TCP zerocopy receive (TCP_ZEROCOPY_RECEIVE)
 * maps TCP's queue and never sees redirected data.
 */
SEC("fentry/tcp_getsockopt")
int sockhop_fgetopt(unsigned long long *ctx)
{
	if ((int)ctx[1] == SH_SOL_TCP && (int)ctx[2] == SH_TCP_ZEROCOPY_RECEIVE)
		sh_guard_sk(ctx[0], SH_HAZARD_ZEROCOPY);
	return 0;
}

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel-internal types sockhop reads, declared with
 * preserve_access_index: clang records each field access as a CO-RE
 * relocation and the loader rewrites the offsets against the running
 * kernel's BTF. So no vmlinux.h is needed and a field that moves between
 * kernel versions is still read correctly.
 */
#pragma once

#include <linux/types.h>

#define __co_re __attribute__((preserve_access_index))

typedef struct {
	__u32 val;
} kuid_t;

struct kernfs_node {
	__u64 id;
} __co_re;

struct cgroup {
	int level;
	struct kernfs_node *kn;
	/* ancestors[level] is the cgroup itself, ancestors[0] the root. */
	struct cgroup *ancestors[0];
} __co_re;

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __co_re;

struct socket;

struct sock {
	kuid_t sk_uid;
	void *sk_user_data;
	struct sock_cgroup_data sk_cgrp_data;
	struct socket *sk_socket;
	int sk_rcvlowat;
} __co_re;

/* sk_flags is __sk_common.skc_flags (bits: enum sock_flags, whose value
 * is relocated against the running kernel). Flavours: the ___ suffix is
 * ignored when matching kernel types. */
enum sock_flags {
	SOCK_ZEROCOPY = 18,
};

struct sock_common___flags {
	unsigned long skc_flags;
} __co_re;

struct sock___flags {
	struct sock_common___flags __sk_common;
} __co_re;

/* The remote port (network order), __sk_common.skc_dport. */
struct sock_common___port {
	__u16 skc_dport;
} __co_re;

struct sock___port {
	struct sock_common___port __sk_common;
} __co_re;

/* Sequence numbers of a TCP socket: write_seq is one past the last byte the
 * application handed to TCP, copied_seq one past the last byte the reader
 * took (recvmsg and splice both advance it). */
struct tcp_sock {
	__u32 write_seq;
	__u32 copied_seq;
} __co_re;

struct socket {
	struct sock *sk;
} __co_re;

struct file {
	void *private_data;
} __co_re;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __co_re;

struct files_struct {
	struct fdtable *fdt;
} __co_re;

struct task_struct {
	struct files_struct *files;
} __co_re;

/* x86-64 syscall arguments as the sys_enter tracepoint sees them. */
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long r10;
} __co_re;

struct sk_buff {
	int skb_iif;
} __co_re;

/* What bpf_cast_to_kern_ctx() returns for a sock_ops program. */
struct bpf_sock_ops_kern {
	struct sock *sk;
	struct sk_buff *skb;
} __co_re;

/* What bpf_cast_to_kern_ctx() returns for a cgroup sockopt program. */
struct bpf_sockopt_kern {
	struct sock *sk;
} __co_re;

/* What bpf_cast_to_kern_ctx() returns for an sk_msg program. */
struct sk_msg {
	struct sock *sk_redir;
	struct sock *sk;
} __co_re;

/* refcount_t and the atomic_t in it: one counter. */
struct sh_atomic {
	int counter;
} __co_re;

struct refcount_struct {
	struct sh_atomic refs;
} __co_re;

struct sk_psock {
	/* Bytes redirected into this socket and not yet read. */
	__u32 msg_tot_len;
	/* One per map the socket is in, and one for each thread in its
	 * tcp_bpf send or receive path, for that call's whole length. */
	struct refcount_struct refcnt;
} __co_re;

/* io_uring (include/linux/io_uring_types.h, io_uring/splice.c): a request
 * and, in its command area, a splice's source. Absent from kernels built
 * without io_uring: check bpf_core_type_exists first. */
struct io_cmd_data {
	__u64 data[8];
} __co_re;

struct io_kiocb {
	struct io_cmd_data cmd;
	__u8 opcode;
} __co_re;

struct io_splice {
	int splice_fd_in;
	unsigned int flags;
} __co_re;

/* include/net/sock.h: low bits of sk_user_data tag what it points to. */
#define SK_USER_DATA_PSOCK 4UL
#define SK_USER_DATA_PTRMASK (~7UL)

#define LOOPBACK_IFINDEX 1

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

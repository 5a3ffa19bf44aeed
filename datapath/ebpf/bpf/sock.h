// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* Socket level (cgroup v2 hooks): connect and sendmsg turn a service
 * address into a backend address before the socket sends anything, and
 * record the pair per socket; recvmsg and getpeername turn it back. */
#ifndef SPOKE_SOCK_H
#define SPOKE_SOCK_H

#include "common.h"

/* sock_lb translates dst/port in place. src is the socket's bound source,
 * or unset: then affinity is per network namespace, and a service with
 * source ranges is left to the network. */
static __always_inline int sock_lb(void *ctx, struct addr *dst, __be16 *port, __u8 proto,
				   const struct addr *src)
{
	struct svc_val *svc;
	struct aff_key aff;
	struct sock_key sk;
	struct sock_val sv;
	struct pick pick;
	int known = !addr_unset(src);
	int act;

	svc = frontend_lookup(dst, *port, proto);
	if (!svc)
		return ACT_PASS;
	if (svc->flags & SVC_F_SOURCE_RANGES) {
		if (!known)
			return ACT_PASS;
		if (!source_allowed(svc->svc_id, src))
			return ACT_DROP;
	}

	__builtin_memset(&aff, 0, sizeof(aff));
	if (known) {
		aff.client = *src;
	} else {
		__u64 cookie = bpf_get_netns_cookie(ctx);

		aff.flags = AFF_F_COOKIE;
		aff.client.w[0] = (__u32)cookie;
		aff.client.w[1] = (__u32)(cookie >> 32);
	}
	act = pick_backend(svc->group_local, &aff, bpf_get_prandom_u32(), &pick);
	if (act != ACT_FWD)
		return act;

	__builtin_memset(&sk, 0, sizeof(sk));
	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.addr = pick.be.addr;
	sk.port = pick.be.port;
	__builtin_memset(&sv, 0, sizeof(sv));
	sv.addr = *dst;
	sv.port = *port;
	bpf_map_update_elem(&sock_revnat, &sk, &sv, BPF_ANY);

	*dst = pick.be.addr;
	*port = pick.be.port;
	return ACT_FWD;
}

/* sock_verdict turns an action into the hook's return value. */
static __always_inline int sock_verdict(int act)
{
	if (act == ACT_REJECT) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	if (act == ACT_DROP) {
		bpf_set_retval(-EHOSTUNREACH);
		return 0;
	}
	return 1;
}

static __always_inline int sock_rev(void *ctx, struct addr *peer, __be16 *port)
{
	struct sock_key sk;
	struct sock_val *sv;

	__builtin_memset(&sk, 0, sizeof(sk));
	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.addr = *peer;
	sk.port = *port;
	sv = bpf_map_lookup_elem(&sock_revnat, &sk);
	if (!sv)
		return 0;
	*peer = sv->addr;
	*port = sv->port;
	return 1;
}

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx, __be32 src4)
{
	struct addr dst, src;
	__be16 port = (__be16)ctx->user_port;
	int act;

	addr_set4(&dst, ctx->user_ip4);
	addr_set4(&src, src4);
	act = sock_lb(ctx, &dst, &port, (__u8)ctx->protocol, &src);
	if (act == ACT_FWD) {
		ctx->user_ip4 = dst.w[3];
		ctx->user_port = port;
	}
	return sock_verdict(act);
}

static __always_inline int sock6_xlate(struct bpf_sock_addr *ctx, const struct addr *src)
{
	struct addr dst;
	__be16 port = (__be16)ctx->user_port;
	int act;

	dst.w[0] = ctx->user_ip6[0];
	dst.w[1] = ctx->user_ip6[1];
	dst.w[2] = ctx->user_ip6[2];
	dst.w[3] = ctx->user_ip6[3];
	act = sock_lb(ctx, &dst, &port, (__u8)ctx->protocol, src);
	if (act == ACT_FWD) {
		ctx->user_ip6[0] = dst.w[0];
		ctx->user_ip6[1] = dst.w[1];
		ctx->user_ip6[2] = dst.w[2];
		ctx->user_ip6[3] = dst.w[3];
		ctx->user_port = port;
	}
	return sock_verdict(act);
}

static __always_inline void sock6_src(struct bpf_sock *sk, struct addr *src)
{
	src->w[0] = sk->src_ip6[0];
	src->w[1] = sk->src_ip6[1];
	src->w[2] = sk->src_ip6[2];
	src->w[3] = sk->src_ip6[3];
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 1;
	return sock4_xlate(ctx, sk->src_ip4);
}

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct addr src;

	if (!sk)
		return 1;
	sock6_src(sk, &src);
	return sock6_xlate(ctx, &src);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__be32 src = ctx->msg_src_ip4;

	if (!sk)
		return 1;
	if (!src)
		src = sk->src_ip4;
	return sock4_xlate(ctx, src);
}

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct addr src;

	if (!sk)
		return 1;
	src.w[0] = ctx->msg_src_ip6[0];
	src.w[1] = ctx->msg_src_ip6[1];
	src.w[2] = ctx->msg_src_ip6[2];
	src.w[3] = ctx->msg_src_ip6[3];
	if (addr_unset(&src))
		sock6_src(sk, &src);
	return sock6_xlate(ctx, &src);
}

static __always_inline int sock4_rev(struct bpf_sock_addr *ctx)
{
	struct addr peer;
	__be16 port = (__be16)ctx->user_port;

	addr_set4(&peer, ctx->user_ip4);
	if (sock_rev(ctx, &peer, &port)) {
		ctx->user_ip4 = peer.w[3];
		ctx->user_port = port;
	}
	return 1;
}

static __always_inline int sock6_rev(struct bpf_sock_addr *ctx)
{
	struct addr peer;
	__be16 port = (__be16)ctx->user_port;

	peer.w[0] = ctx->user_ip6[0];
	peer.w[1] = ctx->user_ip6[1];
	peer.w[2] = ctx->user_ip6[2];
	peer.w[3] = ctx->user_ip6[3];
	if (sock_rev(ctx, &peer, &port)) {
		ctx->user_ip6[0] = peer.w[0];
		ctx->user_ip6[1] = peer.w[1];
		ctx->user_ip6[2] = peer.w[2];
		ctx->user_ip6[3] = peer.w[3];
		ctx->user_port = port;
	}
	return 1;
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}

#endif /* SPOKE_SOCK_H */

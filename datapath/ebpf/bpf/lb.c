// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* Spoke's eBPF service load balancer.
 *
 * Socket level (cgroup v2 hooks): connect and sendmsg turn a service address
 * into a backend address before the socket sends anything, and record the
 * pair per socket; recvmsg and getpeername turn it back.
 *
 * Packet level (tc): packets arriving from outside the node to a service
 * address are sent to a backend (DNAT, and SNAT to a node address when the
 * backend is elsewhere), with a connection table so the rest of the flow
 * follows, and replies are translated back.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lb.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2
#define AF_INET6 10
#define ECONNREFUSED 111
#define EHOSTUNREACH 113
#define NSEC_PER_SEC 1000000000ULL
#define SNAT_TRIES 16
#define __noinline __attribute__((noinline))
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

/* linux/icmp.h pulls in libc headers; the header is simple enough. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

/* Sizes are placeholders: the Go side sizes every map from its options. */
#define MAP(_name, _type, _key, _val, _flags)                                  \
	struct {                                                                   \
		__uint(type, _type);                                                   \
		__uint(max_entries, 1);                                                \
		__type(key, _key);                                                     \
		__type(value, _val);                                                   \
		__uint(map_flags, _flags);                                             \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                                   \
	} _name SEC(".maps")

MAP(services, BPF_MAP_TYPE_HASH, struct svc_key, struct svc_val, BPF_F_NO_PREALLOC);
MAP(slots, BPF_MAP_TYPE_HASH, struct slot_key, struct slot_val, BPF_F_NO_PREALLOC);
MAP(backends, BPF_MAP_TYPE_HASH, __u32, struct backend, BPF_F_NO_PREALLOC);
MAP(src_ranges, BPF_MAP_TYPE_LPM_TRIE, struct range_key, __u32, BPF_F_NO_PREALLOC);
MAP(nodes, BPF_MAP_TYPE_HASH, struct node_key, __u32, 0);
MAP(devices, BPF_MAP_TYPE_HASH, __u32, __u32, 0);
MAP(config, BPF_MAP_TYPE_ARRAY, __u32, struct cfg_val, 0);
MAP(affinity, BPF_MAP_TYPE_LRU_HASH, struct aff_key, struct aff_val, 0);
MAP(conntrack, BPF_MAP_TYPE_LRU_HASH, struct tuple, struct ct_val, 0);
MAP(revnat, BPF_MAP_TYPE_LRU_HASH, struct tuple, struct rev_val, 0);
MAP(sock_revnat, BPF_MAP_TYPE_LRU_HASH, struct sock_key, struct sock_val, 0);
MAP(svc_meta, BPF_MAP_TYPE_HASH, __u32, struct svc_info, BPF_F_NO_PREALLOC);
MAP(port_meta, BPF_MAP_TYPE_HASH, struct port_key, struct port_info, BPF_F_NO_PREALLOC);
MAP(svc_addrs, BPF_MAP_TYPE_HASH, struct addr_key, struct addr, BPF_F_NO_PREALLOC);

enum action {
	ACT_PASS,   /* not a service: leave it alone */
	ACT_FWD,    /* send to the chosen backend */
	ACT_REJECT, /* no endpoint: refuse */
	ACT_DROP,   /* no local endpoint, or a source outside the ranges */
};

/* Addresses. */

static __always_inline void addr_set4(struct addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = v4;
}

static __always_inline int addr_is4(const struct addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

static __always_inline int addr_eq(const struct addr *a, const struct addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}

/* addr_unset reports an unspecified address in either form. */
static __always_inline int addr_unset(const struct addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[3] == 0 &&
	       (a->w[2] == 0 || a->w[2] == bpf_htonl(0xffff));
}

/* Service lookup shared by both levels. */

static __always_inline struct svc_val *frontend_lookup(const struct addr *dst, __be16 port,
						       __u8 proto)
{
	struct svc_key key;
	struct node_key node;
	struct svc_val *svc;

	__builtin_memset(&key, 0, sizeof(key));
	key.addr = *dst;
	key.port = port;
	key.proto = proto;
	key.scope = SCOPE_ADDR;
	svc = bpf_map_lookup_elem(&services, &key);
	if (svc)
		return svc;

	node.addr = *dst;
	if (!bpf_map_lookup_elem(&nodes, &node))
		return NULL;
	__builtin_memset(&key.addr, 0, sizeof(key.addr));
	if (addr_is4(dst))
		key.addr.w[2] = bpf_htonl(0xffff);
	key.scope = SCOPE_NODEPORT;
	return bpf_map_lookup_elem(&services, &key);
}

static __always_inline int source_allowed(__u32 svc_id, const struct addr *src)
{
	struct range_key key;

	key.prefixlen = 64 + 128;
	key.svc_id = svc_id;
	key.family = addr_is4(src) ? 4 : 6;
	key.addr = *src;
	return bpf_map_lookup_elem(&src_ranges, &key) != NULL;
}

struct pick {
	struct backend be;
	__u32 id;
};

/* pick_backend chooses an active endpoint of a group: the one the client's
 * affinity names if it is still active, else slot hash % active. */
static __noinline int pick_backend(__u32 group, struct aff_key *aff, __u32 hash,
					struct pick *out)
{
	struct slot_key sk = {.group = group, .slot = 0};
	struct slot_val *hdr, *slot;
	struct backend *be;
	struct aff_val *av, nav;
	__u32 active, timeout;
	__u64 now = 0;

	hdr = bpf_map_lookup_elem(&slots, &sk);
	if (!hdr)
		return ACT_REJECT;
	active = hdr->active;
	timeout = hdr->affinity;
	if (active == 0)
		return hdr->no_ep == NO_EP_DROP ? ACT_DROP : ACT_REJECT;

	if (timeout) {
		now = bpf_ktime_get_ns();
		aff->group = group;
		av = bpf_map_lookup_elem(&affinity, aff);
		if (av && now - av->seen < (__u64)timeout * NSEC_PER_SEC && av->slot >= 1 &&
		    av->slot <= active) {
			sk.slot = av->slot;
			slot = bpf_map_lookup_elem(&slots, &sk);
			if (slot && slot->backend == av->backend) {
				be = bpf_map_lookup_elem(&backends, &slot->backend);
				if (be) {
					out->be = *be;
					out->id = av->backend;
					nav.seen = now;
					nav.backend = out->id;
					nav.slot = sk.slot;
					bpf_map_update_elem(&affinity, aff, &nav, BPF_ANY);
					return ACT_FWD;
				}
			}
		}
	}

	sk.slot = hash % active + 1;
	slot = bpf_map_lookup_elem(&slots, &sk);
	if (!slot)
		return ACT_REJECT;
	out->id = slot->backend;
	be = bpf_map_lookup_elem(&backends, &out->id);
	if (!be)
		return ACT_REJECT;
	out->be = *be;
	if (timeout) {
		nav.seen = now;
		nav.backend = out->id;
		nav.slot = sk.slot;
		bpf_map_update_elem(&affinity, aff, &nav, BPF_ANY);
	}
	return ACT_FWD;
}

/* Socket level. */

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

/* Packet level. */

struct pkt {
	struct tuple t;
	__u32 l4off;
	__u16 ip_len; /* L3 length */
	__u8 family;  /* 4 or 6 */
	__u8 tcp_flags;
};

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__be16 ports[2];

	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.ihl < 5 || ip.version != 4)
			return -1;
		/* Fragments are left to the stack. */
		if (ip.frag_off & bpf_htons(0x3fff))
			return -1;
		p->family = 4;
		p->t.proto = ip.protocol;
		addr_set4(&p->t.saddr, ip.saddr);
		addr_set4(&p->t.daddr, ip.daddr);
		p->l4off = ETH_HLEN + ip.ihl * 4;
		p->ip_len = bpf_ntohs(ip.tot_len);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return -1;
		p->family = 6;
		p->t.proto = ip6.nexthdr;
		__builtin_memcpy(&p->t.saddr, &ip6.saddr, 16);
		__builtin_memcpy(&p->t.daddr, &ip6.daddr, 16);
		p->l4off = ETH_HLEN + sizeof(ip6);
		p->ip_len = bpf_ntohs(ip6.payload_len) + sizeof(ip6);
	} else {
		return -1;
	}

	switch (p->t.proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, p->l4off + 13, &p->tcp_flags, 1) < 0)
			return -1;
		/* fallthrough */
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, p->l4off, ports, sizeof(ports)) < 0)
			return -1;
		p->t.sport = ports[0];
		p->t.dport = ports[1];
		return 0;
	}
	return -1;
}

static __always_inline int l4_csum_off(const struct pkt *p)
{
	if (p->t.proto == IPPROTO_TCP)
		return p->l4off + offsetof(struct tcphdr, check);
	if (p->t.proto == IPPROTO_UDP)
		return p->l4off + offsetof(struct udphdr, check);
	return -1; /* SCTP: CRC32c does not cover addresses */
}

static __always_inline int set_addr(struct __sk_buff *skb, struct pkt *p, int src,
				    const struct addr *to)
{
	struct addr *from = src ? &p->t.saddr : &p->t.daddr;
	int csum = l4_csum_off(p);
	__u64 mangled = p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (addr_eq(from, to))
		return 0;
	if (p->family == 4) {
		__u32 off = ETH_HLEN + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
		__be32 o = from->w[3], n = to->w[3];

		if (csum >= 0 &&
		    bpf_l4_csum_replace(skb, csum, o, n, BPF_F_PSEUDO_HDR | mangled | sizeof(n)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), o, n, sizeof(n)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, off, &n, sizeof(n), 0) < 0)
			return -1;
	} else {
		__u32 off = ETH_HLEN + (src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));
		struct addr o = *from, n = *to;

		if (csum >= 0) {
			__s64 diff = bpf_csum_diff(o.w, sizeof(o), n.w, sizeof(n), 0);

			if (bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR | mangled) < 0)
				return -1;
		}
		if (bpf_skb_store_bytes(skb, off, n.w, sizeof(n), 0) < 0)
			return -1;
	}
	*from = *to;
	return 0;
}

/* SCTP's CRC32c covers the SCTP packet but not the addresses: a port
 * translation updates it incrementally. CRC is linear: with the port bytes
 * changed by d at offset k of an L-byte packet, the new CRC is the old one
 * xor the raw (zero-init) CRC of d followed by L-k-2 zero bytes, that is the
 * CRC of d multiplied by x^(8(L-k-2)) modulo the polynomial. Polynomials are
 * reflected, x^0 being the top bit, as in zlib's crc32_combine. Bits
 * select with a multiplication by 0 or 1, not a mask of 0 or -1: the
 * verifier follows a 0-or-1 product as one range, but splits a 0-or-minus-1
 * mask into two paths, 2^n paths for n unknown bits. */
#define CRC32C_POLY 0x82f63b78

/* x2n[k] = x^(2^k) mod P. */
static const __u32 crc32c_x2n[32] = {
	0x40000000, 0x20000000, 0x08000000, 0x00800000, 0x00008000, 0x82f63b78, 0x6ea2d55c, 0x18b8ea18,
	0x510ac59a, 0xb82be955, 0xb8fdb1e7, 0x88e56f72, 0x74c360a4, 0xe4172b16, 0x0d65762a, 0x35d73a62,
	0x28461564, 0xbf455269, 0xe2ea32dc, 0xfe7740e6, 0xf946610b, 0x3c204f8f, 0x538586e3, 0x59726915,
	0x734d5309, 0xbc1ac763, 0x7d0722cc, 0xd289cabe, 0xe94ca9bc, 0x05b74f3f, 0xa51e1f42, 0x40000000,
};

static __always_inline __u32 crc32c_mulmod(__u32 a, __u32 b)
{
	__u32 p = 0;

	for (int i = 0; i < 32; i++) {
		p ^= b * ((a >> (31 - i)) & 1);
		b = (b >> 1) ^ (CRC32C_POLY * (b & 1));
	}
	return p;
}

struct crc32c_pow {
	__u32 x; /* x^(8 * the bits of n seen so far) */
	__u32 n;
};

/* crc32c_pow_step multiplies in x^(8 * 2^i) if bit i of n is set. */
static long crc32c_pow_step(__u64 i, void *ctx)
{
	struct crc32c_pow *s = ctx;
	__u32 t;

	if (i >= 16)
		return 1;
	t = crc32c_mulmod(crc32c_x2n[i + 3], s->x);
	s->x ^= (t ^ s->x) * ((s->n >> i) & 1);
	return 0;
}

/* crc32c_zeros returns crc advanced through n zero bytes, n < 65536. The
 * steps run under bpf_loop, so the verifier checks one of them. */
static __always_inline __u32 crc32c_zeros(__u32 crc, __u32 n)
{
	struct crc32c_pow s = {.x = 1u << 31, .n = n};

	if (bpf_loop(16, crc32c_pow_step, &s, 0) != 16)
		return 0;
	return crc32c_mulmod(s.x, crc);
}

static __always_inline __u32 crc32c_byte(__u32 c, __u8 b)
{
	c ^= b;
	for (int i = 0; i < 8; i++)
		c = (c >> 1) ^ (CRC32C_POLY * (c & 1));
	return c;
}

/* sctp_set_port rewrites the port at off (0: source, 2: destination) of
 * the SCTP packet at l4off, len bytes long, from the port in the low half
 * of ports to the one in the high half, and its checksum. A global
 * function, checked once by the verifier: its loops would otherwise be
 * checked again on every path that reaches a port rewrite. */
__noinline int sctp_set_port(struct __sk_buff *skb, __u32 l4off, __u32 len, __u32 off, __u32 ports)
{
	__be16 from = ports & 0xffff, to = ports >> 16;
	__u8 *f = (__u8 *)&from, *n = (__u8 *)&to;
	__u32 crc, d;

	if (len < 12 || len > 0xffff || (off != 0 && off != 2) || l4off > 0xffff)
		return -1;
	if (bpf_skb_load_bytes(skb, l4off + 8, &crc, sizeof(crc)) < 0)
		return -1;
	d = crc32c_byte(crc32c_byte(0, f[0] ^ n[0]), f[1] ^ n[1]);
	crc ^= crc32c_zeros(d, len - off - 2);
	if (bpf_skb_store_bytes(skb, l4off + off, &to, sizeof(to), 0) < 0 ||
	    bpf_skb_store_bytes(skb, l4off + 8, &crc, sizeof(crc), 0) < 0)
		return -1;
	return 0;
}

static __always_inline int set_port(struct __sk_buff *skb, struct pkt *p, int src, __be16 to)
{
	__be16 *from = src ? &p->t.sport : &p->t.dport;
	int csum = l4_csum_off(p);
	__u64 mangled = p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (*from == to)
		return 0;
	if (p->t.proto == IPPROTO_SCTP) {
		if (sctp_set_port(skb, p->l4off, p->ip_len - (p->l4off - ETH_HLEN), src ? 0 : 2,
				  (__u32)*from | (__u32)to << 16) < 0)
			return -1;
		*from = to;
		return 0;
	}
	if (bpf_l4_csum_replace(skb, csum, *from, to, mangled | sizeof(to)) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, p->l4off + (src ? 0 : 2), &to, sizeof(to), 0) < 0)
		return -1;
	*from = to;
	return 0;
}

static __always_inline __u32 mix(__u32 h, __u32 v)
{
	h ^= v;
	h *= 0x9e3779b1;
	return h ^ (h >> 15);
}

static __always_inline __u32 tuple_hash(const struct tuple *t)
{
	__u32 h = 0x811c9dc5;

	h = mix(h, t->saddr.w[0]);
	h = mix(h, t->saddr.w[1]);
	h = mix(h, t->saddr.w[2]);
	h = mix(h, t->saddr.w[3]);
	h = mix(h, t->daddr.w[0]);
	h = mix(h, t->daddr.w[1]);
	h = mix(h, t->daddr.w[2]);
	h = mix(h, t->daddr.w[3]);
	h = mix(h, ((__u32)t->sport << 16) | t->dport);
	return mix(h, t->proto);
}

struct route {
	__u32 ifindex;
	int ok;     /* ifindex is usable for bpf_redirect_neigh */
	int remote; /* the destination is not on this node */
};

/* route looks up where the node would send a packet from src to dst. A
 * destination reached through a gateway or through one of the devices this
 * program serves is on another node. */
static __noinline void route(struct __sk_buff *skb, const struct pkt *p,
				  const struct addr *src, const struct addr *dst,
				  struct route *r)
{
	struct bpf_fib_lookup fib;
	__u32 ifindex;
	int rc;

	__builtin_memset(&fib, 0, sizeof(fib));
	__builtin_memset(r, 0, sizeof(*r));
	fib.l4_protocol = p->t.proto;
	fib.tot_len = p->ip_len;
	fib.ifindex = skb->ingress_ifindex;
	if (p->family == 4) {
		fib.family = AF_INET;
		fib.ipv4_src = src->w[3];
		fib.ipv4_dst = dst->w[3];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, src->w, 16);
		__builtin_memcpy(fib.ipv6_dst, dst->w, 16);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return;
	r->ok = 1;
	r->ifindex = fib.ifindex;
	ifindex = fib.ifindex;
	if (bpf_map_lookup_elem(&devices, &ifindex))
		r->remote = 1;
	else if (p->family == 4)
		r->remote = fib.ipv4_dst != dst->w[3];
	else
		r->remote = fib.ipv6_dst[0] != dst->w[0] || fib.ipv6_dst[1] != dst->w[1] ||
			    fib.ipv6_dst[2] != dst->w[2] || fib.ipv6_dst[3] != dst->w[3];
}

static __always_inline int send(const struct route *r)
{
	if (!r->ok)
		return TC_ACT_OK;
	return bpf_redirect_neigh(r->ifindex, NULL, 0, 0);
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline int swap_macs(struct __sk_buff *skb)
{
	__u8 mac[2 * ETH_ALEN], swapped[2 * ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, mac, sizeof(mac)) < 0)
		return -1;
	__builtin_memcpy(swapped, mac + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(swapped + ETH_ALEN, mac, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0);
}

/* reject4 turns the packet into an ICMP port unreachable from the service
 * address to the client and sends it back where it came from. */
static __noinline int reject4(struct __sk_buff *skb, const struct pkt *p)
{
	struct {
		struct iphdr ip;
		struct icmphdr icmp;
		__u8 quote[sizeof(struct iphdr) + 8];
	} r;

	_Static_assert(sizeof(r) == 20 + 8 + 28, "ICMP reply layout");
	if (p->l4off != ETH_HLEN + sizeof(struct iphdr))
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0)
		return TC_ACT_SHOT;
	__builtin_memset(&r.ip, 0, sizeof(r.ip));
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.saddr = p->t.daddr.w[3];
	r.ip.daddr = p->t.saddr.w[3];
	r.ip.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
	__builtin_memset(&r.icmp, 0, sizeof(r.icmp));
	r.icmp.type = ICMP_DEST_UNREACH;
	r.icmp.code = ICMP_PORT_UNREACH;
	r.icmp.checksum = csum_fold(
		bpf_csum_diff(NULL, 0, (__be32 *)&r.icmp, sizeof(r.icmp) + sizeof(r.quote), 0));

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	if (swap_macs(skb) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

static __noinline int reject6(struct __sk_buff *skb, const struct pkt *p)
{
	struct {
		struct ipv6hdr ip;
		struct icmp6hdr icmp;
		__u8 quote[sizeof(struct ipv6hdr) + 8];
	} r;
	struct {
		struct addr src;
		struct addr dst;
		__be32 len;
		__be32 next;
	} pseudo;
	__s64 sum;

	_Static_assert(sizeof(r) == 40 + 8 + 48, "ICMPv6 reply layout");
	if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0)
		return TC_ACT_SHOT;
	__builtin_memset(&r.ip, 0, sizeof(r.ip));
	r.ip.version = 6;
	r.ip.nexthdr = IPPROTO_ICMPV6;
	r.ip.hop_limit = 64;
	r.ip.payload_len = bpf_htons(sizeof(r.icmp) + sizeof(r.quote));
	__builtin_memcpy(&r.ip.saddr, &p->t.daddr, 16);
	__builtin_memcpy(&r.ip.daddr, &p->t.saddr, 16);
	__builtin_memset(&r.icmp, 0, sizeof(r.icmp));
	r.icmp.icmp6_type = ICMPV6_DEST_UNREACH;
	r.icmp.icmp6_code = ICMPV6_PORT_UNREACH;

	pseudo.src = p->t.daddr;
	pseudo.dst = p->t.saddr;
	pseudo.len = bpf_htonl(sizeof(r.icmp) + sizeof(r.quote));
	pseudo.next = bpf_htonl(IPPROTO_ICMPV6);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.icmp, sizeof(r.icmp) + sizeof(r.quote), sum);
	r.icmp.icmp6_cksum = csum_fold(sum);

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	if (swap_macs(skb) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int reject(struct __sk_buff *skb, const struct pkt *p)
{
	/* Only the first packet of a connection gets an answer. */
	if (p->t.proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return TC_ACT_SHOT;
	if (p->family == 4)
		return reject4(skb, p);
	return reject6(skb, p);
}

/* snat_source returns the node address a flow to a remote backend leaves
 * with: the node address it was sent to, else the configured one. */
static __always_inline int snat_source(const struct pkt *p, struct addr *out)
{
	struct node_key node;
	struct cfg_val *cfg;
	__u32 zero = 0;

	node.addr = p->t.daddr;
	if (bpf_map_lookup_elem(&nodes, &node)) {
		*out = p->t.daddr;
		return 0;
	}
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return -1;
	*out = p->family == 4 ? cfg->node4 : cfg->node6;
	return addr_unset(out) ? -1 : 0;
}

/* snat_reserve finds a free node port for a flow and records the reply
 * tuple it will come back with. */
static __noinline int snat_reserve(const struct pkt *p, const struct pick *pick,
					const struct addr *node, __be16 *port)
{
	struct tuple rev;
	struct rev_val rv;
	struct cfg_val *cfg;
	__u32 zero = 0, lo = 1024, span = 65535 - 1024, h;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && cfg->snat_min && cfg->snat_max >= cfg->snat_min) {
		lo = cfg->snat_min;
		span = (__u32)cfg->snat_max - cfg->snat_min + 1;
	}
	__builtin_memset(&rev, 0, sizeof(rev));
	rev.saddr = pick->be.addr;
	rev.daddr = *node;
	rev.sport = pick->be.port;
	rev.proto = p->t.proto;
	__builtin_memset(&rv, 0, sizeof(rv));
	rv.frontend = p->t.daddr;
	rv.frontend_port = p->t.dport;
	rv.client = p->t.saddr;
	rv.client_port = p->t.sport;
	rv.flags = CT_F_SNAT;

	h = tuple_hash(&p->t);
	for (int i = 0; i < SNAT_TRIES; i++) {
		__u16 candidate = lo + (h + i * 7919) % span;

		if (i == 0 && bpf_ntohs(p->t.sport) >= lo && bpf_ntohs(p->t.sport) - lo < span)
			candidate = bpf_ntohs(p->t.sport);
		rev.dport = bpf_htons(candidate);
		if (bpf_map_update_elem(&revnat, &rev, &rv, BPF_NOEXIST) == 0) {
			*port = rev.dport;
			return 0;
		}
	}
	return -1;
}

/* forward translates a packet of a flow from outside and sends it on. */
static __always_inline int forward(struct __sk_buff *skb, struct pkt *p, const struct ct_val *ct)
{
	struct route r;

	if (set_addr(skb, p, 0, &ct->backend_addr) < 0 || set_port(skb, p, 0, ct->backend_port) < 0)
		return TC_ACT_SHOT;
	if (ct->flags & CT_F_SNAT) {
		if (set_addr(skb, p, 1, &ct->nat_addr) < 0 || set_port(skb, p, 1, ct->nat_port) < 0)
			return TC_ACT_SHOT;
	}
	route(skb, p, &p->t.saddr, &ct->backend_addr, &r);
	return send(&r);
}

/* record_reply lets the egress program translate replies of a flow to a
 * backend on this node. The reply tuple of a flow may have belonged to an
 * earlier flow from the same client port to another frontend: it is
 * rewritten when it differs. */
static __noinline void record_reply(const struct pkt *p, const struct addr *backend,
				    __be16 backend_port)
{
	struct tuple rev;
	struct rev_val rv, *cur;

	__builtin_memset(&rev, 0, sizeof(rev));
	rev.saddr = *backend;
	rev.daddr = p->t.saddr;
	rev.sport = backend_port;
	rev.dport = p->t.sport;
	rev.proto = p->t.proto;
	cur = bpf_map_lookup_elem(&revnat, &rev);
	if (cur && !(cur->flags & CT_F_SNAT) && addr_eq(&cur->frontend, &p->t.daddr) &&
	    cur->frontend_port == p->t.dport)
		return;
	__builtin_memset(&rv, 0, sizeof(rv));
	rv.frontend = p->t.daddr;
	rv.frontend_port = p->t.dport;
	rv.client = p->t.saddr;
	rv.client_port = p->t.sport;
	bpf_map_update_elem(&revnat, &rev, &rv, BPF_ANY);
}

static __noinline int new_flow(struct __sk_buff *skb, struct pkt *p)
{
	struct svc_val *svc;
	struct aff_key aff;
	struct pick pick;
	struct ct_val ct;
	struct route r;
	int act;

	svc = frontend_lookup(&p->t.daddr, p->t.dport, p->t.proto);
	if (!svc)
		return TC_ACT_OK;
	if ((svc->flags & SVC_F_SOURCE_RANGES) && !source_allowed(svc->svc_id, &p->t.saddr))
		return TC_ACT_SHOT;

	__builtin_memset(&aff, 0, sizeof(aff));
	aff.client = p->t.saddr;
	act = pick_backend(svc->group_ext, &aff, tuple_hash(&p->t), &pick);
	if (act == ACT_REJECT)
		return reject(skb, p);
	if (act != ACT_FWD)
		return TC_ACT_SHOT;

	__builtin_memset(&ct, 0, sizeof(ct));
	ct.backend_addr = pick.be.addr;
	ct.backend_port = pick.be.port;
	ct.backend = pick.id;

	route(skb, p, &p->t.saddr, &pick.be.addr, &r);
	if (r.remote && snat_source(p, &ct.nat_addr) == 0) {
		if (snat_reserve(p, &pick, &ct.nat_addr, &ct.nat_port) < 0)
			return TC_ACT_SHOT;
		ct.flags = CT_F_SNAT;
	} else {
		record_reply(p, &pick.be.addr, pick.be.port);
	}
	bpf_map_update_elem(&conntrack, &p->t, &ct, BPF_ANY);
	return forward(skb, p, &ct);
}

/* reply_snat translates a reply from a remote backend back to the client. */
static __noinline int reply_snat(struct __sk_buff *skb, struct pkt *p, const struct rev_val *rv)
{
	struct route r;

	if (set_addr(skb, p, 1, &rv->frontend) < 0 || set_port(skb, p, 1, rv->frontend_port) < 0 ||
	    set_addr(skb, p, 0, &rv->client) < 0 || set_port(skb, p, 0, rv->client_port) < 0)
		return TC_ACT_SHOT;
	route(skb, p, &p->t.saddr, &p->t.daddr, &r);
	return send(&r);
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	struct ct_val *ctp, ct;
	struct rev_val *rvp;
	struct backend *be;
	struct pkt p;

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;

	rvp = bpf_map_lookup_elem(&revnat, &p.t);
	if (rvp && (rvp->flags & CT_F_SNAT))
		return reply_snat(skb, &p, rvp);

	ctp = bpf_map_lookup_elem(&conntrack, &p.t);
	if (ctp) {
		int syn = p.t.proto == IPPROTO_TCP &&
			  (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;

		if (!syn && !(ctp->flags & CT_F_SEEN_ACK))
			ctp->flags |= CT_F_SEEN_ACK;
		ct = *ctp;
		be = bpf_map_lookup_elem(&backends, &ct.backend);
		/* A SYN after the client's ACKs opens a new connection on a
		 * reused tuple: it is balanced afresh, as is a flow whose
		 * backend is gone. A SYN before them is a retransmission and
		 * keeps its backend and source port. */
		if (be && addr_eq(&be->addr, &ct.backend_addr) && be->port == ct.backend_port &&
		    !(syn && (ct.flags & CT_F_SEEN_ACK))) {
			if (!(ct.flags & CT_F_SNAT))
				record_reply(&p, &ct.backend_addr, ct.backend_port);
			return forward(skb, &p, &ct);
		}
		bpf_map_delete_elem(&conntrack, &p.t);
	}
	return new_flow(skb, &p);
}

SEC("tc")
int tc_egress(struct __sk_buff *skb)
{
	struct rev_val *rvp, rv;
	struct pkt p;

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;
	rvp = bpf_map_lookup_elem(&revnat, &p.t);
	if (!rvp || (rvp->flags & CT_F_SNAT))
		return TC_ACT_OK;
	rv = *rvp;
	if (set_addr(skb, &p, 1, &rv.frontend) < 0 || set_port(skb, &p, 1, rv.frontend_port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* Packet level (tc): packets from outside the node to a service address
 * go to a backend (DNAT, and SNAT to a node address when the backend is
 * elsewhere), with a connection table that the rest of the flow follows;
 * replies are translated back. SCTP from the node's pods, which no socket
 * hook sees, takes the same path from the pods' devices, with the backends
 * for traffic from the node and no SNAT (but for a pod reaching itself);
 * SCTP the node itself sends, from the external device it leaves by. */
#ifndef SPOKE_TC_H
#define SPOKE_TC_H

#include "common.h"
#include "crc32c.h"

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

/* linux/icmp.h pulls in libc headers; the header is simple enough. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

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
	/* The node's own packets, which came in by no device, are looked up
	 * as if they came in by the one they are leaving by. */
	fib.ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
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

/* send_back replaces the packet's L3 and L4 with the len bytes at l3 and
 * sends it back out of the device it came in by. */
static __always_inline int send_back(struct __sk_buff *skb, const void *l3, __u32 len)
{
	if (bpf_skb_change_tail(skb, ETH_HLEN + len, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, l3, len, 0) < 0)
		return TC_ACT_SHOT;
	if (swap_macs(skb) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
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

	return send_back(skb, &r, sizeof(r));
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

	return send_back(skb, &r, sizeof(r));
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

/* record_reply lets the egress programs translate replies of a flow to a
 * backend on this node or, for a flow from a pod (flags CT_F_POD), to any
 * backend. The reply tuple of a flow may have belonged to an earlier flow
 * from the same client port to another frontend: it is rewritten when it
 * differs. */
static __noinline void record_reply(const struct pkt *p, const struct addr *backend,
				    __be16 backend_port, __u32 flags)
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
	if (cur && cur->flags == flags && addr_eq(&cur->frontend, &p->t.daddr) &&
	    cur->frontend_port == p->t.dport)
		return;
	__builtin_memset(&rv, 0, sizeof(rv));
	rv.frontend = p->t.daddr;
	rv.frontend_port = p->t.dport;
	rv.client = p->t.saddr;
	rv.client_port = p->t.sport;
	rv.flags = flags;
	bpf_map_update_elem(&revnat, &rev, &rv, BPF_ANY);
}

/* Where a flow balanced per packet comes from. */
#define FROM_OUTSIDE 0
#define FROM_POD 1  /* SCTP from a pod device */
#define FROM_HOST 2 /* SCTP the node itself sends, leaving by an external device */

/* rev_flags are the reverse entry flags of a flow's replies, by origin. */
static __always_inline __u32 rev_flags(int origin)
{
	return origin == FROM_POD ? CT_F_POD : origin == FROM_HOST ? CT_F_HOST : 0;
}

/* new_flow picks a backend for the first packet of a flow: from outside
 * among the service's backends for traffic from outside, with SNAT when the
 * backend is on another node; from a pod or the node itself among those for
 * traffic from the node, keeping the source, as the socket programs do,
 * unless a pod got itself. */
static __noinline int new_flow(struct __sk_buff *skb, struct pkt *p, int origin)
{
	struct svc_val *svc;
	struct aff_key aff;
	struct pick pick;
	struct ct_val ct;
	struct route r;
	int act, hairpin;

	svc = frontend_lookup(&p->t.daddr, p->t.dport, p->t.proto);
	if (!svc)
		return TC_ACT_OK;
	if ((svc->flags & SVC_F_SOURCE_RANGES) && !source_allowed(svc->svc_id, &p->t.saddr))
		return TC_ACT_SHOT;

	__builtin_memset(&aff, 0, sizeof(aff));
	aff.client = p->t.saddr;
	act = pick_backend(origin == FROM_OUTSIDE ? svc->group_ext : svc->group_local, &aff,
			   tuple_hash(&p->t), &pick);
	/* A rejection goes back out of the device the packet came in by:
	 * the node's own packet, on its way out, is dropped instead. */
	if (act == ACT_REJECT && origin != FROM_HOST)
		return reject(skb, p);
	if (act != ACT_FWD)
		return TC_ACT_SHOT;

	__builtin_memset(&ct, 0, sizeof(ct));
	ct.backend_addr = pick.be.addr;
	ct.backend_port = pick.be.port;
	ct.backend = pick.id;

	route(skb, p, &p->t.saddr, &pick.be.addr, &r);
	/* A pod sent to its own service and got itself (hairpin): its reply
	 * to itself would never leave it, so the flow leaves from a node
	 * address, as kube-proxy masquerades it. */
	hairpin = origin == FROM_POD && addr_eq(&pick.be.addr, &p->t.saddr);
	if (((origin == FROM_OUTSIDE && r.remote) || hairpin) && snat_source(p, &ct.nat_addr) == 0) {
		if (snat_reserve(p, &pick, &ct.nat_addr, &ct.nat_port) < 0)
			return TC_ACT_SHOT;
		ct.flags = CT_F_SNAT;
	} else {
		record_reply(p, &pick.be.addr, pick.be.port, rev_flags(origin));
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

/* balance sends a packet to a service address on to its flow's backend,
 * or to a new one. */
static __always_inline int balance(struct __sk_buff *skb, struct pkt *p, int origin)
{
	struct ct_val *ctp, ct;
	struct backend *be;

	ctp = bpf_map_lookup_elem(&conntrack, &p->t);
	if (ctp) {
		int syn = p->t.proto == IPPROTO_TCP &&
			  (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;

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
				record_reply(p, &ct.backend_addr, ct.backend_port, rev_flags(origin));
			return forward(skb, p, &ct);
		}
		bpf_map_delete_elem(&conntrack, &p->t);
	}
	return new_flow(skb, p, origin);
}

/* rev_source turns the source of a reply back into the service address
 * its flow was sent to, and lets it go on. */
static __always_inline int rev_source(struct __sk_buff *skb, struct pkt *p, const struct rev_val *rvp)
{
	struct rev_val rv = *rvp;

	if (set_addr(skb, p, 1, &rv.frontend) < 0 || set_port(skb, p, 1, rv.frontend_port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* reply_rev turns the source of a reply back into the service address,
 * for replies whose entry has exactly these flags. */
static __always_inline int reply_rev(struct __sk_buff *skb, struct pkt *p, __u32 flags)
{
	struct rev_val *rvp;

	rvp = bpf_map_lookup_elem(&revnat, &p->t);
	if (!rvp || rvp->flags != flags)
		return TC_ACT_OK;
	return rev_source(skb, p, rvp);
}

/* l4_proto reads one byte, the packet's L4 protocol (0 when not IP): the
 * pod devices' programs, which see every packet of every pod, leave all
 * but SCTP at that cost. */
static __always_inline __u8 l4_proto(struct __sk_buff *skb)
{
	__u32 off;
	__u8 proto;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		off = ETH_HLEN + offsetof(struct iphdr, protocol);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		off = ETH_HLEN + offsetof(struct ipv6hdr, nexthdr);
	else
		return 0;
	if (bpf_skb_load_bytes(skb, off, &proto, 1) < 0)
		return 0;
	return proto;
}

/* ingress takes a packet coming in: a reply to a flow whose source was
 * translated (SNAT: from outside to another node, or a pod reaching itself)
 * goes back to its client, a reply to the node's own flow gets the service
 * address as its source, anything else is balanced. */
static __always_inline int ingress(struct __sk_buff *skb, struct pkt *p, int origin)
{
	struct rev_val *rvp;

	rvp = bpf_map_lookup_elem(&revnat, &p->t);
	if (rvp && (rvp->flags & CT_F_SNAT))
		return reply_snat(skb, p, rvp);
	if (rvp && rvp->flags == CT_F_HOST)
		return rev_source(skb, p, rvp);
	return balance(skb, p, origin);
}

/* tc_ingress runs on the devices traffic from outside arrives on. */
SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	struct pkt p;

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;
	return ingress(skb, &p, FROM_OUTSIDE);
}

/* tc_pod_ingress runs on the devices the node's pods send from. TCP and UDP
 * to a service were translated at the socket; SCTP, which the kernel runs
 * no socket hook for, is balanced here. */
SEC("tc")
int tc_pod_ingress(struct __sk_buff *skb)
{
	struct pkt p;

	if (l4_proto(skb) != IPPROTO_SCTP || parse(skb, &p) < 0)
		return TC_ACT_OK;
	return ingress(skb, &p, FROM_POD);
}

/* tc_egress runs on the external devices: replies from a backend on this
 * node to a client outside leave with the service's address. */
SEC("tc")
int tc_egress(struct __sk_buff *skb)
{
	struct pkt p;

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;
	/* SCTP the node itself sends (it came in by no device) meets no
	 * socket hook either: it is balanced here, on its way out. */
	if (p.t.proto == IPPROTO_SCTP && !skb->ingress_ifindex)
		return balance(skb, &p, FROM_HOST);
	return reply_rev(skb, &p, 0);
}

/* tc_pod_egress runs on the pod devices: replies to a pod's SCTP flow, from
 * any backend, reach the pod with the service's address. Only SCTP flows
 * are recorded for pods. */
SEC("tc")
int tc_pod_egress(struct __sk_buff *skb)
{
	struct pkt p;

	if (l4_proto(skb) != IPPROTO_SCTP || parse(skb, &p) < 0)
		return TC_ACT_OK;
	return reply_rev(skb, &p, CT_F_POD);
}

#endif /* SPOKE_TC_H */

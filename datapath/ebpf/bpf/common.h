// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/* What both paths share: the maps, address helpers, the frontend lookup,
 * the source-range check and the backend pick (affinity, weights). */
#ifndef SPOKE_COMMON_H
#define SPOKE_COMMON_H

#include "lb.h"

#define AF_INET 2
#define AF_INET6 10
#define ECONNREFUSED 111
#define EHOSTUNREACH 113
#define NSEC_PER_SEC 1000000000ULL
#define SNAT_TRIES 16
#define __noinline __attribute__((noinline))
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

#endif /* SPOKE_COMMON_H */
